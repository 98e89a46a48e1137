"""A suite's hunt throughput beside the secure-VM suite's, measured in the same run.

For each (scenario, parameters) row of the suite, the decisions per second of its hunts
(random walk) beside those of the svm suite measured interleaved with it (an svm scenario
before and after each row, cycling through the svm suite, so both see the same machine),
and their ratio; the svm figure of a row is the mean of its two neighbours, the suites'
figures the mean over all measurements (equal times, so total decisions over total time).
svm scenarios differ by 1.5x among themselves, so a row's ratio also says which svm
scenarios it happened to sit between. Also the actor switches per decision of each row
(see svm_hunt.py: a switch is a Trio task switch, the dearest part of a decision).
Used by nested_hunt.py and pkvm_hunt.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from svm_hunt import SCENARIOS as SVM
from svm_hunt import rate, switches


def against_svm(suite: str, rows: Sequence[tuple[str, dict]], *, seconds: float,
                target: float) -> float:
    """Print each row's figures and the suites' ratio (``target``: the issue's bar);
    return the suites' ratio."""
    svm_cycle = itertools.cycle(SVM)
    rate(next(svm_cycle), seconds=0.3)  # warm-up
    print(f"{suite + ' scenario':<26} {'params':<22} {'decisions/s':>12} {'svm/s':>9} "
          f"{'ratio':>6} {'schedules':>9} {'switches':>8}")
    ratios, rates, svm_rates = [], [], []
    for sc, params in rows:
        before = rate(next(svm_cycle), seconds=seconds / 2)[0]
        got, schedules = rate(sc, params, seconds=seconds)
        after = rate(next(svm_cycle), seconds=seconds / 2)[0]
        svm = (before + after) / 2
        ratios.append(got / svm)
        rates.append(got)
        svm_rates += [before, after]
        shown = ",".join(f"{k}={v}" for k, v in params.items()) or "-"
        print(f"{sc:<26} {shown:<22} {got:>12,.0f} {svm:>9,.0f} {got / svm:>6.2f} "
              f"{schedules:>9} {switches(sc, params):>8.2f}")
    mine, theirs = sum(rates) / len(rates), sum(svm_rates) / len(svm_rates)
    print(f"suites: {suite} {mine:,.0f} decisions/s, svm {theirs:,.0f}: ratio "
          f"{mine / theirs:.2f} (target {target}); rows: lowest {min(ratios):.2f}, mean "
          f"{sum(ratios) / len(ratios):.2f}")
    return mine / theirs
