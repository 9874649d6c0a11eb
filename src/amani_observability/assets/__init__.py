"""The Prometheus alert rules and the Grafana dashboard, shipped inside the package.

The files beside this module are the only copies: `amani-observability export-assets`,
the compose example and the tests all read them through `importlib.resources`, so what
promtool proves is what users deploy.

    from amani_observability.assets import alert_rules, grafana_dashboard

Three values in the rules depend on the deployment and can be rewritten on the way out:
the Prometheus job of the service (ApplicationDown), its memory limit (HighMemoryUsage,
which compares the process collector's resident memory to it) and where the runbooks
live (`runbook_url`, always absolute: `runbook_url()` builds every one of them).

`export_assets(..., format="kubernetes")` writes the same rules and dashboard as
Prometheus Operator and Grafana sidecar resources (see `kubernetes_manifests()`).
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .._runbooks import DOCS_RUNBOOKS_URL, check_job, runbook_url

if TYPE_CHECKING:
    from ..slo import SLOFile

__all__ = [
    "ALERT_RULES_FILE",
    "DEFAULT_JOB",
    "DEFAULT_MEMORY_LIMIT_BYTES",
    "DOCS_RUNBOOKS_URL",
    "GRAFANA_DASHBOARD_FILE",
    "KUBERNETES_FILES",
    "KubernetesOptions",
    "alert_names",
    "alert_rules",
    "check_job",
    "export_assets",
    "grafana_dashboard",
    "kubernetes_manifests",
    "runbook_url",
]

ALERT_RULES_FILE = "alert_rules.yml"
GRAFANA_DASHBOARD_FILE = "grafana_dashboard.json"
# The guide keeps both files in config/ beside the service.
EXPORT_SUBDIRECTORY = "config"

DEFAULT_JOB = "amani-backend"
DEFAULT_MEMORY_LIMIT_BYTES = 536_870_912  # 512 MiB

# The Kubernetes export's files, in DIR/kubernetes/.
KUBERNETES_SUBDIRECTORY = "kubernetes"
KUBERNETES_FILES = (
    "prometheusrule.yaml",
    "servicemonitor.yaml",
    "grafana-dashboard-configmap.yaml",
)

_JOB_SELECTOR = f'job="{DEFAULT_JOB}"'
# How the packaged file names a runbook section; alert_rules() makes each one absolute.
_RUNBOOK_REFERENCE = re.compile(
    r"(?P<key>runbook_url: )docs/runbooks/(?P<page>[A-Za-z0-9_.-]+\.md)#(?P<anchor>[\w-]+)$",
    flags=re.MULTILINE,
)
_URL = re.compile(r"https?://[^/\s]+(/\S*)?")
# Kubernetes object names (DNS-1123 subdomain) and label keys and values.
_K8S_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")
_K8S_LABEL_KEY = re.compile(r"([a-z0-9.-]{1,253}/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")
_K8S_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?")
_MEMORY_LIMIT = str(DEFAULT_MEMORY_LIMIT_BYTES)
# A Prometheus job name we can put inside a double-quoted PromQL string without escaping.


def _read(name: str) -> str:
    return files(__name__).joinpath(name).read_text(encoding="utf-8")


def alert_rules(
    *,
    job: str = DEFAULT_JOB,
    memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES,
    runbook_base_url: str | None = None,
) -> str:
    """The alert rules file, for the service's Prometheus `job`, memory limit in bytes and
    runbook location (`runbook_url()`'s `base_url`)."""
    check_job(job)
    if isinstance(memory_limit_bytes, bool) or not isinstance(memory_limit_bytes, int):
        raise TypeError("memory_limit_bytes must be an int")
    if memory_limit_bytes <= 0:
        raise ValueError(f"memory_limit_bytes must be positive, not {memory_limit_bytes}")
    runbook_url("", base_url=runbook_base_url)  # a bad base URL fails before any work
    text = _read(ALERT_RULES_FILE)
    text = text.replace(_JOB_SELECTOR, f'job="{job}"').replace(
        _MEMORY_LIMIT, str(memory_limit_bytes)
    )
    return _RUNBOOK_REFERENCE.sub(
        lambda found: (
            found["key"] + runbook_url(found["page"], found["anchor"], base_url=runbook_base_url)
        ),
        text,
    )


def alert_names() -> list[str]:
    """The names of the packaged alerts, in file order."""
    return re.findall(r"^\s*- alert: (\w+)$", _read(ALERT_RULES_FILE), flags=re.MULTILINE)


def grafana_dashboard(slos: SLOFile | None = None, *, job: str | None = None) -> str:
    """The Grafana dashboard JSON (schemaVersion 39, Prometheus data source as a variable).

    With `slos`, a row per objective follows the packaged panels (see slo_dashboard_panels);
    `job` is then the service's Prometheus job, by default the SLO file's `service`.
    """
    text = _read(GRAFANA_DASHBOARD_FILE)
    if slos is None:
        return text
    from ..slo import slo_dashboard_panels

    board = json.loads(text)
    panels = board["panels"]
    panels += slo_dashboard_panels(
        slos,
        job=job,
        first_id=max(panel["id"] for panel in panels) + 1,
        top=max(panel["gridPos"]["y"] + panel["gridPos"]["h"] for panel in panels),
    )
    return json.dumps(board, indent=2) + "\n"


@dataclass(frozen=True)
class KubernetesOptions:
    """Where the Kubernetes resources go and what the ServiceMonitor scrapes.

    `selector_labels` go on the PrometheusRule and ServiceMonitor, for the Prometheus
    resource's `ruleSelector` / `serviceMonitorSelector` (e.g. `release: prometheus`);
    `service_labels` select the service's Services (default
    `app.kubernetes.io/name: <job>`); `port` names the Service port serving
    `metrics_path`; basic auth (Secret keys `username`, `password`) or a bearer token
    (Secret key `token`) protect the scrape.
    """

    namespace: str | None = None
    selector_labels: Mapping[str, str] = field(default_factory=dict)
    service_labels: Mapping[str, str] | None = None
    port: str = "http"
    metrics_path: str = "/metrics"
    basic_auth_secret: str | None = None
    bearer_token_secret: str | None = None


def kubernetes_manifests(
    rule_files: Sequence[str],
    *,
    job: str = DEFAULT_JOB,
    options: KubernetesOptions | None = None,
    dashboard: str | None = None,
) -> dict[str, str]:
    """Prometheus Operator and Grafana sidecar resources, as {file name: YAML text}.

    - `prometheusrule.yaml`: one `PrometheusRule` whose `spec.groups` are the groups of
      every rules file in `rule_files` (the text `alert_rules()` returns, and any other
      rules file with a top-level `groups:`), in order.
    - `servicemonitor.yaml`: a `ServiceMonitor` scraping the service's pods as `options`
      say, with the `job` label set to `job` so the rules' job selectors match.
    - `grafana-dashboard-configmap.yaml`: a ConfigMap holding the dashboard JSON
      (`dashboard`, by default `grafana_dashboard()`), labelled `grafana_dashboard: "1"` for
      Grafana's dashboard sidecar.
    """
    options = options or KubernetesOptions()
    namespace, port, metrics_path = options.namespace, options.port, options.metrics_path
    basic_auth_secret, bearer_token_secret = options.basic_auth_secret, options.bearer_token_secret
    name = _kubernetes_name(job)
    if basic_auth_secret is not None and bearer_token_secret is not None:
        raise ValueError("choose basic auth or a bearer token for the ServiceMonitor, not both")
    for secret in (basic_auth_secret, bearer_token_secret, namespace):
        if secret is not None and not _K8S_NAME.fullmatch(secret):
            raise ValueError(f"{secret!r} is not a Kubernetes name (lower-case DNS-1123)")
    if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?", port):
        raise ValueError(f"port {port!r} is not a Kubernetes port name")
    if not metrics_path.startswith("/"):
        raise ValueError(f"metrics path {metrics_path!r} must start with /")
    selector = _labels(options.selector_labels)
    services = _labels(options.service_labels or {"app.kubernetes.io/name": name})

    def metadata(extra: Mapping[str, str]) -> str:
        lines = [f"metadata:\n  name: {_q(name)}\n"]
        if namespace is not None:
            lines.append(f"  namespace: {_q(namespace)}\n")
        if extra:
            lines.append("  labels:\n" + _mapping(extra, 4))
        return "".join(lines)

    groups = "".join(_rule_groups(text) for text in rule_files)
    rule = (
        "apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\n"
        + metadata(selector)
        + "spec:\n  groups:\n"
        + textwrap.indent(groups, "    ")
    )
    endpoint = [
        f"    - port: {_q(port)}\n",
        f"      path: {_q(metrics_path)}\n",
        "      relabelings:\n",
        "        # The rules select job=<job>; the Operator would name it after the Service.\n",
        "        - targetLabel: job\n",
        f"          replacement: {_q(job)}\n",
    ]
    if basic_auth_secret is not None:
        endpoint.append(
            "      basicAuth:\n"
            f"        username: {{name: {_q(basic_auth_secret)}, key: username}}\n"
            f"        password: {{name: {_q(basic_auth_secret)}, key: password}}\n"
        )
    if bearer_token_secret is not None:
        endpoint.append(
            "      authorization:\n        type: Bearer\n"
            f"        credentials: {{name: {_q(bearer_token_secret)}, key: token}}\n"
        )
    monitor = (
        "apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\n"
        + metadata(selector)
        + "spec:\n  selector:\n    matchLabels:\n"
        + _mapping(services, 6)
        + "  endpoints:\n"
        + "".join(endpoint)
    )
    config_map = (
        "apiVersion: v1\nkind: ConfigMap\n"
        + metadata({"grafana_dashboard": "1"})
        + "data:\n  amani-observability.json: |\n"
        + textwrap.indent(dashboard or grafana_dashboard(), "    ")
    )
    return dict(zip(KUBERNETES_FILES, (rule, monitor, config_map), strict=True))


def _kubernetes_name(job: str) -> str:
    name = re.sub(r"[^a-z0-9.-]+", "-", job.lower()).strip("-.")[:253]
    if not _K8S_NAME.fullmatch(name):
        raise ValueError(f"job {job!r} gives no Kubernetes name; use letters and digits")
    return name


def _labels(labels: Mapping[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        if not _K8S_LABEL_KEY.fullmatch(key) or not _K8S_LABEL_VALUE.fullmatch(value):
            raise ValueError(f"{key}={value} is not a valid Kubernetes label")
    return dict(labels)


def _q(text: str) -> str:
    # A JSON string is a YAML double-quoted scalar: no value can change the document's shape.
    return json.dumps(text, ensure_ascii=False)


def _mapping(values: Mapping[str, str], indent: int) -> str:
    return "".join(f"{' ' * indent}{_q(key)}: {_q(value)}\n" for key, value in values.items())


def _rule_groups(rules_file: str) -> str:
    """The items of a rules file's top-level `groups:` list, dedented to column 0."""
    _, found, items = ("\n" + rules_file).partition("\ngroups:\n")
    if not found:
        raise ValueError("a rules file must have a top-level `groups:` list")
    return textwrap.dedent(items).rstrip("\n") + "\n"


def export_assets(
    directory: str | Path,
    *,
    force: bool = False,
    job: str | None = None,
    memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES,
    runbook_base_url: str | None = None,
    format: Literal["prometheus", "kubernetes"] = "prometheus",
    kubernetes: KubernetesOptions | None = None,
    slos: SLOFile | None = None,
) -> list[Path]:
    """Write the assets into `directory` and return the paths written.

    `format="prometheus"`: alert_rules.yml and grafana_dashboard.json in `directory`/config/,
    with `slos` slo_rules.yml too. `format="kubernetes"`: the three files of
    `kubernetes_manifests()` in `directory`/kubernetes/, made with the `kubernetes` options,
    the SLO groups in the PrometheusRule. With `slos`, the dashboard gains the SLO rows.
    `job` is the service's Prometheus job: by default the SLO file's `service`, else
    DEFAULT_JOB. Refuses (FileExistsError, nothing written) when any file exists, unless
    `force`.
    """
    if job is None:
        job = slos.service if slos is not None else DEFAULT_JOB
    rules = alert_rules(
        job=job, memory_limit_bytes=memory_limit_bytes, runbook_base_url=runbook_base_url
    )
    rule_files = {ALERT_RULES_FILE: rules}
    if slos is not None:
        from ..slo import SLO_RULES_FILE, slo_rules

        rule_files[SLO_RULES_FILE] = slo_rules(slos, job=job, runbook_base_url=runbook_base_url)
    dashboard = grafana_dashboard(slos, job=job)
    if format == "prometheus":
        subdirectory = EXPORT_SUBDIRECTORY
        contents = {ALERT_RULES_FILE: rules, GRAFANA_DASHBOARD_FILE: dashboard, **rule_files}
    elif format == "kubernetes":
        subdirectory = KUBERNETES_SUBDIRECTORY
        contents = kubernetes_manifests(
            list(rule_files.values()), job=job, options=kubernetes, dashboard=dashboard
        )
    else:
        raise ValueError(f"unknown asset format {format!r}; choose prometheus or kubernetes")
    target = Path(directory) / subdirectory
    paths = [target / name for name in contents]
    existing = [str(path) for path in paths if path.exists()]
    if existing and not force:
        # Check all before writing any, so a refusal leaves no half-updated set.
        raise FileExistsError(
            f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
            "pass --force (force=True) to overwrite"
        )
    target.mkdir(parents=True, exist_ok=True)
    for path, text in zip(paths, contents.values(), strict=True):
        path.write_text(text, encoding="utf-8")
    return paths
