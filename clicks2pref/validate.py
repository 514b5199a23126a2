"""`python -m clicks2pref.validate PATH...`: check click logs before any stage spends time on them.

Exit 0 and a summary when every record is valid; exit 1 with one `file:line: field: problem` line
per problem on stderr; exit 2 when there is nothing to check (no path, missing path, bad suffix).
"""

import argparse
import sys
from collections import Counter

from clicks2pref.data.io import expand_sources, iter_problems, read_impressions
from clicks2pref.errors import ClickLogError

USAGE = "usage: python -m clicks2pref.validate PATH... (.jsonl/.json/.parquet files or globs)"


def summarize(records: list[dict]) -> dict:
    """Counts and click-through rates of a valid log.

    CTR is the share of impressions with at least one click; CTR at position k is the clicks at
    position k divided by the impressions that showed at least k suggestions.
    """
    n = len(records)
    max_k = max((len(r["suggestions"]) for r in records), default=0)
    shown = [sum(len(r["suggestions"]) >= k for r in records) for k in range(1, max_k + 1)]
    clicked = [sum(r["clicks"][k - 1] for r in records if len(r["clicks"]) >= k) for k in range(1, max_k + 1)]
    return {
        "impressions": n,
        "policies": Counter(r["policy"] for r in records),
        "weeks": Counter(r["week"] for r in records),
        "panel_sizes": Counter(len(r["suggestions"]) for r in records),
        "ctr": sum(any(r["clicks"]) for r in records) / n if n else None,
        "ctr_by_position": [
            {"position": k, "impressions": s, "clicks": c, "ctr": c / s}
            for k, s, c in zip(range(1, max_k + 1), shown, clicked)
        ],
    }


def format_summary(stats: dict, n_files: int) -> str:
    """The human-readable summary printed on success."""
    def counts(counter: Counter) -> str:
        return ", ".join(f"{k}: {v}" for k, v in sorted(counter.items())) or "-"

    ctr = "-" if stats["ctr"] is None else f"{stats['ctr']:.3f}"
    lines = [
        f"files               {n_files}",
        f"impressions         {stats['impressions']}",
        f"policies            {len(stats['policies'])} ({counts(stats['policies'])})",
        f"weeks               {len(stats['weeks'])} ({counts(stats['weeks'])})",
        f"suggestions/panel   {counts(stats['panel_sizes'])}",
        f"CTR (any click)     {ctr}",
        "",
        "CTR by position",
        f"{'position':>8}  {'impressions':>11}  {'clicks':>6}  {'ctr':>6}",
    ]
    lines += [
        f"{p['position']:>8}  {p['impressions']:>11}  {p['clicks']:>6}  {p['ctr']:>6.3f}"
        for p in stats["ctr_by_position"]
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clicks2pref.validate", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", metavar="PATH", help="click-log files or globs (.jsonl, .json, .parquet)")
    args = parser.parse_args(argv)
    if not args.paths:
        print(USAGE, file=sys.stderr)
        return 2
    try:
        files = expand_sources(args.paths)
    except ClickLogError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    n_problems, bad_files = 0, set()
    for problem in iter_problems(files):
        print(problem, file=sys.stderr)
        n_problems += 1
        bad_files.add(problem.path)
    if n_problems:
        print(f"{n_problems} problem(s) in {len(bad_files)} of {len(files)} file(s)", file=sys.stderr)
        return 1

    records, _ = read_impressions(files)
    print(format_summary(summarize(records), len(files)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
