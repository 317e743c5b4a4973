"""The existing app benches, before and after a change, interleaved in one run.

Each tree is a git worktree under a temporary folder (``--before`` and ``--after`` revisions;
the committed results in this checkout are never overwritten). Every round runs each bench in
both trees, alternating which goes first, with the same arguments and this checkout's Python;
the table keeps the median over rounds of every figure and the ratio after / before.

    python bench/side_by_side.py                          # df969df (before issue 14) vs HEAD, 2 rounds
    python bench/side_by_side.py --rounds 3 --benches concurrency
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import write_results

ROOT = Path(__file__).resolve().parent.parent

# bench -> (arguments, the results file it writes under bench/results/). Tiny model on the CPU:
# the figures the issue asks to re-take, at sizes that fit a few minutes each.
BENCHES = {
    "concurrency": (["--max-tokens", "64"], "concurrency_tiny_cpu"),
    "app_overhead": (["--small"], "app_overhead_tiny_cpu_small"),
    "scaling": (["--small", "--contexts", "512,4096", "--users", "1,8"], "scaling_tiny_cpu_small"),
}
# Figures where a smaller value is better (everything else: larger is better).
LOWER_IS_BETTER = (
    "TTFT",
    "wall s",
    "ms",
    "added",
    "bytes",
    "growth",
    "answered",
    "estimation",
    "process_starts",
    "first content",
)


def worktree(rev: str, base: Path) -> Path:
    """A detached worktree of REV under BASE (created once; the bench's results land there)."""
    sha = subprocess.check_output(["git", "-C", str(ROOT), "rev-parse", "--short", rev], text=True).strip()
    path = base / sha
    if not path.exists():
        subprocess.check_call(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(path), sha])
    # One measuring instrument for both trees: this checkout's protocol clients (they only speak
    # HTTP and Gradio's queue protocol to the app under test; e.g. one session per page, as the
    # browser does, since this checkout's version).
    shutil.copy2(ROOT / "bench" / "_clients.py", path / "bench" / "_clients.py")
    return path


def run_bench(tree: Path, bench: str, timeout: float) -> dict:
    """Run one bench in TREE with this interpreter; return its results JSON."""
    args, result = BENCHES[bench]
    out = tree / "bench" / "results" / f"{result}.json"
    out.unlink(missing_ok=True)
    started = time.time()
    proc = subprocess.run(
        [sys.executable, f"bench/{bench}.py", *args],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(tree)},
    )
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"{bench} in {tree} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    data = json.loads(out.read_text())
    data["wall_s"] = round(time.time() - started, 1)
    return data


def tables(data: dict) -> dict[str, list[dict]]:
    """The rows of a results file by section ('' = the main table)."""
    return {"": data["rows"], **data.get("sections", {})}


def label(row: dict) -> str:
    """A row's identity: its text fields and the size it was run at."""
    keys = [k for k in ("serving", "path", "streams", "users", "context tokens") if k in row]
    return ", ".join(f"{row[k]}" if isinstance(row[k], str) else f"{k} {row[k]}" for k in keys)


def compare(bench: str, before: list[dict], after: list[dict]) -> list[dict]:
    """One row per (section, row, figure): medians over rounds and after / before."""
    out = []
    for section, rows in tables(before[0]).items():
        for i, row in enumerate(rows):
            for key, value in row.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)) or key in ("tokens", "streams"):
                    continue
                if key in ("users", "context tokens", "prompt tokens", "k", "updates", "reply chars"):
                    continue
                b = statistics.median(tables(d)[section][i][key] for d in before)
                a = statistics.median(tables(d)[section][i][key] for d in after)
                ratio = round(a / b, 3) if b else None
                lower = any(word in key for word in LOWER_IS_BETTER)
                better = None if ratio is None else (ratio <= 1 if lower else ratio >= 1)
                out.append(
                    {
                        "bench": bench,
                        "table": section or "main",
                        "row": label(row),
                        "figure": key,
                        "before (median)": b,
                        "after (median)": a,
                        "after / before": ratio,
                        "better or equal": "yes" if better else ("no" if better is False else "-"),
                    }
                )
    return out


def main() -> None:
    """Interleave the benches over both trees for --rounds rounds; write side_by_side.{json,md}."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default="df969df", help="git revision of the 'before' tree (df969df: before issue 14)")
    ap.add_argument("--after", default="HEAD")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--benches", default=",".join(BENCHES))
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per bench run")
    ap.add_argument("--name", default="side_by_side")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="qwen-side-by-side-"))
    trees = {"before": worktree(args.before, base), "after": worktree(args.after, base)}
    runs: dict[str, dict[str, list[dict]]] = {b: {"before": [], "after": []} for b in args.benches.split(",")}
    loads = []
    try:
        for rnd in range(args.rounds):
            order = ["before", "after"] if rnd % 2 == 0 else ["after", "before"]
            for bench in runs:
                for side in order:
                    data = run_bench(trees[side], bench, args.timeout)
                    runs[bench][side].append(data)
                    load = data["machine"].get("loadavg at start (1/5/15 min)")
                    loads.append(
                        {"round": rnd + 1, "bench": bench, "tree": side, "wall s": data["wall_s"], "load": load}
                    )
                    print(f"round {rnd + 1} {bench} {side}: {data['wall_s']} s, load {load}", flush=True)
    finally:
        for tree in trees.values():
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
        shutil.rmtree(base, ignore_errors=True)
    rows = [r for bench, sides in runs.items() for r in compare(bench, sides["before"], sides["after"])]
    revs = {
        side: subprocess.check_output(["git", "-C", str(ROOT), "rev-parse", "--short", rev], text=True).strip()
        for side, rev in (("before", args.before), ("after", args.after))
    }
    notes = (
        f"before = {revs['before']}, after = {revs['after']}; {args.rounds} rounds, each bench run in both trees "
        "back to back (the order alternates per round), same arguments: "
        + "; ".join(f"{b} {' '.join(BENCHES[b][0])}" for b in runs)
        + ". Medians over rounds. 'better or equal' reads times (TTFT, wall, ms) and bytes as lower-is-better."
    )
    sections = [("Runs", loads, None)]
    extra = {"raw": runs, "revisions": revs}
    print(write_results(args.name, rows, list(rows[0]), notes, sections, extra, note=args.note).read_text())


if __name__ == "__main__":
    main()
