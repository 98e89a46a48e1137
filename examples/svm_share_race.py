"""Hunt the share-vs-page-in race, explain it, replay it, and check the fix.

Run it:  python examples/svm_share_race.py

kvmppc_share_page() must drop uvmem_lock around gfn_to_pfn(), which may fault; when it
takes the lock back, a racing H_SVM_PAGE_IN from another vCPU may have made the GFN secure
again, so the kernel looks again and retries. The quirk ``share-no-recheck`` removes that
second look: the hunt finds a GFN left both backed by a device (secure) page and marked
shared. Without the quirk the same hunt finds nothing. The racing page-in comes from the
Ultravisor's fault path while it shares the same GFN, which only a UV that does not
serialise its own work on one GFN does: ``-p uv=hostile``, the firmware the HV must survive.
"""

from __future__ import annotations

from pathlib import Path

import emu
from emu.sim import replay
from emu.sim.explain import explain
from emu.sim.perfetto import write_perfetto

SCENARIO, QUIRK, PARAMS = "share-vs-pageout", "share-no-recheck", {"uv": "hostile"}

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
