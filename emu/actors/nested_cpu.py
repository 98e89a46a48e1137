"""An L2 vCPU running on a pCPU: the entry path, the hardware executing L2 code through the
TLB and the shadow table, the exits, and the interrupts that end a run.

One H_ENTER_NESTED is a loop in the L1 vCPU's thread (kvmhv_run_single_vcpu while it says
"resume guest"); each turn runs on whatever pCPU the thread is on now, so the host
scheduler can move it between turns:

| phase (one turn, on the pCPU)   | what happens                                             |
|---------------------------------|----------------------------------------------------------|
| entry                           | kvmppc_prepare_radix_vcpu (prev_cpu of the vcpu_token),  |
|                                 | cpu_in_guest = the L1's kvm, hwsync, check_need_tlb_flush |
| in the guest                    | one instruction per step; a TLB hit is used as cached,    |
|                                 | a miss walks the L2's process table, then the shadow      |
|                                 | table, and fills the TLB                                  |
| exit                            | an IPI or need_resched pending (EXTERNAL: resume); a      |
|                                 | shadow miss, a missing permission or R/C (HDSI: L0's      |
|                                 | nested fault handler, in the thread); an hcall or a       |
|                                 | program check (back to L1)                                |
| after exit                      | cpu_in_guest = NULL; the pending IPIs run; the thread     |
|                                 | handles the exit, may be rescheduled, and loops           |

Interrupts are hard-disabled in the guest phase only: an IPI to a pCPU in that phase waits
for the exit, which comes at the next instruction boundary (the guest never blocks); to any
other pCPU it runs at once. A turn always ends, so no IPI waits forever.

The L2's own page table (effective address -> L2 real address) is kept by the guest code
(``Map``); the model does not walk it from L2 memory. An L2 access to an unmapped effective
address is a program check: programs map before they touch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from ..hw.memory import PAGE_SHIFT, PAGE_SIZE
from ..hw.radix import PAGE_DIRTY, PAGE_WRITE
from ..kvm.hv_guest_state import PT_NIP
from ..kvm.radix_mmu import BOOK3S_INTERRUPT_H_DATA_STORAGE, hdsi_dsisr
from ..sim import coverage
from ..sim.coverage import EVENT
from ..sim.violations import About
from .guest_code import GuestCode, Hcall, Ld, Map, St, Tlbie, Tlbiel

if TYPE_CHECKING:
    from ..hw.memory import PhysicalMemory
    from ..hw.radix import RadixTree
    from ..hw.tlb import Tlbs
    from ..kvm.radix_entry import FlushTarget, RadixEntry
    from ..sim import Machine
    from ..sim.channel import Completion
    from .pcpu import PCpu

BOOK3S_INTERRUPT_EXTERNAL = 0x500
BOOK3S_INTERRUPT_PROGRAM = 0x700
BOOK3S_INTERRUPT_SYSCALL = 0xC00
BOOK3S_INTERRUPT_DATA_STORAGE = 0x300
"""The L2's own DSI vector, where L0 sends it when it queues a DSI for it: no guest code
lives there, so the L2 takes a program check and L1 sees it."""


@attrs.define
class Exit:
    """Why a turn ended: the interrupt vector, and for an HDSI the fault (the L2 real
    address in ``gpa``: ASDR, which the nested fault handler takes as fault_gpa)."""

    trap: int
    ea: int = 0
    gpa: int = 0
    dsisr: int = 0


@attrs.define(eq=False)
class Interrupts:
    """A pCPU's interrupt state: in the guest phase or not, IPIs waiting for the exit, and
    need_resched (the host scheduler wants the running thread off)."""

    guest_phase: bool = False
    pending: list[Completion] = attrs.Factory(list)
    need_resched: bool = False


async def smp_call_function_single(m: Machine, irqs: Interrupts, cpu: int, what: str) -> None:
    """Send ``what`` to ``cpu`` and wait until it ran there."""
    await m.point(f"IPI {what} to pcpu{cpu}")
    if irqs.guest_phase:
        done = m.completion(f"IPI {what} on pcpu{cpu}")
        irqs.pending.append(done)
        await done.wait_for_completion()


@attrs.define(eq=False)
class L2Turn:
    """What one turn needs: the machine's pieces and the running L2's state."""

    m: Machine
    entry: RadixEntry
    tlbs: Tlbs
    memory: PhysicalMemory
    code: GuestCode
    kvm: Any
    """The L1's ``struct kvm`` (what cpu_in_guest holds)."""
    owner: FlushTarget
    """The nested guest (need_tlb_flush, prev_cpu)."""
    lpid: int
    """The shadow LPID (LPIDR in the guest)."""
    shadow: RadixTree
    regs: list[int]
    proc: dict[int, int]
    """The L2's process-scoped table: effective page -> L2 real page."""
    token: int
    nested_flush: bool = True
    """False under ``no-prev-cpu-flush``: no prev_cpu tracking, no entry check."""
    name: str = "l2"


async def run_turn(t: L2Turn, pcpu: PCpu, irqs: Interrupts) -> Exit:
    """One entry, run and exit of the L2 on ``pcpu`` (called on that pCPU)."""
    cpu = pcpu.index
    if t.nested_flush:
        await t.entry.kvmppc_prepare_radix_vcpu(t.kvm, t.owner, t.token, cpu)
    t.entry.cpu_in_guest[cpu] = t.kvm
    irqs.guest_phase = True
    try:
        await t.m.point(f"hwsync: {t.name} enters on pcpu{cpu}")
        if t.nested_flush:
            t.entry.check_need_tlb_flush(t.owner, cpu, t.lpid)
        return await _execute(t, cpu, irqs)
    finally:
        irqs.guest_phase = False
        t.entry.cpu_in_guest[cpu] = None
        irqs.need_resched = False
        pending, irqs.pending = irqs.pending, []
        for done in pending:
            done.complete()


async def _execute(t: L2Turn, cpu: int, irqs: Interrupts) -> Exit:
    regs, m = t.regs, t.m
    while True:
        if irqs.pending or irqs.need_resched:
            return Exit(BOOK3S_INTERRUPT_EXTERNAL)
        insn = t.code.fetch(regs[PT_NIP])
        if insn is None:
            return Exit(BOOK3S_INTERRUPT_PROGRAM)
        await m.point(f"{t.name} {insn}")
        if isinstance(insn, Hcall):
            regs[3] = insn.nr
            regs[PT_NIP] += 4
            return Exit(BOOK3S_INTERRUPT_SYSCALL)
        if isinstance(insn, Map):
            t.proc[insn.ea >> PAGE_SHIFT] = insn.gpa >> PAGE_SHIFT
        elif isinstance(insn, Tlbiel):
            t.tlbs.tlbiel(cpu, t.lpid, gpa=insn.ea, prs=True)
            _cover_tlbiel(t, cpu)
        elif isinstance(insn, Tlbie):
            t.tlbs.tlbie(t.lpid, gpa=insn.ea, prs=True)
        else:
            fault = _access(t, cpu, insn)
            if fault is not None:
                return fault
        regs[PT_NIP] += 4


TLBIEL = "an L2 tlbiel"
TLBIEL_LEFT_BEHIND = "an L2 tlbiel while a TLB group its guest left awaits its flush"
"""Coverage events (``sim.coverage``): the second is seed 002's window, a tlbiel that cannot
reach the stale entries of the group the vCPU left."""


def _cover_tlbiel(t: L2Turn, cpu: int) -> None:
    if coverage.current.on:
        coverage.current.cover(EVENT, TLBIEL)
        need = t.owner.need_tlb_flush
        if need and cpu not in need:
            coverage.current.cover(EVENT, TLBIEL_LEFT_BEHIND)


def _access(t: L2Turn, cpu: int, insn: St | Ld) -> Exit | None:
    """A load or store: through the TLB, else the two tables. None when it completed."""
    ea, store = insn.ea, isinstance(insn, St)
    entry = t.tlbs.lookup(cpu, t.lpid, ea)
    if entry is None or (store and not (entry.prot & PAGE_WRITE and entry.rc & PAGE_DIRTY)):
        page = t.proc.get(ea >> PAGE_SHIFT)
        if page is None:
            return Exit(BOOK3S_INTERRUPT_PROGRAM, ea)
        gra = page << PAGE_SHIFT | (ea & (PAGE_SIZE - 1))
        leaf = t.shadow.find(gra)
        dsisr = hdsi_dsisr(leaf, store)
        if dsisr:
            return Exit(BOOK3S_INTERRUPT_H_DATA_STORAGE, ea, gra, dsisr)
        entry = t.tlbs.fill(cpu, t.lpid, leaf, ea=ea, gra=gra)
    frame = t.memory.normal.get(entry.pfn)
    if frame is None:
        t.m.fail("use-after-free", f"{t.name} on pcpu{cpu} {'stores to' if store else 'loads'} "
                 f"EA {ea:#x} through a translation to host pfn {entry.pfn}, which L0 freed")
        return None
    if store:
        frame.value = insn.value  # type: ignore[union-attr]
    else:
        t.regs[3] = frame.value
        if insn.expect is not None and frame.value != insn.expect:  # type: ignore[union-attr]
            # about the translation used: the TLB entries hw.tlb names for (group, lpid)
            stale = f"tlb:g{t.tlbs.topology.group_of(cpu)}:lpid{t.lpid}"
            t.m.fail("integrity", About(f"{t.name} on pcpu{cpu} loads {frame.value} from EA "
                                        f"{ea:#x}, but last stored {insn.expect} there",  # type: ignore[union-attr]
                                        stale))
    return None

