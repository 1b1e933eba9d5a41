"""Class and module sizes of the library (issue #23: no class over 250 lines, the runtime's core
module at most 450): `python -m bench.class_sizes [--top N] [--limit 250] [PATH ...]`.

A class's size is its source lines, decorators included (`end_lineno - lineno + 1`).
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

LIBRARY = Path(__file__).resolve().parent.parent / "shared" / "matterfab"


def classes(root: Path) -> list[tuple[int, str]]:
    """(lines, "module.py:Class") for every class under `root`, largest first."""
    found: list[tuple[int, str]] = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                found.append((node.end_lineno - first + 1, f"{path.relative_to(root)}:{node.name}"))
    return sorted(found, reverse=True)


def main() -> None:
    """Print the largest classes, and every one over the limit."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("paths", nargs="*", type=Path, default=[LIBRARY])
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--limit", type=int, default=250)
    args = parser.parse_args()
    for root in args.paths:
        found = classes(root)
        over = [c for c in found if c[0] > args.limit]
        print(f"{root}: {len(found)} classes, {len(over)} over {args.limit} lines")
        for lines, name in found[: max(args.top, len(over))]:
            print(f"{lines:6d}  {name}")


if __name__ == "__main__":
    main()
