"""Hunt throughput of the nested suite against the secure-VM suite's, side by side.

For each scenario of the ``nested`` suite (random walk, ``-p moves=3`` on each topology
asked for), the decisions per second of its hunts beside those of the svm suite measured
in the same run, interleaved (an svm scenario before and after each nested one, cycling
through the suite, so both see the same machine), and their ratio; the svm figure of a
row is the mean of its two neighbours, the suites' figures the mean over all measurements
(equal times, so total decisions over total time). Target (issue 8): the suites' ratio at
least 0.5 (nested within 2x of svm); svm scenarios differ by 1.5x among themselves, so a
row's ratio also says which svm scenarios it happened to sit between.
Also the actor switches per decision of each nested scenario (see svm_hunt.py: a switch
is a Trio task switch, the dearest part of a decision).
Run: python benchmarks/nested_hunt.py [--seconds S] [--topology smt4|smt8|power10 ...]
"""

from __future__ import annotations

import argparse
import itertools

from svm_hunt import SCENARIOS as SVM
from svm_hunt import rate, switches

from emu.sim.scenario import suites


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    ap.add_argument("--topology", action="append", help="topologies (default smt4, smt8)")
    ap.add_argument("--scenario", action="append", help="only these nested scenarios")
    args = ap.parse_args()
    nested = args.scenario or suites()["nested"][1]
    svm_cycle = itertools.cycle(SVM)
    rate(next(svm_cycle), seconds=0.3)  # warm-up
    print(f"{'nested scenario':<26} {'topology':<8} {'decisions/s':>12} {'svm/s':>9} "
          f"{'ratio':>6} {'schedules':>9} {'switches':>8}")
    ratios, nested_rates, svm_rates = [], [], []
    for sc, topology in itertools.product(nested, args.topology or ("smt4", "smt8")):
        params = {"moves": 3, "topology": topology}
        before = rate(next(svm_cycle), seconds=args.seconds / 2)[0]
        got, schedules = rate(sc, params, seconds=args.seconds)
        after = rate(next(svm_cycle), seconds=args.seconds / 2)[0]
        svm = (before + after) / 2
        ratios.append(got / svm)
        nested_rates.append(got)
        svm_rates += [before, after]
        print(f"{sc:<26} {topology:<8} {got:>12,.0f} {svm:>9,.0f} {got / svm:>6.2f} "
              f"{schedules:>9} {switches(sc, params):>8.2f}")
    suite = sum(nested_rates) / len(nested_rates) / (sum(svm_rates) / len(svm_rates))
    print(f"suites: nested {sum(nested_rates) / len(nested_rates):,.0f} decisions/s, svm "
          f"{sum(svm_rates) / len(svm_rates):,.0f}: ratio {suite:.2f} (target 0.5); rows: "
          f"lowest {min(ratios):.2f}, mean {sum(ratios) / len(ratios):.2f}")


if __name__ == "__main__":
    main()
