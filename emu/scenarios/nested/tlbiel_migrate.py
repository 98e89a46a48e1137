"""``tlbiel-migrate``: seed 002's story of a tlbiel that misses the TLB group a vCPU left."""

from __future__ import annotations

from ...actors.guest_code import Hcall, Ld, Map, St, Tlbiel
from ...actors.l1_hypervisor import L1Hypervisor
from ...actors.nested_cpu import TLBIEL_LEFT_BEHIND
from ...kvm.radix_entry import CHANGED_GROUP, FLUSHED_LEFT_GROUP
from ...sim import Machine
from ...sim.coverage import EVENT
from .common import EA, H_YIELD, boot_guest, machine, nested_scenario, other_group

QUIRK_SCENARIO = {"no-prev-cpu-flush": "tlbiel-migrate", "one-tlb-per-core": "tlbiel-migrate"}
QUIRK_PARAMS: dict[str, dict[str, object]] = {"one-tlb-per-core": {"topology": "smt8"}}


@nested_scenario("tlbiel-migrate")
def tlbiel_migrate(m: Machine, topology: str, moves: int) -> None:
    """Seed 002's story. L2 vCPU 0 touches EA on pCPU 0, its thread moves (to another core
    on smt4; to the other TLB group of the same core on smt8), it remaps EA and invalidates
    with tlbiel there, which leaves pCPU 0's TLB group untouched. Then L2 vCPU 1 runs on a
    thread of pCPU 0's group and loads EA: it must see the new page, which only the
    entry-time flush (prev_cpu, need_tlb_flush) guarantees."""
    mach = machine(m, topology, moves)
    m.goal("tlbiel-left-behind", "a vCPU that changed TLB group tlbiels, and the group it "
           "left is flushed on the next entry there",
           ("an L2 vCPU enters outside its prev_cpu's TLB group", (EVENT, CHANGED_GROUP)),
           ("it tlbiels while that group awaits its flush", (EVENT, TLBIEL_LEFT_BEHIND)),
           ("a vCPU entering that group flushes it", (EVENT, FLUSHED_LEFT_GROUP)))
    t = mach.topology
    away = other_group(mach)
    sibling = next(c for c in t.members(0) if c != 0)
    booted, remapped = m.completion("L1 booted"), m.completion("EA remapped")

    async def mover(h: L1Hypervisor) -> None:
        await boot_guest(h)
        booted.complete_all()
        v = h.l2_vcpu(1, 0, [Map(EA, 1 << 16), St(EA, 1), Ld(EA, 1), Hcall(H_YIELD),
                          Map(EA, 2 << 16), Tlbiel(EA), St(EA, 2)])
        await h.run(v)
        mach.migrate(mach.vcpus[0], away)
        await h.run(v)
        remapped.complete_all()

    async def reader(h: L1Hypervisor) -> None:
        await booted.wait_for_completion()
        await remapped.wait_for_completion()
        await h.run(h.l2_vcpu(1, 1, [Ld(EA, 2)]))

    mach.l1_vcpu(mover, 0)
    mach.l1_vcpu(reader, sibling)
