"""Two checkouts measured in one run: a benchmark of this tree against the same benchmark of a
baseline tree (e.g. an earlier commit), interleaved round by round so that the machine's noise hits
both alike; prints the median of every number each benchmark writes (--json) and the ratio.

    git worktree add /tmp/base <commit>
    python bench/compare_trees.py --baseline /tmp/base --rounds 5 bench/bench_core.py --rounds 1 --steps 200

The baseline runs its own copy of the benchmark script with its own package (PYTHONPATH points a
`metasweep` namespace at its core/, sweeps/ and analysis/ folders), this tree likewise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def shim(tree: Path, folder: Path) -> str:
    """A PYTHONPATH entry whose `metasweep` package is `tree`'s (links to its three folders)."""
    pkg = folder / "metasweep"
    pkg.mkdir(parents=True, exist_ok=True)
    for sub in ("core", "sweeps", "analysis"):
        link = pkg / sub
        if not link.exists():
            link.symlink_to(tree / sub)
    return str(folder)


def run(tree: Path, path_entry: str, script: str, args: list[str]) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        env = {**os.environ, "PYTHONPATH": path_entry}
        subprocess.run([sys.executable, str(tree / script), *args, "--json", out.name], check=True, env=env,
                       capture_output=True, text=True)
        return json.loads(Path(out.name).read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, type=Path, help="the other checkout")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("script", help="a benchmark that accepts --json PATH, relative to each tree")
    ap.add_argument("args", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        paths = {"baseline": (a.baseline.resolve(), shim(a.baseline.resolve(), Path(d) / "base")),
                 "this": (HERE, shim(HERE, Path(d) / "this"))}
        results: dict[str, list[dict]] = {"baseline": [], "this": []}
        for r in range(a.rounds):
            for name in (("baseline", "this") if r % 2 == 0 else ("this", "baseline")):
                tree, entry = paths[name]
                results[name].append(run(tree, entry, a.script, a.args))
    keys = [k for k, v in results["this"][0].items() if isinstance(v, (int, float)) and k in results["baseline"][0]]
    print(f"{a.script} {' '.join(a.args)}: medians over {a.rounds} interleaved rounds")
    print(f"{'':40s} {'baseline':>12s} {'this':>12s} {'this/baseline':>14s}")
    for k in keys:
        base = statistics.median(x[k] for x in results["baseline"])
        this = statistics.median(x[k] for x in results["this"])
        print(f"{k:40s} {base:12.4g} {this:12.4g} {this / base if base else float('nan'):14.3f}")


if __name__ == "__main__":
    main()
