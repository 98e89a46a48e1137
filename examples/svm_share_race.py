"""Hunt a share racing H_SVM_INIT_DONE, explain it, replay it, and check the fix.

Run it:  python examples/svm_share_race.py

H_SVM_INIT_DONE moves every GFN that has no state yet to a device page. Before 651a63101134
the HV kept one flag per GFN ("has a device page"), so a GFN the guest had shared looked
like one with no state, and INIT_DONE's migration took it back while the guest and QEMU
used it as shared memory. The quirk ``single-flag-gfn-tracking`` puts that tracking back:
the hunt finds a GFN both shared and backed by a device (secure) page. Without the quirk the
same hunt finds nothing.
"""

from __future__ import annotations

from pathlib import Path

import emu
from emu.sim import replay
from emu.sim.explain import explain
from emu.sim.perfetto import write_perfetto

SCENARIO, QUIRK, PARAMS = "init-done-vs-share", "single-flag-gfn-tracking", {}

if __name__ == "__main__":
    hunt = emu.hunt(SCENARIO, params=PARAMS, quirks=[QUIRK], schedules=500, seed=0)
    found = hunt.found
    print(f"with --quirk {QUIRK}: found in seed {found.seed} after {hunt.schedules} "
          "schedule(s)\n")
    print(explain(found, last=25))

    out = Path("emu-out")
    path = replay.save(out / "share-race.replay.json", found)
    again = replay.replay(replay.load(path))
    print(f"\nreplay file {path}: trace hash {again.result.trace_hash}, "
          f"{'matched' if again.matched else 'MISMATCH'}")
    print(f"Perfetto trace: {write_perfetto(found.trace, out / 'share-race.trace.json')}")

    fixed = emu.hunt(SCENARIO, params=PARAMS, schedules=500, seed=0)
    print(f"\nwithout the quirk: {fixed.schedules} schedules, "
          f"{'no violation' if fixed.ok else fixed.found.violation.describe()}")
