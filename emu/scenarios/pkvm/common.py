"""What every pKVM scenario shares: the suite's quirks, its declaration, and the machine."""

from __future__ import annotations

from typing import Any

from ...machines.pkvm import PkvmMachine
from ...sim import Machine, scenario

QUIRKS = {
    "pgd-refcount": "B11 (v5.13-v5.14, fixed by 1d58a17ef545): the host stage-2's "
                    "concatenated PGD is one high-order page whose tail pages are not "
                    "refcounted on their own, so a put can free one while it is in use",
    "abort-bug-on": "B12 (v5.13-v6.9, fixed by 02949f36bc7b): the host abort path BUGs when "
                    "__get_fault_info's AT walk fails because the host's stage-1 changed",
    "check-apply-unlocked": "design (no release): a transition checks and applies under "
                            "separate holds of its locks",
    "set-owner-no-tlbi": "design (no release): annotating a valid host stage-2 entry "
                         "without the TLBI, so a CPU keeps the old translation",
    "unshare-ignores-pin": "design (no release; pins and -EBUSY came together, v6.2): "
                           "__pkvm_host_unshare_hyp unshares a page EL2 has pinned",
}


def pkvm_scenario(name: str, **params: Any):
    """Declare a pKVM scenario with the suite's quirks (all five, so ``--kernel`` keys it)."""
    return scenario(name, params=params, quirks=QUIRKS, max_steps=20_000)


def machine(m: Machine, **kw: Any) -> PkvmMachine:
    """The suite's machine: every call must return 0 unless the scenario says otherwise."""
    accept = {"*": {0}, **kw.pop("accept", {})}
    return PkvmMachine(m, accept=accept, **kw)
