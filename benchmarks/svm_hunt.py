"""Hunt throughput of the secure-VM scenarios against the engine demo's.

For each svm scenario, the decisions per second of a random-walk hunt (the default
strategy, timers as choices, many schedules in one trio.run), beside the decisions per
second of the engine demo (lost-update: 3 actors, locked, 50 increments, tracing on)
measured in the same run, interleaved with the scenarios so that both see the same
machine, and their ratio. Target (issue 6): each ratio at least 0.5.
Also: the wall time of one ``svm-boot -p vcpus=2000`` schedule (``--big``).
Run: python benchmarks/svm_hunt.py [--seconds S] [--scenario NAME ...] [--big]
"""

from __future__ import annotations

import argparse
import time

import emu

SCENARIOS = ("svm-boot", "share-storm", "share-vs-pageout", "init-done-vs-share",
             "hotplug-during-esm", "dimm-hotplug", "svm-reboot", "abort-on-register-failure",
             "svm-off-vs-entry")


def rate(scenario: str, seconds: float, params: dict | None = None) -> tuple[float, int]:
    """Decisions per second over hunts of ``scenario`` for about ``seconds``."""
    steps = schedules = 0
    elapsed = 0.0
    while elapsed < seconds:
        start = time.perf_counter()
        h = emu.hunt(scenario, schedules=20, seed=schedules, params=params)
        elapsed += time.perf_counter() - start
        steps += h.steps_total
        schedules += h.schedules
        if not h.ok:
            raise SystemExit(f"{scenario}: a hunt found {h.found.violation}")
    return steps / elapsed, schedules


def engine_rate(seconds: float) -> float:
    return rate("lost-update", seconds, {"locked": True, "increments": 50})[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.5, help="time per measurement")
    ap.add_argument("--scenario", action="append", help="only these (repeatable)")
    ap.add_argument("--big", action="store_true", help="also one svm-boot -p vcpus=2000")
    args = ap.parse_args()
    engine_rate(0.3)  # warm-up
    print(f"{'scenario':<26} {'decisions/s':>12} {'engine/s':>10} {'ratio':>6} {'schedules':>9}")
    ratios = []
    for sc in args.scenario or SCENARIOS:
        before = engine_rate(args.seconds / 2)
        svm, schedules = rate(sc, args.seconds)
        engine = (before + engine_rate(args.seconds / 2)) / 2
        ratios.append(svm / engine)
        print(f"{sc:<26} {svm:>12,.0f} {engine:>10,.0f} {svm / engine:>6.2f} {schedules:>9}")
    print(f"lowest ratio {min(ratios):.2f}, mean {sum(ratios) / len(ratios):.2f} (target 0.5)")
    if args.big:
        start = time.perf_counter()
        r = emu.run("svm-boot", params={"vcpus": 2000})
        print(f"svm-boot -p vcpus=2000: {r.steps:,} steps in {time.perf_counter() - start:.1f} s"
              f" ({'clean' if r.ok else r.violation.kind})")


if __name__ == "__main__":
    main()
