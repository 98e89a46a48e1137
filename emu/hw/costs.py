"""The cost model: virtual time charged for the work that dominates making a VM secure.

Hunts use ``UNIT`` (a nominal copy cost, nothing else), so the costs shape no interleaving
beyond the memory controller's copy window. The ESM study uses ``SEED_004``, calibrated on
seed 004's observation that a 100 GB VM whose every GFN the UV pages in takes about 7
minutes to become secure: 1,638,400 pages x (200 us copy + 56.35 us hcall) = 419.9 s. The
split between copy and hcall is an assumption (a 64 KiB copy with encryption at about
0.33 GB/s); only their sum is calibrated. ``migrate_ns`` is what INIT_DONE pays per page it
moves to a device page without a copy (migrate_vma on one page, an assumption too).
"""

from __future__ import annotations

import attrs


@attrs.frozen
class CostModel:
    copy_ns: int = 2_000
    """One 64 KiB page copy by the memory controller, en- or decryption included."""
    hcall_ns: int = 0
    """One H_SVM_* hcall round trip the UV issues (exit, dispatch, return)."""
    migrate_ns: int = 0
    """Moving one page to a device page with no copy (H_SVM_INIT_DONE's migration)."""


UNIT = CostModel()
SEED_004 = CostModel(copy_ns=200_000, hcall_ns=56_350, migrate_ns=2_000)
COST_MODELS = {"unit": UNIT, "seed-004": SEED_004}
