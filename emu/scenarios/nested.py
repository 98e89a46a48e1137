"""POWER nested virtualisation scenarios (seed 002): an L1 hypervisor on L0, its L2 guests
run with H_ENTER_NESTED on pCPUs whose TLBs the vCPU threads move between.

Every scenario takes ``topology`` (smt4: POWER9 SMT4, the TLB is the core's; smt8:
POWER9 SMT8, two TLB groups of interleaved threads per core), ``moves`` (migrations the
host scheduler makes at points the schedule picks) and accepts every nested quirk;
``QUIRK_SCENARIO`` names the scenario that finds each.
"""

from __future__ import annotations

from ..actors.guest_code import Hcall, Ld, Map, St, Tlbiel
from ..actors.l1_hypervisor import L1Hypervisor
from ..actors.nested_cpu import BOOK3S_INTERRUPT_SYSCALL
from ..kvm.hvcall import H_SUCCESS
from ..kvm.nested import NESTED_QUIRKS
from ..kvm.radix_entry import ENTRY_QUIRKS
from ..kvm.radix_mmu import BOOK3S_INTERRUPT_H_DATA_STORAGE
from ..machines.nested import TOPOLOGIES, NestedMachine
from ..sim import Machine, Param, scenario

SUITE = "POWER nested virtualisation: seed 002 (L1 hypervisor, H_ENTER_NESTED, TLB flushes)"
"""What ``emu list`` says of the suite (entry point in pyproject.toml)."""

QUIRKS = {**NESTED_QUIRKS, **ENTRY_QUIRKS}
QUIRK_SCENARIO = {
    "no-prev-cpu-flush": "tlbiel-migrate",
    "one-tlb-per-core": "tlbiel-migrate",
}
QUIRK_PARAMS = {"one-tlb-per-core": {"topology": "smt8"}}

EA = 0xC000_0000_0001_0000
"""An effective address in the L2 kernel's quadrant."""
H_YIELD = 0x44
"""An hcall the L2 makes to give its vCPU back to L1 mid-program (H_CONFER's cousin)."""
ENTER = {BOOK3S_INTERRUPT_SYSCALL, BOOK3S_INTERRUPT_H_DATA_STORAGE}
"""What H_ENTER_NESTED returns here: the L2's hcall, or a fault L1 must resolve."""
PARAMS = {
    "topology": Param("smt4", "pCPU topology", choices=tuple(TOPOLOGIES)),
    "moves": Param(0, "random vCPU migrations by the host scheduler", minimum=0, maximum=64),
}


def nested_scenario(name: str):
    return scenario(name, params=PARAMS, quirks=QUIRKS, max_steps=20_000)


def machine(m: Machine, topology: str, moves: int, **accept: set[int]) -> NestedMachine:
    return NestedMachine(m, topology=topology, cores=2 if topology == "smt4" else 1,
                         quirks=m.quirks, moves=moves,
                         accept={"*": {H_SUCCESS}, "H_ENTER_NESTED": ENTER, **accept})


def other_group(mach: NestedMachine) -> int:
    """A pCPU outside pCPU 0's TLB group: the other group of the core on smt8, the next
    core on smt4."""
    t = mach.topology
    return 1 if t.split_tlb else t.threads_per_core


async def boot_guest(h: L1Hypervisor, lpid: int = 1) -> None:
    await h.boot()
    h.create_guest(lpid)


@nested_scenario("nested-boot")
def nested_boot(m: Machine, topology: str, moves: int) -> None:
    """Two L1 vCPUs (in different TLB groups) each run one vCPU of L2 guest 1, which they
    create together: it maps a page of its own, stores and loads it back. Every fault is
    L1's first touch of the page."""
    mach = machine(m, topology, moves)
    booted = m.completion("L1 booted")

    async def l1(h: L1Hypervisor) -> None:
        if h.vcpu == 0:
            await boot_guest(h)
            booted.complete_all()
        await booted.wait_for_completion()
        ea, gpa = EA + (h.vcpu << 16), (h.vcpu + 1) << 16
        v = h.l2_vcpu(1, h.vcpu, [Map(ea, gpa), St(ea, 10 + h.vcpu), Ld(ea, 10 + h.vcpu)])
        await h.run(v)  # anything but the program's last H_CEDE is a return-code finding

    mach.l1_vcpu(l1, 0)
    mach.l1_vcpu(l1, other_group(mach))


@nested_scenario("tlbiel-migrate")
def tlbiel_migrate(m: Machine, topology: str, moves: int) -> None:
    """Seed 002's story. L2 vCPU 0 touches EA on pCPU 0, its thread moves (to another core
    on smt4; to the other TLB group of the same core on smt8), it remaps EA and invalidates
    with tlbiel there, which leaves pCPU 0's TLB group untouched. Then L2 vCPU 1 runs on a
    thread of pCPU 0's group and loads EA: it must see the new page, which only the
    entry-time flush (prev_cpu, need_tlb_flush) guarantees."""
    mach = machine(m, topology, moves)
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
