"""How small the findings shrink, and how fast conflict-guided search finds them.

``--part shrink``: for every quirk a scenario claims (svm, nested and pkvm ``QUIRK_SCENARIO``
with their ``QUIRK_PARAMS``), hunt from seed 0 (random walk, or PCT d3 with ``--pct``) for at
most ``--budget`` schedules, shrink the first finding and print its preemptions, steps and
actors before -> after, the replays shrinking spent, and whether the shrunk decision list,
replayed strictly, ends in the same violation (``replay.violation_key``; "yes" is also the
same trace hash, bit for bit); then how many shrunk findings have 0, 1, 2, 3 and more than 3
preemptions. Target (the issue's bar): every quirk's finding shrinks to at most 3
preemptions.

``--part guided``: schedules to the first fatal violation for random walk, PCT d3 and
guided (depth 3) on the quirks of the README's guided table, the median over ``--hunts``
hunts from seeds 0, 1000, 2000, ..., each of at most ``--budget`` schedules (a hunt that
finds nothing counts as budget + 1, and a median beyond the budget prints as ``>budget``),
and the ratio PCT d3 / guided (a lower bound, ``>=``, when PCT d3 finds nothing). Target
(the issue's bar): guided needs at least 3x fewer schedules than PCT d3 wherever PCT d3
needs more than 100.
Run: python benchmarks/hunting.py [--part shrink|guided|all] [--budget N] [--pct]
     [--hunts H] [--quirk Q ...]
"""

from __future__ import annotations

import argparse
import statistics
from collections import Counter
from typing import Any

import emu
from emu.errors import ReplayDivergence
from emu.scenarios import nested, pkvm, svm
from emu.sim.replay import violation_key
from emu.sim.runner import run_decisions

CLAIMS = [(suite.__name__.rsplit(".", 1)[1], quirk, scenario, suite.QUIRK_PARAMS.get(quirk, {}))
          for suite in (svm, nested, pkvm) for quirk, scenario in suite.QUIRK_SCENARIO.items()]
"""(suite, quirk, the scenario that claims it, the parameters it needs)."""

GUIDED_TABLE = [
    ("init-done-vs-share", "busy-page-fails", {"slots": 2}),
    ("hotplug-during-esm", "init-start-unserialised", {}),
    ("qemu-vs-page-in", "page-in-hole-race", {}),
    ("nested-teardown-vs-enter", "idr-alloc-unlocked", {}),
    ("share-unshare-pin", "check-apply-unlocked", {}),
    ("concurrent-aborts", "abort-bug-on", {}),
]
"""(scenario, quirk, parameters): the rows of the README's guided table."""

STRATEGIES = (("random", "random", 3), ("PCT d3", "pct", 3), ("guided", "guided", 3))
"""(column, strategy, depth) of the guided part."""

BAR = 3


def replays_same(result: emu.RunResult, key: tuple[str, str] | None) -> str:
    """Whether ``result``'s decisions, replayed strictly, end in the violation ``key``: yes
    (and bit for bit, the same trace hash), yes with another trace, or NO."""
    try:
        again = run_decisions(result.scenario, list(result.decisions), seed=result.seed,
                              params=result.params, quirks=result.quirks,
                              strategy=result.strategy, max_steps=result.max_steps,
                              release=result.release)
    except ReplayDivergence:
        return "NO (diverged)"
    if violation_key(again.violation) != key:
        return "NO"
    return "yes" if again.trace_hash == result.trace_hash else "yes (another trace)"


def shrink_part(budget: int, pct: bool, only: list[str] | None) -> None:
    strategy = "pct" if pct else "random"
    print(f"first finding from seed 0 ({'PCT d3' if pct else 'random walk'}, at most {budget}"
          f" schedules), shrunk: preemptions/steps/actors before -> after")
    print(f"{'suite':<7} {'quirk':<27} {'scenario':<26} {'sched':>5} {'before':>12} "
          f"{'after':>12} {'replays':>7}  same")
    found: list[int] = []
    missing: list[str] = []
    for suite, quirk, scenario, params in CLAIMS:
        if only and quirk not in only:
            continue
        h = emu.hunt(scenario, schedules=budget, strategy=strategy, depth=3, quirks=(quirk,),
                     params=params, seed=0)
        head = f"{suite:<7} {quirk:<27} {scenario:<26}"
        if h.found is None:
            missing.append(quirk)
            print(f"{head} {'>' + str(budget):>5}  (nothing found)", flush=True)
            continue
        s = h.shrunk
        if s is None or s.note:
            missing.append(quirk)
            print(f"{head} {h.schedules:>5}  (not shrunk: {s.note if s else 'no shrink'})",
                  flush=True)
            continue
        same = replays_same(s.result, violation_key(h.found.violation))
        found.append(s.after[0])
        print(f"{head} {h.schedules:>5} {'/'.join(map(str, s.before)):>12} "
              f"{'/'.join(map(str, s.after)):>12} {s.replays:>7}  {same}",
              flush=True)
    buckets = Counter(min(p, BAR + 1) for p in found)
    print("shrunk preemptions: " + ", ".join(
        f"{k if k <= BAR else '>' + str(BAR)}: {buckets[k]}" for k in range(BAR + 2)))
    low = sum(p <= BAR for p in found)
    total = len(found) + len(missing)
    print(f"{low} of {total} quirks shrink to <= {BAR} preemptions"
          + (f" ({len(missing)} without a shrunk finding: {', '.join(missing)})"
             if missing else "")
          + f"; target every quirk <= {BAR}: {'met' if low == total else 'NOT met'}")


def to_first(scenario: str, quirk: str, params: dict[str, Any], strategy: str, depth: int,
             seed: int, budget: int) -> int:
    """Schedules to the first fatal violation, budget + 1 when none turns up."""
    h = emu.hunt(scenario, schedules=budget, strategy=strategy, depth=depth, quirks=(quirk,),
                 params=params, seed=seed, shrink=False)
    fatal = h.found is not None and any(v.fatal for v in h.found.violations)
    return h.schedules if fatal else budget + 1


def shown(median: float, budget: int) -> str:
    return f">{budget}" if median > budget else f"{median:g}"


def verdict(pct: float, guided: float, budget: int) -> str:
    """The guided target for one row, in words."""
    if pct <= 100:
        return "n/a: PCT d3 needs <= 100"
    if guided > budget:
        return "not met: guided found nothing"
    ratio = pct / guided
    bound = ">=" if pct > budget else ""  # (PCT d3 beyond the budget: a lower bound)
    if ratio >= BAR:
        return f"met ({bound}{ratio:.1f}x)"
    if pct > budget:
        return f"undecided ({bound}{ratio:.1f}x; raise --budget)"
    return f"NOT met ({ratio:.1f}x)"


def guided_part(budget: int, hunts: int, only: list[str] | None) -> None:
    seeds = [1000 * i for i in range(hunts)]
    print(f"schedules to the first finding, median of {hunts} hunts from seeds "
          f"{', '.join(map(str, seeds))} (budget {budget})")
    print(f"{'quirk':<24} {'scenario':<25} {'random':>7} {'PCT d3':>7} {'guided':>7} "
          f"{'PCT/gd':>7}  target (>= {BAR}x fewer than PCT d3 where it needs > 100)")
    for scenario, quirk, params in GUIDED_TABLE:
        if only and quirk not in only:
            continue
        medians = [statistics.median(to_first(scenario, quirk, params, strategy, depth, seed,
                                              budget) for seed in seeds)
                   for _, strategy, depth in STRATEGIES]
        rnd, pct, guided = medians
        ratio = f"{'>=' if pct > budget else ''}{pct / guided:.1f}" if guided <= budget else "-"
        print(f"{quirk:<24} {scenario:<25} {shown(rnd, budget):>7} {shown(pct, budget):>7} "
              f"{shown(guided, budget):>7} {ratio:>7}  {verdict(pct, guided, budget)}",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("shrink", "guided", "all"), default="all")
    ap.add_argument("--budget", type=int, help="schedules per hunt (default: shrink 500, "
                    "guided 300)")
    ap.add_argument("--pct", action="store_true", help="shrink part: hunt with PCT d3")
    ap.add_argument("--hunts", type=int, default=3, help="guided part: hunts per strategy")
    ap.add_argument("--quirk", action="append", help="only these quirks (repeatable)")
    args = ap.parse_args()
    if args.part in ("shrink", "all"):
        shrink_part(args.budget or 500, args.pct, args.quirk)
    if args.part == "all":
        print()
    if args.part in ("guided", "all"):
        guided_part(args.budget or 300, args.hunts, args.quirk)


if __name__ == "__main__":
    main()
