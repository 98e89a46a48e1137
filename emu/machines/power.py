"""The POWER machine every platform extends: physical memory, pCPUs, vCPUs running guest
programs, QEMU, and the L0 KVM, with the return codes the scenario accepts.

vCPUs are placed on pCPUs round robin (``pcpus``; 0: a pCPU each). A platform plugs in its
own guest handle (``guest``) and its VMs; the secure-VM machine (``svm.py``) is one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from ..actors.guest_memory import GuestMemory
from ..actors.host import Host
from ..actors.pcpu import PCpu
from ..actors.returncodes import AcceptSpec, ReturnCodes
from ..actors.vcpu import Guest, GuestProgram, VCpu
from ..hw.costs import UNIT, CostModel
from ..hw.memory import PhysicalMemory
from ..kvm.hv import Hypervisor
from ..kvm.vm import KVM
from ..sim import Machine
from ..sim.channel import Completion

HostProgram = Callable[[Host], Awaitable[None]]


class PowerMachine:
    def __init__(self, m: Machine, *, costs: CostModel = UNIT, pcpus: int = 0,
                 accept: Mapping[str, AcceptSpec] | None = None) -> None:
        """``accept``: the return codes the scenario accepts, call by call (``ReturnCodes``);
        None, the default of a hand-built machine: its programs check their own codes."""
        self.m = m
        self.codes = ReturnCodes(m, accept)
        self.memory = PhysicalMemory()
        self.costs = costs
        self.hv = Hypervisor(m)
        self.vcpus: list[VCpu] = []
        self.pcpus: list[PCpu] = []
        self._npcpus = pcpus
        self._guest_memory: dict[int, GuestMemory] = {}

    def vcpu(self, kvm: KVM, program: GuestProgram, start: Completion | None = None) -> VCpu:
        """A vCPU running ``program`` on the next pCPU (round robin over ``pcpus``; a new
        one each if 0); with ``start`` it enters the guest only then."""
        n = len(self.vcpus)
        if not self._npcpus or n < self._npcpus:
            self.pcpus.append(PCpu(self.m, n))
        pcpu = self.pcpus[n % len(self.pcpus)]
        vcpu = VCpu(self, kvm, sum(v.kvm is kvm for v in self.vcpus), program, pcpu, start)
        self.vcpus.append(vcpu)
        self.m.spawn(vcpu.name, vcpu.run, group=f"vm{kvm.lpid}")
        return vcpu

    def guest(self, vcpu: VCpu) -> Guest:
        """The handle a vCPU's guest program gets."""
        return Guest(vcpu)

    def host(self, program: HostProgram, name: str = "qemu") -> None:
        host = Host(self)

        async def run() -> None:
            await program(host)

        self.m.spawn(name, run, group="host")

    def guest_memory(self, lpid: int) -> GuestMemory:
        memory = self._guest_memory.get(lpid)
        if memory is None:
            memory = self._guest_memory[lpid] = GuestMemory(lpid=lpid)
        return memory
