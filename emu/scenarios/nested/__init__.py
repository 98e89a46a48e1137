"""POWER nested virtualisation scenarios (seed 002): an L1 hypervisor on L0, its L2 guests
run with H_ENTER_NESTED on pCPUs whose TLBs the vCPU threads move between.

One module per scenario; ``common`` holds what they share. Every scenario takes
``topology`` (smt4: POWER9 SMT4, the TLB is the core's; smt8: POWER9 SMT8, two TLB groups
of interleaved threads per core), ``moves`` (migrations the host scheduler makes at points
the schedule picks) and accepts every nested quirk. Each module says which quirks its
scenario finds (``QUIRK_SCENARIO``, with the parameters it needs in ``QUIRK_PARAMS``);
this package merges them, so every quirk has exactly one scenario that hunts it down.
"""

from __future__ import annotations

from ...sim.scenario import quirk_claims
from . import boot, malicious, memslot_delete, storm, teardown, tlbiel_migrate, unmap_fault
from .common import EA, ENTER, H_YIELD, PARAMS, QUIRKS

SUITE = "POWER nested virtualisation: seed 002 (L1 hypervisor, H_ENTER_NESTED, TLB flushes)"
"""What ``emu list`` says of the suite (entry point in pyproject.toml)."""

_MODULES = (boot, tlbiel_migrate, storm, teardown, memslot_delete, unmap_fault, malicious)
QUIRK_SCENARIO, QUIRK_PARAMS = quirk_claims(_MODULES)

SMALLEST = ("nested-boot", {"touch": False}, "create-race-fails")
"""The suite's smallest schedule (scenario, parameters, the quirk it claims): what
``emu explore`` exhausts within 2 preemptions in the README's table."""

__all__ = ["EA", "ENTER", "H_YIELD", "PARAMS", "QUIRKS", "QUIRK_PARAMS", "QUIRK_SCENARIO",
           "SMALLEST",
           "SUITE"]
