"""Hunt throughput of the pkvm suite against the secure-VM suite's, side by side
(``against_svm.py`` says how). Target (issue 9): the suites' ratio at least 0.5 (pkvm
hunts within 2x of svm's).
Run: python benchmarks/pkvm_hunt.py [--seconds S] [--scenario NAME ...]
"""

from __future__ import annotations

import argparse

from against_svm import against_svm

from emu.sim.scenario import suites


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    ap.add_argument("--scenario", action="append", help="only these pkvm scenarios")
    args = ap.parse_args()
    rows = [(sc, {}) for sc in args.scenario or suites()["pkvm"][1]]
    against_svm("pkvm", rows, seconds=args.seconds, target=0.5)


if __name__ == "__main__":
    main()
