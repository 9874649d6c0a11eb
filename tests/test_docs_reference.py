"""The reference parts of the docs stay true to the code.

- docs/configuration.md has a row for every ObservabilitySettings field, under its
  environment name, in the order of settings.py, with the field's real default;
- every alert has its section in the monitoring runbook, and every `runbooks/...md#anchor`
  reference anywhere in the package, the examples or the docs lands on a heading;
- relative links between README.md and the docs pages point at files and headings that exist;
- every ```promql example parses, checked by the real promtool.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from pydantic.fields import FieldInfo

from amani_observability import ObservabilitySettings
from tests.conftest import require_binary
from tests.test_assets import ALERTS as PACKAGED_ALERTS
from tests.test_docs_examples import ROOT, documentation_pages, fenced_blocks, page_id

CONFIGURATION = ROOT / "docs" / "configuration.md"
RUNBOOKS = ROOT / "docs" / "runbooks"
ALERTS = PACKAGED_ALERTS  # the guide's eight and ours, pinned by tests/test_assets.py

_ROW = re.compile(r"^\|\s*`(?P<name>[A-Z][A-Z0-9_]*)`\s*\|(?P<default>[^|]*)\|")
_LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")


def configuration_rows() -> dict[str, str]:
    """Documented variable -> its default cell, in the order of the page."""
    rows: dict[str, str] = {}
    for line in CONFIGURATION.read_text("utf-8").splitlines():
        match = _ROW.match(line)
        if match:
            rows[match["name"]] = match["default"].strip()
    return rows


def test_every_setting_is_documented_in_the_configuration_reference() -> None:
    """A new setting without a row in docs/configuration.md fails here."""
    documented = configuration_rows()
    missing = [f.upper() for f in ObservabilitySettings.model_fields if f.upper() not in documented]
    assert missing == [], f"add rows to docs/configuration.md for {missing}"


def test_configuration_rows_follow_the_order_of_settings_py() -> None:
    """The table reads section by section, like the class it documents."""
    fields = [f.upper() for f in ObservabilitySettings.model_fields]
    in_page = [name for name in configuration_rows() if name in fields]
    assert in_page == fields


def _documented_default(field: FieldInfo) -> str | None:
    """How a scalar default is written in the table; None where prose describes it."""
    default = field.default
    if (
        default is None
        or isinstance(default, (list, tuple, set, frozenset))
        or field.default_factory
    ):
        return None
    if isinstance(default, bool):
        return "true" if default else "false"
    return str(default)


@pytest.mark.parametrize(
    "name",
    [n for n, f in ObservabilitySettings.model_fields.items() if _documented_default(f)],
)
def test_documented_default_is_the_real_one(name: str) -> None:
    expected = _documented_default(ObservabilitySettings.model_fields[name])
    cell = configuration_rows().get(name.upper(), "")
    shown = re.findall(r"`([^`]*)`", cell)
    assert shown, f"{name.upper()}: write the default in backticks, e.g. `{expected}`"
    if isinstance(ObservabilitySettings.model_fields[name].default, float):
        assert float(shown[0]) == float(expected or "nan"), cell
    else:
        assert shown[0] == expected, cell


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors for a Markdown page (fenced blocks ignored)."""
    text = page.read_text("utf-8")
    for block in fenced_blocks(text):
        text = text.replace(block.source, "")
    found: set[str] = set()
    for line in text.splitlines():
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading is None:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).replace("`", "").lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in found:
            n += 1
            candidate = f"{slug}-{n}"
        found.add(candidate)
    return found


def test_the_monitoring_runbook_has_a_section_per_alert() -> None:
    """Alert rules link `monitoring_runbook.md#<alert name in lower case>`."""
    present = anchors(RUNBOOKS / "monitoring_runbook.md")
    assert [a for a in ALERTS if a.lower() not in present] == []


@pytest.mark.parametrize("alert", ALERTS)
def test_each_alert_section_says_what_to_check_and_what_to_do(alert: str) -> None:
    text = (RUNBOOKS / "monitoring_runbook.md").read_text("utf-8")
    section = text.split(f"\n## {alert}\n", 1)[1].split("\n## ", 1)[0]
    assert "**Meaning**" in section
    assert "**Check**" in section
    assert "```promql" in section
    assert "**Act**" in section


def _text_files(*roots: Path) -> list[Path]:
    suffixes = {".py", ".md", ".yml", ".yaml", ".json", ".sh", ".toml"}
    files: list[Path] = []
    for root in roots:
        candidates = [root] if root.is_file() else sorted(root.glob("**/*"))
        files += [p for p in candidates if p.is_file() and p.suffix in suffixes]
    return files


def test_every_runbook_reference_lands_on_a_heading() -> None:
    """`runbook_url`s and links into docs/runbooks/ name a page and a heading that exist."""
    pattern = re.compile(r"runbooks/(?P<page>[A-Za-z0-9_.-]+\.md)(?:#(?P<anchor>[\w-]+))?")
    broken = []
    for path in _text_files(ROOT / "src", ROOT / "examples", ROOT / "docs", ROOT / "README.md"):
        for match in pattern.finditer(path.read_text("utf-8", errors="replace")):
            target = RUNBOOKS / match["page"]
            if not target.is_file() or (match["anchor"] and match["anchor"] not in anchors(target)):
                broken.append(f"{path.relative_to(ROOT)}: {match.group(0)}")
    assert broken == []


@pytest.mark.parametrize("page", documentation_pages(), ids=page_id)
def test_relative_links_resolve(page: Path) -> None:
    """Links to other pages and headings of the docs point at something that exists."""
    text = page.read_text("utf-8")
    for block in fenced_blocks(text):
        text = text.replace(block.source, "")
    broken = []
    for match in _LINK.finditer(text):
        target = match["target"]
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (page.parent / file_part).resolve() if file_part else page
        if not resolved.exists() or (
            anchor and resolved.suffix == ".md" and anchor not in anchors(resolved)
        ):
            broken.append(target)
    assert broken == [], f"{page_id(page)}: broken links"


def promql_expressions(source: str) -> list[str]:
    """The expressions of a ```promql block: `#` lines are comments, indented lines continue."""
    expressions: list[str] = []
    for line in source.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace() and expressions:
            expressions[-1] += " " + line.strip()
        else:
            expressions.append(line.strip())
    return expressions


PROMQL_PAGES = [
    page
    for page in documentation_pages()
    if any(b.language == "promql" for b in fenced_blocks(page.read_text("utf-8")))
]


def test_promql_blocks_split_into_expressions() -> None:
    block = "# rate\nsum(rate(a[5m]))\n\nsum(b)\n  / sum(c)\n"

    assert promql_expressions(block) == ["sum(rate(a[5m]))", "sum(b) / sum(c)"]


@pytest.mark.integration
@pytest.mark.parametrize("page", PROMQL_PAGES, ids=page_id)
def test_promql_examples_parse(page: Path, tmp_path: Path) -> None:
    """Each PromQL example is valid: promtool checks it as the expression of a rule."""
    promtool = require_binary("promtool")
    expressions = [
        expression
        for block in fenced_blocks(page.read_text("utf-8"))
        if block.language == "promql"
        for expression in promql_expressions(block.source)
    ]
    rules = {
        "groups": [
            {
                "name": "docs",
                "rules": [
                    {"record": f"docs:example_{n}", "expr": expression}
                    for n, expression in enumerate(expressions)
                ],
            }
        ]
    }
    # JSON is YAML: no YAML library needed to write the rules file.
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(json.dumps(rules, indent=1), encoding="utf-8")

    result = subprocess.run(
        [promtool, "check", "rules", str(rules_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, f"{page_id(page)}:\n{result.stdout}{result.stderr}"
    assert f"SUCCESS: {len(expressions)} rules found" in result.stdout
