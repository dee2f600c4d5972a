"""Prints pip constraints pinning each base dependency of the installed mlx-moshi to its floor.

`name>=X` becomes `name==X`, for the dependencies that apply to this platform; a dependency
without a `>=` floor is an error, so every floor in pyproject.toml is one that CI installs.
Usage (in a venv where mlx-moshi is installed): python .ci/floors.py > floors.txt
"""

from __future__ import annotations

import sys
from importlib.metadata import requires

from packaging.requirements import Requirement


def floors(dist: str = "mlx-moshi") -> list[str]:
    pins = []
    for line in requires(dist) or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # another platform's dependency, or an extra's
        lows = [s.version for s in req.specifier if s.operator == ">="]
        if len(lows) != 1:
            sys.exit(f"{dist}: dependency {line!r} needs exactly one '>=' floor")
        pins.append(f"{req.name}=={lows[0]}")
    return pins


if __name__ == "__main__":
    print("\n".join(floors()))
