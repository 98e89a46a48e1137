"""What a vCPU, its guest handle and QEMU need of the machine they run on.

A Protocol, so actors name the machine's interface without importing a machine (machines
assemble actors: layers point down only). ``emu.machines.power.PowerMachine`` implements
it; a platform's machine plugs its own guest handle in through ``guest``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..hw.costs import CostModel
    from ..kvm.hv import Hypervisor
    from ..sim import Machine
    from .guest_memory import GuestMemory
    from .returncodes import ReturnCodes
    from .vcpu import Guest, VCpu


class Platform(Protocol):
    m: Machine
    hv: Hypervisor
    """The L0 KVM."""
    codes: ReturnCodes
    costs: CostModel

    def guest_memory(self, lpid: int) -> GuestMemory:
        """The guest's books of its own memory, shared by its vCPUs and QEMU."""

    def guest(self, vcpu: VCpu) -> Guest:
        """The handle ``vcpu``'s guest program gets: the platform's guest."""
