"""Where alerts point operators, and the job names rules may quote: shared by the assets
and the SLO rules."""

from __future__ import annotations

import re

from ._version import __version__

# The runbooks of the installed version, as published with the project's sources: an
# exported rule must link somewhere that exists after it leaves this repository.
DOCS_RUNBOOKS_URL = (
    f"https://github.com/amani-observability/amani-observability/blob/v{__version__}/docs/runbooks"
)
_URL = re.compile(r"https?://[^/\s]+(/\S*)?")
_JOB_NAME = re.compile(r"[A-Za-z0-9_.:/-]{1,128}")


def runbook_url(page: str, anchor: str = "", *, base_url: str | None = None) -> str:
    """The absolute URL of a runbook section: `base_url/page#anchor`.

    Without `base_url`, the runbooks of the installed version in the project's published
    docs (`DOCS_RUNBOOKS_URL`). Every `runbook_url` the library writes comes from here.
    """
    base = DOCS_RUNBOOKS_URL if base_url is None else base_url.strip()
    if not _URL.fullmatch(base):
        raise ValueError(f"runbook base URL {base!r} must be an http:// or https:// URL")
    return f"{base.rstrip('/')}/{page}" + (f"#{anchor}" if anchor else "")


def check_job(job: str) -> str:
    """Return `job` if it is a Prometheus job name the rules can quote; else ValueError."""
    if not _JOB_NAME.fullmatch(job):
        raise ValueError(f"job {job!r} must be 1-128 characters of letters, digits and _ . : / -")
    return job
