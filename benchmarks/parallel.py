"""Hunt throughput with 1 and 2 worker processes, measured in the same run, and the same
findings from both.

For each scenario (default: the svm suite), random-walk hunts of ``--schedules`` schedules
from the same seed with ``workers=1`` (the serial hunt) and ``workers=2``, run twice in the
order 1, 2, 2, 1 so that a drift in the machine's load hits both alike; schedules per second
is wall time, everything included (forking the workers, the parent's bookkeeping). Each
pair's results must be the same (schedules, first finding, its trace hash, violating count,
steps); then a quirk hunted with ``keep_going`` must report the same findings. Target
(issue 11): a ratio of at least 1.7. The machine's load (``os.getloadavg``) is printed
before and after, and the cores the hunts actually got (CPU seconds of the process and its
workers over wall seconds): on a machine shared with other work, two workers get less than
two cores, and the ratio says as much about the machine as about emu.
Run: python benchmarks/parallel.py [--schedules N] [--scenario NAME ...]
"""

from __future__ import annotations

import argparse
import os
import time

import emu
from emu.sim.scenario import suites

QUIRK = ("share-vs-pageout", "page-out-lock-leak")


def hunt(scenario: str, workers: int, schedules: int) -> tuple[emu.HuntResult, float, float]:
    """The hunt, its wall seconds and the CPU seconds it used (with its workers)."""
    before, start = os.times(), time.perf_counter()
    h = emu.hunt(scenario, schedules=schedules, workers=workers, shrink=False)
    after, wall = os.times(), time.perf_counter() - start
    cpu = sum(getattr(after, f) - getattr(before, f)
              for f in ("user", "system", "children_user", "children_system"))
    return h, wall, cpu


def same(a: emu.HuntResult, b: emu.HuntResult) -> bool:
    def key(h: emu.HuntResult) -> tuple:
        found = (h.found.seed, h.found.trace_hash) if h.found else None
        return h.schedules, found, h.violating, h.steps_total, h.steps_max
    return key(a) == key(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schedules", type=int, default=200, help="schedules per hunt")
    ap.add_argument("--scenario", action="append", help="only these (repeatable)")
    args = ap.parse_args()
    names = args.scenario or suites()["svm"][1]
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print(f"{'scenario':<28} {'1 worker/s':>10} {'2 workers/s':>11} {'ratio':>6} "
          f"{'cores 1':>7} {'cores 2':>7}  same")
    totals = {1: [0, 0.0, 0.0], 2: [0, 0.0, 0.0]}
    all_same = True
    for name in names:
        rows: dict[int, list] = {1: [0, 0.0, 0.0], 2: [0, 0.0, 0.0]}
        results = []
        for workers in (1, 2, 2, 1):
            h, wall, cpu = hunt(name, workers, args.schedules)
            results.append(h)
            for row in (rows[workers], totals[workers]):
                row[0] += h.schedules
                row[1] += wall
                row[2] += cpu
        agree = all(same(results[0], h) for h in results[1:])
        all_same &= agree
        one, two = (rows[w][0] / rows[w][1] for w in (1, 2))
        print(f"{name:<28} {one:>10,.0f} {two:>11,.0f} {two / one:>6.2f} "
              f"{rows[1][2] / rows[1][1]:>7.2f} {rows[2][2] / rows[2][1]:>7.2f}  "
              f"{'yes' if agree else 'NO'}")
    one, two = (totals[w][0] / totals[w][1] for w in (1, 2))
    print(f"{'all':<28} {one:>10,.0f} {two:>11,.0f} {two / one:>6.2f} "
          f"{totals[1][2] / totals[1][1]:>7.2f} {totals[2][2] / totals[2][1]:>7.2f}  "
          f"{'yes' if all_same else 'NO'}")
    print(f"ratio {two / one:.2f} (target 1.7: {'met' if two / one >= 1.7 else 'NOT met'})")
    name, quirk = QUIRK
    found = []
    for workers in (1, 2):
        seeds: list[int] = []
        h = emu.hunt(name, schedules=args.schedules, quirks=[quirk], keep_going=True,
                     workers=workers, shrink=False, on_finding=lambda r, s=seeds: s.append(r.seed))
        found.append((sorted(seeds), h.found.seed if h.found else None, h.violating))
    print(f"{name} --quirk {quirk} --keep-going: 1 worker {len(found[0][0])} findings, "
          f"2 workers {len(found[1][0])}; the same seeds and first finding: "
          f"{'yes' if found[0] == found[1] else 'NO'}")
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    if not all_same or found[0] != found[1]:
        raise SystemExit("the hunts with 1 and 2 workers differ")


if __name__ == "__main__":
    main()
