"""Print the installed version of every package the floors file pins; fail on any difference.

Usage: python .ci/check_floors.py .ci/constraints-floors.txt
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version


def main(constraints: str) -> int:
    wrong = 0
    print(f"Support-matrix floors ({constraints}):")
    with open(constraints, encoding="utf-8") as pins:
        for line in pins:
            spec = line.split("#", 1)[0].strip()
            if not spec:
                continue
            name, _, pinned = spec.partition("==")
            try:
                installed = version(name)
            except PackageNotFoundError:
                installed = "not installed"
            ok = installed == pinned
            wrong += not ok
            print(f"  {name:45} {installed:14} {'ok' if ok else f'EXPECTED {pinned}'}")
    if wrong:
        print(f"{wrong} package(s) differ from their floor pin", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
