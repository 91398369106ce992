"""Print the import graph of dsmn_host: one line per module, what it imports from the package.

    python3 scripts/import_graph.py [--lines]

Uses the same walk as the import-cycle test (tests/test_contracts.py: every import statement,
function-level ones included; the CLI's registry of stage modules by name is not an edge).
Names are shown relative to dsmn_host; `clihelp` (every stage's `register` uses it) is left out.
--lines adds each module's line count.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "host"), str(ROOT / "tests")]


def main():
    import test_contracts as tc

    graph = tc.import_graph()
    lines = "--lines" in sys.argv
    width = max(len(m) for m in graph) - len("dsmn_host.") + 1
    for mod in sorted(graph):
        short = mod[len("dsmn_host."):] if mod != "dsmn_host" else "(package)"
        # a subpackage counts once: `from dsmn_host.data import tau` is an edge to data.tau
        ds = {d for d in graph[mod] if d != "dsmn_host.clihelp"}
        ds = {d for d in ds if not any(o.startswith(d + ".") for o in ds)}
        deps = ", ".join(sorted(d[len("dsmn_host."):] for d in ds)) or "-"
        extra = ""
        if lines:
            spec = tc.PKG.parent.joinpath(*mod.split("."))
            path = spec / "__init__.py" if spec.is_dir() else spec.with_suffix(".py")
            extra = f"{len(path.read_text().splitlines()):5d}  "
        print(f"{extra}{short + ':':{width + 1}s} {deps}")


if __name__ == "__main__":
    main()
