"""``l1-unmap-vs-l2-fault``: the host moves an L1 page that backs an L2 page while an L2
vCPU faults on it.

The host (QEMU's process, under kcompactd's proactive compaction: ``migrate_pages`` in
emu/kvm/mm.py) moves L1 pages at points the schedule picks. Its MMU notifier
(``kvm_mmu_notifier_invalidate_range_start``) unmaps the L1 page from L0's table for L1,
walks the page's nested rmap (``kvmhv_remove_nest_rmap_range``) to unmap every shadow PTE
made of it, and bumps ``mmu_invalidate_seq``. The L2's next access to its page faults, and
L0's nested fault snapshots the sequence, looks the L1 page up in L0's table (faulting it
in again through ``kvmppc_book3s_instantiate_page``, which waits on the migration entry
while the copy runs), composes the shadow PTE and inserts it under mmu_lock only if no
invalidation ran since the snapshot (``kvmppc_create_pte``'s ``mmu_invalidate_retry``:
-EAGAIN, the L2 faults again).

The window is a notifier between the lookup and the insert. Any notifier there makes the
insert retry (the sequence is per VM); one for the faulting page itself, after
instantiate_page dropped its page reference (a page with a reference does not move), is
the one the retry exists for: without it the shadow PTE would map the host page the data
just left, which no rmap walk reaches any more.

| actor          | does                                                                      |
|----------------|---------------------------------------------------------------------------|
| L1 vCPU 0      | boots, runs L2 vCPU 1.0: stores to its page S0; once S1 holds data too,   |
|                | ``ROUNDS`` times loads S0 back (checked) and stores the next value        |
| L1 vCPU 1      | (another TLB group) the same with L2 vCPU 1.1 on page S1                  |
| qemu (host)    | once both pages hold data, ``MIGRATIONS`` times sleeps, then moves the L1 |
|                | page behind S0, S1, S0, ... (one a fault holds a reference to stays put)  |

The loads check that the L2 sees its data through every move: the copy is in the new
page, and a shadow PTE or TLB entry to the old one would read a stale or freed frame.
"""

from __future__ import annotations

from ...actors.guest_code import Hcall, Ld, Map, St
from ...actors.l1_hypervisor import L1Hypervisor
from ...hw.memory import PAGE_SHIFT
from ...kvm.mm import migrate_pages
from ...sim import Machine
from .common import EA, H_YIELD, boot_guest, machine, nested_scenario, other_group

QUIRK_SCENARIO: dict[str, str] = {}
QUIRK_PARAMS: dict[str, dict[str, object]] = {}

ROUNDS = 6
"""Load-then-store rounds of each L2 vCPU after its first store."""
PASS_NS = 20_000
"""Virtual time the host sleeps before each move (kcompactd between proactive compaction
passes): firing its timer is a scheduling choice."""
MIGRATIONS = 8
"""Page moves the host makes."""
PAGES = (1 << PAGE_SHIFT, 2 << PAGE_SHIFT)
"""L2 real pages S0 (vCPU 1.0's) and S1 (vCPU 1.1's) of nested guest 1."""
MOVE = "qemu page move"
"""The call name under which each move's result is checked: what the MMU notifiers
returned (0: the nested MMU's notifier cannot fail)."""


@nested_scenario("l1-unmap-vs-l2-fault")
def l1_unmap_vs_l2_fault(m: Machine, topology: str, moves: int) -> None:
    """Two L1 vCPUs in different TLB groups each run an L2 vCPU of guest 1 that stores to
    its page and loads it back, round after round, while the host moves the L1 pages
    behind those pages (see the module notes)."""
    mach = machine(m, topology, moves, **{MOVE: {0}})
    booted = m.completion("L1 booted")
    populated = [m.completion(f"L2 page {gpa:#x} populated") for gpa in PAGES]

    async def runner(h: L1Hypervisor) -> None:
        index = 0 if h.vcpu == 0 else 1
        if index == 0:
            await boot_guest(h)
            booted.complete_all()
        await booted.wait_for_completion()
        gpa, base = PAGES[index], 10 * (index + 1)
        ea = EA + gpa
        rounds = [insn for r in range(1, ROUNDS + 1)
                  for insn in (Ld(ea, base + r - 1), St(ea, base + r))]
        v = h.l2_vcpu(1, index, [Map(ea, gpa), St(ea, base), Hcall(H_YIELD), *rounds,
                                 Ld(ea, base + ROUNDS)])
        await h.run(v)
        populated[index].complete_all()
        for done in populated:  # both pages hold data: the rounds and the moves begin
            await done.wait_for_completion()
        await h.run(v)

    async def qemu() -> None:
        kvm = mach.kvm
        for done in populated:
            await done.wait_for_completion()
        for i in range(MIGRATIONS):
            gfn = mach.kernel.backing(1, PAGES[i % len(PAGES)]) >> PAGE_SHIFT
            await m.sleep(PASS_NS)
            _, rc = await migrate_pages(kvm, kvm.gfn_to_hva(gfn), mach.costs.copy_ns)
            mach.codes.check("qemu", MOVE, [gfn], rc, False)

    mach.l1_vcpu(runner, 0)
    mach.l1_vcpu(runner, other_group(mach))
    m.spawn("qemu", qemu, group="host")
