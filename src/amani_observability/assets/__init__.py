"""The Prometheus alert rules and the Grafana dashboard, shipped inside the package.

The files beside this module are the only copies: `amani-observability export-assets`,
the compose example and the tests all read them through `importlib.resources`, so what
promtool proves is what users deploy.

    from amani_observability.assets import alert_rules, grafana_dashboard

Two values in the rules depend on the deployment and can be rewritten on the way out:
the Prometheus job of the service (ApplicationDown) and its memory limit
(HighMemoryUsage, which compares the process collector's resident memory to it).
"""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

__all__ = [
    "ALERT_RULES_FILE",
    "DEFAULT_JOB",
    "DEFAULT_MEMORY_LIMIT_BYTES",
    "GRAFANA_DASHBOARD_FILE",
    "alert_names",
    "alert_rules",
    "export_assets",
    "grafana_dashboard",
]

ALERT_RULES_FILE = "alert_rules.yml"
GRAFANA_DASHBOARD_FILE = "grafana_dashboard.json"
# The guide keeps both files in config/ beside the service.
EXPORT_SUBDIRECTORY = "config"

DEFAULT_JOB = "amani-backend"
DEFAULT_MEMORY_LIMIT_BYTES = 536_870_912  # 512 MiB

_JOB_SELECTOR = f'job="{DEFAULT_JOB}"'
_MEMORY_LIMIT = str(DEFAULT_MEMORY_LIMIT_BYTES)
# A Prometheus job name we can put inside a double-quoted PromQL string without escaping.
_JOB_NAME = re.compile(r"[A-Za-z0-9_.:/-]{1,128}")


def _read(name: str) -> str:
    return files(__name__).joinpath(name).read_text(encoding="utf-8")


def alert_rules(
    *, job: str = DEFAULT_JOB, memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES
) -> str:
    """The alert rules file, for the service's Prometheus `job` and memory limit in bytes."""
    if not _JOB_NAME.fullmatch(job):
        raise ValueError(f"job {job!r} must be 1-128 characters of letters, digits and _ . : / -")
    if isinstance(memory_limit_bytes, bool) or not isinstance(memory_limit_bytes, int):
        raise TypeError("memory_limit_bytes must be an int")
    if memory_limit_bytes <= 0:
        raise ValueError(f"memory_limit_bytes must be positive, not {memory_limit_bytes}")
    text = _read(ALERT_RULES_FILE)
    return text.replace(_JOB_SELECTOR, f'job="{job}"').replace(
        _MEMORY_LIMIT, str(memory_limit_bytes)
    )


def alert_names() -> list[str]:
    """The names of the packaged alerts, in file order."""
    return re.findall(r"^\s*- alert: (\w+)$", _read(ALERT_RULES_FILE), flags=re.MULTILINE)


def grafana_dashboard() -> str:
    """The Grafana dashboard JSON (schemaVersion 39, Prometheus data source as a variable)."""
    return _read(GRAFANA_DASHBOARD_FILE)


def export_assets(
    directory: str | Path,
    *,
    force: bool = False,
    job: str = DEFAULT_JOB,
    memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES,
) -> list[Path]:
    """Write alert_rules.yml and grafana_dashboard.json into `directory`/config/.

    Refuses (FileExistsError, nothing written) when either file exists, unless `force`.
    Returns the paths written.
    """
    contents = {
        ALERT_RULES_FILE: alert_rules(job=job, memory_limit_bytes=memory_limit_bytes),
        GRAFANA_DASHBOARD_FILE: grafana_dashboard(),
    }
    target = Path(directory) / EXPORT_SUBDIRECTORY
    paths = [target / name for name in contents]
    existing = [str(path) for path in paths if path.exists()]
    if existing and not force:
        # Check both before writing either, so a refusal leaves no half-updated pair.
        raise FileExistsError(
            f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
            "pass --force (force=True) to overwrite"
        )
    target.mkdir(parents=True, exist_ok=True)
    for path, text in zip(paths, contents.values(), strict=True):
        path.write_text(text, encoding="utf-8")
    return paths
