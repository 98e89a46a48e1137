"""``share-unshare-pin``: a page shared with EL2 and pinned there, fought over by the host."""

from __future__ import annotations

from ...actors.pkvm_cpu import HostCpu
from ...actors.returncodes import RETURN_CODES
from ...pkvm.errno_base import EBUSY, EPERM
from ...pkvm.invariants import PKVM_TRANSITION
from ...pkvm.mem_protect import (
    __pkvm_host_donate_hyp,
    __pkvm_hyp_donate_host,
    hyp_pin_shared_mem,
    hyp_unpin_shared_mem,
)
from ...sim import Machine
from .common import machine, pkvm_scenario

QUIRK_SCENARIO = {"unshare-ignores-pin": "share-unshare-pin",
                  "check-apply-unlocked": "share-unshare-pin"}
QUIRK_PARAMS: dict[str, dict[str, object]] = {}
PINNED = "window: the unshare met the pin (-EBUSY)"
VCPU_SIZE = 0x100
"""The bytes of the host's vCPU struct EL2 pins (within one page)."""


@pkvm_scenario("share-unshare-pin")
def share_unshare_pin(m: Machine) -> None:
    """CPU0 shares page V (its vCPU struct) with the hypervisor; EL2 pins it (as
    __pkvm_init_vcpu pins the host vCPU), uses it, unpins it, and CPU0 unshares it. CPU1
    tries to take V back meanwhile: refused while V is not shared (-EPERM) or pinned
    (-EBUSY). CPU2 tries to donate V to the hypervisor: refused while it is shared, and
    given back if it went through. Whatever the order, EL2 may use V only while it
    borrows it, and every page state stays one the release allows."""
    mach = machine(m, host_cpus=3, accept={
        "__pkvm_host_share_hyp": {0, -EPERM},
        "__pkvm_host_unshare_hyp": {0, -EPERM, -EBUSY},
        "hyp_pin_shared_mem": {0, -EPERM},
        "__pkvm_host_donate_hyp": {0, -EPERM}})
    mach.require("has_pins", "hyp_pin_shared_mem (pins)")
    m.goal("unshare-meets-pin", "the host unsharing a page EL2 has pinned",
           ("V is shared with EL2", (PKVM_TRANSITION, "A -> B")),
           ("EL2 pins it", (PKVM_TRANSITION, "B -> B pinned")),
           ("an unshare meets the pin (-EBUSY)", (RETURN_CODES, "__pkvm_host_unshare_hyp|-EBUSY")))
    m.goal("donate-meets-share", "the host donating a page it has shared with EL2",
           ("V is shared with EL2", (PKVM_TRANSITION, "A -> B")),
           ("a donation of V is refused (-EPERM)",
            (RETURN_CODES, "__pkvm_host_donate_hyp|-EPERM")))
    v = mach.page(0)

    async def owner(cpu: HostCpu) -> None:
        if await cpu.hcall("__pkvm_host_share_hyp", v >> 12):
            return
        if not await cpu.el2(hyp_pin_shared_mem, v, v + VCPU_SIZE):
            await cpu.el2_access(v)
            await cpu.el2(hyp_unpin_shared_mem, v, v + VCPU_SIZE)
        await cpu.hcall("__pkvm_host_unshare_hyp", v >> 12)

    async def taker(cpu: HostCpu) -> None:
        if await cpu.hcall("__pkvm_host_unshare_hyp", v >> 12) == -EBUSY:
            m.note(PINNED)

    async def donor(cpu: HostCpu) -> None:
        if not await cpu.el2(__pkvm_host_donate_hyp, v >> 12, 1):
            await cpu.el2(__pkvm_hyp_donate_host, v >> 12, 1)

    mach.host(0, owner)
    mach.host(1, taker)
    mach.host(2, donor)
