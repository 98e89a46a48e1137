"""Hunt throughput of the nested suite against the secure-VM suite's, side by side
(``against_svm.py`` says how), each scenario with ``-p moves=3`` on each topology asked
for. Target (issue 8): the suites' ratio at least 0.5 (nested within 2x of svm).
Run: python benchmarks/nested_hunt.py [--seconds S] [--topology smt4|smt8|power10 ...]
"""

from __future__ import annotations

import argparse
import itertools

from against_svm import against_svm

from emu.sim.scenario import suites


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    ap.add_argument("--topology", action="append", help="topologies (default smt4, smt8)")
    ap.add_argument("--scenario", action="append", help="only these nested scenarios")
    args = ap.parse_args()
    nested = args.scenario or suites()["nested"][1]
    rows = [(sc, {"moves": 3, "topology": t})
            for sc, t in itertools.product(nested, args.topology or ("smt4", "smt8"))]
    against_svm("nested", rows, seconds=args.seconds, target=0.5)


if __name__ == "__main__":
    main()
