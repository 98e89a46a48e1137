"""``memslot-delete-vs-enter``: QEMU deletes the L1 memslot that holds L2 vCPUs' register
blocks while L1 vCPUs hand them to H_ENTER_NESTED (B7).

The L1 was started with a DIMM (memslot 1, right above its boot memory), and its kernel
keeps two L2 vCPUs' ``hv_guest_state`` and ``pt_regs`` there; it releases the DIMM to QEMU
for unplugging while they still live there (a buggy or hostile L1). ``kvm_delete_memslot``
(emu/kvm/vm.py) marks the slot INVALID, waits for kvm->srcu readers, unpublishes it, waits
again and frees it. H_ENTER_NESTED copies the blocks in and back under kvm->srcu (since
v5.9), so each copy sees the slot whole or not at all (kernel v6.x,
``kvmhv_enter_nested_guest``):

| the slot disappears                  | H_ENTER_NESTED returns | L1's blocks              |
|--------------------------------------|------------------------|--------------------------|
| before the blocks are read in        | H_PARAMETER            | untouched: L2 never ran  |
| after, before they are written back  | H_AUTHORITY            | L2 ran; what it did is   |
|                                      |                        | lost to L1 (partly       |
|                                      |                        | written at most)         |
| after the write-back                 | the L2's exit          | L2's state               |

Each L1 vCPU accepts H_PARAMETER and H_AUTHORITY only in those cases (the slot no longer
visible; for H_PARAMETER its registers as it sent them), then stops running that vCPU.
Quirk ``enter-nested-no-srcu`` (v4.20 to v5.8) copies outside kvm->srcu, so the delete no
longer waits for the copy and frees the slot under it.
"""

from __future__ import annotations

from ...actors.guest_code import Hcall
from ...actors.l1_hypervisor import L1Hypervisor, L2Vcpu
from ...hw.memory import PAGE_SHIFT
from ...kvm.hvcall import H_AUTHORITY, H_PARAMETER
from ...kvm.vm import kvm_delete_memslot
from ...machines.nested import L1_PAGES
from ...sim import Machine
from .common import H_YIELD, boot_guest, machine, nested_scenario, other_group
from .teardown import load_pages, load_rounds, run_until_torn, store_pages

NAME = "memslot-delete-vs-enter"
QUIRK_SCENARIO = {"enter-nested-no-srcu": NAME}
QUIRK_PARAMS: dict[str, dict[str, object]] = {}

DIMM_SLOT, DIMM_GFN, DIMM_PAGES = 1, L1_PAGES, 2
"""The DIMM's memslot: its id, first L1 GFN and size in 64K pages (one per L2 vCPU)."""


@nested_scenario(NAME)
def memslot_delete_vs_enter(m: Machine, topology: str, moves: int) -> None:
    """L1 vCPU 0 runs L2 1.0 (blocks in boot memory), which stores to two pages. Then L1
    vCPU 1 (another TLB group) runs L2 1.2, whose blocks are in the DIMM, loading them and
    yielding twice, while vCPU 0 lets L2 1.0 load them, releases the DIMM and runs L2 1.1
    from it likewise; QEMU deletes the DIMM's memslot once released."""
    mach = machine(m, topology, moves)
    dimm = mach.kvm.add_memslot(DIMM_SLOT, DIMM_GFN, DIMM_PAGES)
    mapped, released = m.completion("guest 1 mapped"), m.completion("DIMM released")
    runners: list[L2Vcpu] = []

    def dimm_visible() -> object:
        return mach.kvm.gfn_to_memslot(DIMM_GFN)

    def read_failed(v: L2Vcpu, sent: tuple[int, ...]) -> str | None:
        if dimm_visible() is not None:
            return "the DIMM holding its blocks is still there"
        return None if tuple(v.regs) == sent else "L0 changed the registers L1 sent"

    def write_back_failed(v: L2Vcpu, sent: tuple[int, ...]) -> str | None:
        return None if dimm_visible() is None else \
            "the DIMM holding its blocks is still there"

    ends = {H_PARAMETER: read_failed, H_AUTHORITY: write_back_failed}

    async def l1(h: L1Hypervisor) -> None:
        if h.vcpu == 0:
            await boot_guest(h)
            runners.extend(h.l2_vcpu(1, 1 + i, load_rounds(),
                                     block=(DIMM_GFN + i) << PAGE_SHIFT) for i in range(2))
            v = h.l2_vcpu(1, 0, [*store_pages(), Hcall(H_YIELD), *load_pages()])
            await h.run(v)
            mapped.complete_all()
            await h.run(v)
            released.complete_all()
        await mapped.wait_for_completion()
        await run_until_torn(h, m, runners[h.vcpu], dimm_visible, ends)

    async def qemu() -> None:
        await released.wait_for_completion()
        await kvm_delete_memslot(mach.kvm, dimm)

    mach.l1_vcpu(l1, 0)
    mach.l1_vcpu(l1, other_group(mach))
    m.spawn("qemu", qemu, group="host")
