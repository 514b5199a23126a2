"""`python -m clicks2pref.validate PATH...`: check click logs before any stage spends time on them.

Exit 0 and a summary when every record is valid; exit 1 with one `file:line: field: problem` line
per problem on stderr; exit 2 when there is nothing to check (no path, missing path, bad suffix).
The summary ends with what the logs support: how they split (`clicks2pref.data.log_splits`), whether the
simulator can score them, and a `warning:` line per missing input (positions never randomised, no
template named beside the logs), each saying how to supply it.
"""

import argparse
import sys
from collections import Counter
from pathlib import Path

from clicks2pref import CONF_DIR
from clicks2pref.data.io import expand_sources, iter_problems, read_impressions
from clicks2pref.data.log_splits import conversation_key, position_order, split_logs
from clicks2pref.data.offline_mode import foreign_impressions
from clicks2pref.data.simulator import load_world
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
        "conversations": len({conversation_key(r["context"]) for r in records}),
        "no_click_share": sum(not any(r["clicks"]) for r in records) / n if n else None,
        "order": position_order(records),
        "policies": Counter(r["policy"] for r in records),
        "weeks": Counter(r["week"] for r in records),
        "panel_sizes": Counter(len(r["suggestions"]) for r in records),
        "ctr": sum(any(r["clicks"]) for r in records) / n if n else None,
        "ctr_by_position": [
            {"position": k, "impressions": s, "clicks": c, "ctr": c / s}
            for k, s, c in zip(range(1, max_k + 1), shown, clicked)
        ],
    }


def support(records: list[dict], files: list[Path]) -> tuple[list[str], list[str]]:
    """(what the logs support, warnings): the split every stage will use, whether the simulator can score these
    conversations, and one line per missing input naming how to supply it."""
    split = split_logs(records)
    lines = [f"split               {split.describe()}"]
    foreign = foreign_impressions(records, load_world())
    lines.append("simulator           " + (
        f"none: {foreign} of {len(records)} impressions are not conversations of the packaged world, so every "
        "stage runs without it (simulator=none) and evaluation is model-based" if foreign else
        "the packaged world's conversations: the oracle can score them"))
    warnings = []
    order = position_order(records)
    if order["repeated"] and not order["randomised"]:
        warnings.append(f"positions were never randomised: each of the {order['repeated']} suggestions shown more than "
                        "once in a conversation was always at the same position, so the reward models will learn "
                        "position with content; log some traffic with the panel order shuffled per impression")
    elif not order["repeated"]:
        warnings.append("randomisation unknown: no suggestion was shown twice in one conversation, so position "
                        "bias cannot be separated from content; log some traffic with the panel order shuffled "
                        "per impression")
    if not any((f.parent / "templates.json").exists() for f in files):
        prompts = ", ".join(sorted(p.stem for p in Path(CONF_DIR, "prompt").glob("*.yaml")))
        warnings.append(f"template: no templates.json beside the logs names the prompt that served them; pass "
                        f"sft.template=NAME (one of {prompts})")
    if split.by == "context" and len(split.weeks) == 1:
        warnings.append(f"one week ({split.weeks[0]}): there is no later week to test on, so a hash share of the "
                        "conversations is held out instead; log a second week for a test in time")
    return lines, warnings


def format_summary(stats: dict, n_files: int) -> str:
    """The human-readable summary printed on success."""
    def counts(counter: Counter) -> str:
        return ", ".join(f"{k}: {v}" for k, v in sorted(counter.items())) or "-"

    ctr = "-" if stats["ctr"] is None else f"{stats['ctr']:.3f}"
    no_click = "-" if stats["no_click_share"] is None else f"{stats['no_click_share']:.3f}"
    order = stats["order"]
    randomised = (f"randomised ({order['moved']} of {order['repeated']} repeated suggestions moved)"
                  if order["randomised"] else f"fixed ({order['repeated']} repeated suggestions, none moved)"
                  if order["repeated"] else "unknown (no suggestion shown twice in a conversation)")
    lines = [
        f"files               {n_files}",
        f"impressions         {stats['impressions']}",
        f"policies            {len(stats['policies'])} ({counts(stats['policies'])})",
        f"weeks               {len(stats['weeks'])} ({counts(stats['weeks'])})",
        f"suggestions/panel   {counts(stats['panel_sizes'])}",
        f"CTR (any click)     {ctr}",
        f"conversations       {stats['conversations']}",
        f"no-click share      {no_click}",
        f"position order      {randomised}",
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
    lines, warnings = support(records, files)
    print("\nWhat these logs support")
    print("\n".join(lines + [f"warning: {w}" for w in warnings]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
