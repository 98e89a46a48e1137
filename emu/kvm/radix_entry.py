"""The stale-TLB flush when a vCPU changes pCPU (book3s_hv.c, book3s_hv_p9_entry.c, v6.x).

A radix guest may invalidate with ``tlbiel``, which reaches only the executing thread's TLB
group. A vCPU that ran on pCPU P, moved, and then did a tlbiel leaves P's group with entries
the guest believes gone; the next vCPU of the same guest to run there would use them. L0
closes this on the entry path, per vCPU (``vcpu->arch.prev_cpu``) or, for an L2, per nested
vcpu_token (``nested->prev_cpu[token]``):

| step (entry on pCPU ``pcpu``)      | what it does                                          |
|------------------------------------|-------------------------------------------------------|
| kvmppc_prepare_radix_vcpu          | prev = prev_cpu; if prev != pcpu: if prev >= 0 and    |
|                                    | prev's TLB group != pcpu's: radix_flush_cpu(prev);    |
|                                    | if prev >= 0: IPI prev (do_migrate_away_vcpu, wait);  |
|                                    | prev_cpu = pcpu                                       |
| radix_flush_cpu(cpu)               | set need_tlb_flush for every thread of cpu's group;   |
|                                    | smp_mb; IPI (do_nothing, wait) each member whose      |
|                                    | per-CPU cpu_in_guest is this kvm                      |
| enter: cpu_in_guest = kvm, hwsync  | (the barrier pairing with radix_flush_cpu's smp_mb)   |
| check_need_tlb_flush               | own bit clear: nothing; else flush_guest_tlb if every |
|                                    | bit of the group is set (else ptesync); clear own bit |

The IPI's job is to make a thread already in the guest leave and come back through the
check. ``cpu_in_guest`` compares the L1's ``struct kvm``, so an L2 of that L1 counts too.

Releases. The model follows v6.x: per-thread bits and the per-CPU ``cpu_in_guest`` pointer
(Piggin's P9 entry rework, v5.16-5.17). Before it a single bit per TLB group was tested and
cleared by whichever thread entered first ("Fix TLB management on SMT8", 2021), and before
that fix the group was the whole core. The quirks re-create the historic forms:

- ``one-tlb-per-core`` (B10; the v4.20 code until the SMT8 fix, 77bbbc0cf848, v5.14): the
  kernel takes the whole core as one TLB group (cpu_first_thread_sibling), so on an SMT8
  core, whose TLB is two groups of interleaved threads, a move between the groups of one
  core skips the flush.
- ``no-prev-cpu-flush`` (the nested prev_cpu commit of the v4.20 nested series, seed 002:
  "This does for nested guests what L0 already did for its own guests"; commit id
  unconfirmed): an L2's entry does no prev_cpu tracking and no flush check at all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import attrs

from ..hw.cputhreads import Topology
from ..hw.tlb import Tlbs
from ..sim import coverage
from ..sim.coverage import EVENT

CHANGED_PCPU = "a vCPU enters on another pCPU than its prev_cpu"
CHANGED_GROUP = "a vCPU enters outside its prev_cpu's TLB group (radix_flush_cpu of that group)"
FLUSHED_LEFT_GROUP = "an entry flushes a TLB group a vCPU left (check_need_tlb_flush)"
"""Coverage events of the entry path (``sim.coverage``)."""

ENTRY_QUIRKS = {
    "one-tlb-per-core": "B10 (v4.20 to v5.13, fixed by 77bbbc0cf848 in v5.14): one TLB per "
                        "core assumed, so a move between the two TLB groups of an SMT8 core "
                        "is not flushed",
    "no-prev-cpu-flush": "before the nested prev_cpu commit (seed 002; same v4.20 pull as "
                         "H_ENTER_NESTED, so in no release): an L2's entry neither tracks "
                         "prev_cpu per vcpu_token nor checks need_tlb_flush",
}

Ipi = Callable[[int, str], Awaitable[None]]
"""smp_call_function_single(cpu, fn, wait=1): returns once ``cpu`` ran the handler."""


class FlushTarget(Protocol):
    """What owns a ``need_tlb_flush`` mask and the ``prev_cpu`` slots: ``kvm->arch`` (with
    ``vcpu->arch.prev_cpu`` by vCPU) or a ``kvm_nested_guest`` (``prev_cpu[vcpu_token]``)."""

    need_tlb_flush: set[int]
    prev_cpu: dict[int, int]
    """Absent: -1 (never ran)."""


@attrs.define(eq=False)
class RadixEntry:
    """The pCPU side L0 keeps for radix guests: the per-CPU ``cpu_in_guest`` pointers, the
    hardware TLBs, and how to interrupt a thread."""

    topology: Topology
    """The real cores and TLB groups."""
    tlbs: Tlbs
    ipi: Ipi
    quirks: tuple[str, ...] = ()
    cpu_in_guest: list[Any] = attrs.field(init=False)
    """Per CPU: the ``struct kvm`` whose guest (or nested guest) runs there, or None."""
    groups: Topology = attrs.field(init=False)
    """The TLB groups as the kernel believes them (the whole core under B10)."""

    def __attrs_post_init__(self) -> None:
        self.cpu_in_guest = [None] * self.topology.nr_cpus
        t = self.topology
        self.groups = Topology(t.cores, t.threads_per_core, False) \
            if "one-tlb-per-core" in self.quirks else t

    async def kvmppc_prepare_radix_vcpu(self, kvm: Any, owner: FlushTarget, vcpu: int,
                                        pcpu: int) -> None:
        """``owner``: kvm->arch or the nested guest; ``vcpu``: the vCPU, or for an L2 the
        nested_vcpu_id, whose ``prev_cpu`` slot is compared and updated."""
        prev = owner.prev_cpu.get(vcpu, -1)
        if prev == pcpu:
            return
        if prev >= 0:
            coverage.current.cover(EVENT, CHANGED_PCPU)
            if not self.groups.same_group(prev, pcpu):
                coverage.current.cover(EVENT, CHANGED_GROUP)
                await self.radix_flush_cpu(kvm, owner, prev)
            await self.ipi(prev, "do_migrate_away_vcpu")  # ptesync there: no TLB effect
        owner.prev_cpu[vcpu] = pcpu

    async def radix_flush_cpu(self, kvm: Any, owner: FlushTarget, cpu: int) -> None:
        members = self.groups.members(cpu)
        owner.need_tlb_flush.update(members)
        # smp_mb: the bits are visible before cpu_in_guest is read
        for i in members:
            if self.cpu_in_guest[i] is kvm:
                await self.ipi(i, "do_nothing")

    def check_need_tlb_flush(self, owner: FlushTarget, pcpu: int, lpid: int) -> bool:
        """On entry, after cpu_in_guest is set and LPIDR holds ``lpid``: whether this thread
        flushed its group's TLB of ``lpid``."""
        need = owner.need_tlb_flush
        if pcpu not in need:
            return False
        flushed = all(i in need for i in self.groups.members(pcpu))
        if flushed:
            coverage.current.cover(EVENT, FLUSHED_LEFT_GROUP)
            self.tlbs.flush_guest_tlb(pcpu, lpid)
        need.discard(pcpu)  # after the flush (else only a ptesync)
        return flushed
