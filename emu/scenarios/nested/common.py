"""What every nested scenario shares: its parameters and quirks, the machine it builds, the
L1 boot, and the constants the L2 programs use."""

from __future__ import annotations

from ...actors.l1_hypervisor import L1Hypervisor
from ...actors.nested_cpu import BOOK3S_INTERRUPT_SYSCALL
from ...kvm.hvcall import H_SUCCESS
from ...kvm.nested import NESTED_QUIRKS
from ...kvm.radix_entry import ENTRY_QUIRKS
from ...kvm.radix_mmu import BOOK3S_INTERRUPT_H_DATA_STORAGE
from ...machines.nested import TOPOLOGIES, NestedMachine
from ...sim import Machine, Param, scenario

QUIRKS = {**NESTED_QUIRKS, **ENTRY_QUIRKS}

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


def nested_scenario(name: str, **params: Param):
    """Declare a nested scenario: the suite's parameters (and ``params``, its own), quirks
    and step budget."""
    return scenario(name, params={**PARAMS, **params}, quirks=QUIRKS, max_steps=20_000)


def machine(m: Machine, topology: str, moves: int, *, l1_big_endian: bool = False,
            **accept: set[int]) -> NestedMachine:
    return NestedMachine(m, topology=topology, cores=2 if topology == "smt4" else 1,
                         quirks=m.quirks, moves=moves, l1_big_endian=l1_big_endian,
                         accept={"*": {H_SUCCESS}, "H_ENTER_NESTED": ENTER, **accept})


def other_group(mach: NestedMachine) -> int:
    """A pCPU outside pCPU 0's TLB group: the other group of the core on smt8, the next
    core on smt4."""
    t = mach.topology
    return 1 if t.split_tlb else t.threads_per_core


async def boot_guest(h: L1Hypervisor, lpid: int = 1) -> None:
    await h.boot()
    h.create_guest(lpid)
