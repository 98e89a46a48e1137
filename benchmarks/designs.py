"""Compare the two HV designs for tracking GFNs (seed 004's review) on the same hunts.

- gfn-states: 651a631011, the HV tracks Normal / Secure (in or out) / Shared per GFN and
  migrates the remaining Normal GFNs at H_SVM_INIT_DONE without copying them;
- two-state: the HV tracks only "has a device page"; at H_SVM_INIT_DONE it pages every
  other GFN in with UV_PAGE_IN and the UV refuses the shared ones.

For each design: which quirks the hunts catch (each on its scenario), whether the fixed
model stays clean on every scenario, and what ESM costs under the seed-004 cost model with
preallocated memory (page copies and simulated seconds). Run: python benchmarks/designs.py
"""

from __future__ import annotations

import argparse

import emu
from emu.scenarios.svm import ESM_COUNTER, QUIRK_PARAMS, QUIRK_SCENARIO, QUIRK_STRATEGY

DESIGNS = ("gfn-states", "two-state")


def esm_cost(design: str, gb: float) -> tuple[float, int]:
    """Simulated seconds to become secure and page copies made, for one boot."""
    r = emu.run("svm-boot", params={"mem_mb": int(gb * 1024), "vcpus": 1, "design": design,
                                    "costs": "seed-004", "prealloc": True},
                max_steps=10**7)
    stamp = next(d for _, _, k, t, d in r.trace.events if k == "counter" and t == ESM_COUNTER)
    copies = sum(1 for _, _, k, t, _ in r.trace.events if k == "recv" and t == "memctl")
    return stamp / 1e9, copies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schedules", type=int, default=300, help="per hunt")
    args = ap.parse_args()
    print(f"{'quirk (scenario)':<56} " + " ".join(f"{d:>24}" for d in DESIGNS))
    for quirk, scenario in QUIRK_SCENARIO.items():
        cells = []
        for design in DESIGNS:
            strategy, depth, seed = QUIRK_STRATEGY.get(quirk, ("random", 3, 0))
            h = emu.hunt(scenario, quirks=[quirk],
                         params={**QUIRK_PARAMS.get(quirk, {}), "design": design},
                         schedules=args.schedules, strategy=strategy, depth=depth, seed=seed)
            cells.append(f"caught: {h.found.violation.kind} (seed {h.found.seed})"
                         if h.found else "not caught")
        print(f"{quirk + ' (' + scenario + ')':<56} " + " ".join(f"{c:>24}" for c in cells))
    scenarios = sorted({*QUIRK_SCENARIO.values(), "share-storm", "svm-reboot"})
    for design in DESIGNS:
        dirty = [s for s in scenarios
                 if not emu.hunt(s, params={"design": design}, schedules=args.schedules).ok]
        print(f"{design}: fixed model over {len(scenarios)} scenarios x {args.schedules} "
              f"schedules: {'clean' if not dirty else 'violations in ' + ', '.join(dirty)}")
    print(f"\n{'ESM cost (seed-004 costs, memory preallocated)':<56} "
          + " ".join(f"{d:>24}" for d in DESIGNS))
    for gb in (0.25, 1):
        cells = [f"{s:7.2f} s, {c:>6} copies" for s, c in (esm_cost(d, gb) for d in DESIGNS)]
        print(f"{gb:>6g} GB{'':<47} " + " ".join(f"{c:>24}" for c in cells))


if __name__ == "__main__":
    main()
