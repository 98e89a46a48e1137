"""The arm64 pKVM machine: host CPUs at EL1 under EL2's ownership tracking, and the vCPUs
of non-protected guests on CPUs of their own.

Assembly: EL2's state as ``__pkvm_init`` and ``fix_host_ownership`` leave it (``pkvm.Hyp``:
the host stage-2, lazily idmapped, over one memblock of ``memory_pages`` pages with MMIO
below it; the hypervisor's own pages at the top of memory, annotated away from the host;
EL2's stage-1; ``hyp_vmemmap``; every CPU's TLB; the VMs), a ``HostCpu`` per host CPU and a
``GuestVcpu`` per guest vCPU (``actors/pkvm_cpu.py``).

Checks: the invariants of ``pkvm/invariants.py`` (legal state combinations over host, hyp,
guests and FF-A; annotation <=> host NOPAGE; EL2 mappings; table-page refcounts; no stale
TLB entry), each keyed on the version counters of what it reads; every access that reaches
memory is judged at that moment (``reached``: ``illegal-access`` if the accessor neither
owns nor borrows the page); a WARN_ON after a passed check and a BUG_ON are reported by the
model itself; every return code a program receives is checked against ``accept``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from ..actors.pkvm_cpu import GuestVcpu, HostCpu
from ..actors.returncodes import AcceptSpec, ReturnCodes
from ..errors import Unsupported
from ..hw.arm64_stage2 import PAGE_SHIFT
from ..pkvm import invariants
from ..pkvm.api import ownership_table
from ..pkvm.errno_base import code_name
from ..pkvm.invariants import HOST, HYP
from ..pkvm.mem_protect import Hyp
from ..pkvm.releases import RELEASES, behaviour
from ..sim import Machine

HostProgram = Callable[[HostCpu], Awaitable[None]]
GuestProgram = Callable[[GuestVcpu], Awaitable[None]]


class PkvmMachine:
    def __init__(self, m: Machine, *, host_cpus: int = 2, vms: int = 0, vcpus: int = 1,
                 memory_pages: int = 64, mmio_pages: int = 16,
                 accept: Mapping[str, AcceptSpec] | None = None) -> None:
        """``vms`` guests of ``vcpus`` vCPUs each; each vCPU gets a CPU after the host's."""
        self.m = m
        self.host_cpus = host_cpus
        self.vcpus_per_vm = vcpus
        self.hyp = Hyp(m, memory_pages=memory_pages, mmio_pages=mmio_pages,
                       nr_cpus=host_cpus + vms * vcpus, nr_vms=vms, nr_vcpus=vcpus)
        self.codes = ReturnCodes(m, accept, lambda call, rc: code_name(rc))
        self.accesses = 0
        """Accesses that reached memory (each one judged)."""
        self.settling = 0
        """Of those, accesses through a translation a transition under way was taking away
        (judged by the stale-TLB invariant once it ends)."""
        invariants.register(m, self.hyp)
        m.view("ownership", lambda: ownership_table(self.hyp))

    def require(self, feature: str, what: str) -> None:
        """The scenario needs ``what``, which releases have when their ``Behaviour`` sets
        ``feature``: refuse to build on a release without it (``Unsupported``, not a
        finding: a suite hunt skips the scenario and says why)."""
        if not getattr(self.hyp.behaviour, feature):
            first = next((r for r in RELEASES if getattr(behaviour(r), feature)), None)
            since = f" (it came in {first})" if first else ""
            raise Unsupported(f"this scenario needs {what}, which {self.m.release} does not "
                           f"have{since}")

    def page(self, n: int) -> int:
        """The physical address of the host's ``n``-th page of memory (the host's stage-1 is
        an identity map, so it is also the VA a host program uses)."""
        pfns = self.hyp.host_pfns()
        if not 0 <= n < len(pfns):
            raise ValueError(f"the host owns {len(pfns)} pages of memory; page {n} is not one")
        return pfns[n] << PAGE_SHIFT

    def host(self, cpu: int, program: HostProgram) -> HostCpu:
        """Run ``program`` on host CPU ``cpu``."""
        handle = HostCpu(self, cpu)
        self.m.spawn(handle.name, program, handle, group="host")
        return handle

    def guest(self, vm: int, vcpu: int, program: GuestProgram, backing: dict[int, int],
              memcache: list[int]) -> GuestVcpu:
        """Run ``program`` on vCPU ``vcpu`` of VM ``vm``: its frames are backed by
        ``backing`` (gfn -> host pfn) and the host tops its memcache up with ``memcache``."""
        cpu = self.host_cpus + vm * self.vcpus_per_vm + vcpu
        handle = GuestVcpu(self, vm, vcpu, cpu, backing, memcache)
        self.m.spawn(handle.name, program, handle, group=f"vm{vm}")
        return handle

    def reached(self, actor: str, who: str | int, addr: int, pfn: int) -> None:
        """An access by ``actor`` (as ``who``: the host, EL2 or a VM index) at ``addr``
        reached page ``pfn``: it must be one ``who`` owns or borrows now. While a transition
        holds its locks, a translation it is taking away may still be used until its TLBI
        (architecturally so, and harmless: the page changes hands only when the transition
        ends); what is left after it ends is the stale-TLB invariant's to judge."""
        self.accesses += 1
        hyp = self.hyp
        if who in (HOST, HYP):
            allowed = invariants.may_access(hyp, who, pfn)
        else:
            allowed = invariants.may_access(hyp, who, addr >> PAGE_SHIFT, pfn)
        if not allowed and (hyp.host_mmu.lock.is_locked() or hyp.pkvm_pgd_lock.is_locked()
                            or (who not in (HOST, HYP) and hyp.vms[who].lock.is_locked())):
            self.settling += 1
            return
        if not allowed:
            self.m.fail("illegal-access",
                        f"{actor}'s access at {addr:#x} reached pfn {pfn:#x}, which it "
                        "neither owns nor borrows")
