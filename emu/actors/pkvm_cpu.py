"""The CPUs of an arm64 pKVM machine, as the programs running on them see them.

A **host CPU** runs a host kernel program at EL1. Its loads and stores go through the host's
stage-1 (identity unless the program remapped a VA), then the host stage-2 through its TLB or
a hardware walk; a stage-2 fault traps to EL2 (``handle_host_mem_abort``), which idmaps the
largest empty aligned block and returns, and the access is retried. Its hypercalls are
``hvc #0`` with an SMCCC function id, decoded by ``handle_host_hcall``; what EL2 does on the
host's behalf without a hypercall of its own (the donations a VM's creation and teardown
make) runs on the CPU that asked (``el2``).

A **probe** is an access by a host that means harm (pKVM does not trust the host): the
hardware alone decides whether it reaches memory. It does not take the abort: on v6.16 a
host fault on a page it does not own ends in EL2's BUG_ON (hyp_panic, by design: the host
brought it on itself) and 7.1 injects an abort back into the host; either way the access
does not succeed, and whether it succeeds is all the invariant asks.

A **guest vCPU** of a non-protected VM runs on a CPU of its own: its accesses go through its
VM's stage-2 (its VMID's TLB entries or a walk); a fault exits to the host, whose KVM
shares the backing host page with the guest (``__pkvm_host_share_guest``, after topping up
the vCPU's memcache with pages the host owns) and re-enters.

Every access that reaches memory is checked against ownership (``PkvmMachine.reached``),
and every return code against what the scenario accepts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ..hw.arm64_stage2 import ADDRESS_SIZE_FAULT, PAGE_SHIFT, desc_valid, output_address
from ..hw.arm64_tlb import translate_el2, translate_stepwise
from ..pkvm.errno_base import EFAULT, EPERM
from ..pkvm.hyp_main import KVM_HOST_SMCCC_FUNC, handle_host_hcall
from ..pkvm.invariants import HOST, HYP
from ..pkvm.mem_protect import Hyp, guest_mem_access, host_mem_access, host_stage1_update
from ..pkvm.pgtable import KVM_PGTABLE_PROT_RWX
from ..sim import Machine
from .returncodes import ReturnCodes


class PkvmMachine(Protocol):
    """What the CPUs need of the machine they belong to (``machines/pkvm.py``)."""

    m: Machine
    hyp: Hyp
    codes: ReturnCodes

    def reached(self, actor: str, who: str | int, addr: int, pfn: int) -> None: ...



class HostCpu:
    """What a host program on one CPU can do."""

    def __init__(self, mach: PkvmMachine, index: int) -> None:
        self.mach = mach
        self.hyp = mach.hyp
        self.index = index
        self.name = f"cpu{index}"

    async def access(self, va: int, write: bool = False) -> int:
        """A load (store) at ``va``, retried through EL2's abort handling until it reaches
        memory: the pfn it reached; -EFAULT if the host's own stage-1 does not map it."""
        pfn = await host_mem_access(self.hyp, self.index, va, write)
        if pfn < 0:
            self.mach.codes.check(self.name, "access", [va], pfn, False)
        else:
            self.mach.reached(self.name, HOST, va, pfn)
        return pfn

    async def probe(self, va: int, write: bool = False) -> bool:
        """An access by a host that means harm: True if the hardware let it reach memory
        (through a valid stage-2 leaf, in the TLB or the tables), without the abort."""
        hyp = self.hyp
        ipa = hyp.host_s1.translate(va)
        if ipa is None:
            return False
        pgt = hyp.host_mmu.pgt
        desc, level, _ = await translate_stepwise(
            hyp.tlbs, hyp.mem, self.index, 0, pgt.pgd, pgt.start_level, pgt.ia_bits, ipa,
            self.mach.m.point)
        if level == ADDRESS_SIZE_FAULT or not desc_valid(desc):
            return False
        self.mach.reached(self.name, HOST, va, output_address(desc, level, ipa) >> PAGE_SHIFT)
        return True

    async def hcall(self, call: str, *args: int, accept: Any = None) -> int:
        """``hvc #0`` for ``call`` (an __kvm_host_smccc_func name) with x1.. = ``args``: the
        code the host's kvm_call_hyp_nvhe() gets back, checked against ``accept``."""
        rc = await self.hvc(call, *args)
        self.mach.codes.check(self.name, call, args, rc, False, accept)
        return rc

    async def hvc(self, call: str, *args: int) -> int:
        """``hcall`` for a handler that returns nothing (x1 comes back as it went in), so
        there is no code to check."""
        return await handle_host_hcall(self.hyp, self.index, KVM_HOST_SMCCC_FUNC(call), *args)

    async def el2(self, fn: Callable[..., Awaitable[int | None]], *args: int,
                  accept: Any = None) -> int:
        """EL2 runs the transition ``fn(hyp, *args)`` on this CPU for the host (a VM's
        creation donating its metadata pages, its teardown giving them back, a vCPU's
        init pinning its struct); a function that returns nothing counts as 0."""
        rc = await fn(self.hyp, *args) or 0
        self.mach.codes.check(self.name, fn.__name__, args, rc, False, accept)
        return rc

    async def el2_access(self, va: int) -> int:
        """EL2 on this CPU touches its VA ``va`` (a pinned vCPU struct, say): the pfn it
        reached through EL2's stage-1, or -EFAULT (EL2 faulting on its own access is a
        hyp_panic, which the caller reports)."""
        hyp = self.hyp
        pgt = hyp.pkvm_pgtable
        await self.mach.m.point(f"el2 access {va:#x}")
        desc, level, _ = translate_el2(hyp.tlbs, hyp.mem, self.index, pgt.pgd,
                                       pgt.start_level, pgt.ia_bits, va)
        if level == ADDRESS_SIZE_FAULT or not desc_valid(desc):
            self.mach.m.fail("hyp-panic", f"EL2 on {self.name} faulted on its own access at "
                             f"{va:#x}: nothing maps it at EL2")
            return -EFAULT
        pfn = output_address(desc, level, va) >> PAGE_SHIFT
        self.mach.reached(f"EL2 on {self.name}", HYP, va, pfn)
        return pfn

    async def remap(self, va: int, ipa: int | None) -> None:
        """The host kernel changes its own stage-1: ``va``'s page maps ``ipa``'s (None:
        unmapped, as vunmap does), under EL2's AT walks of other CPUs' aborts."""
        await host_stage1_update(self.hyp, va, ipa)


class GuestVcpu:
    """vCPU ``index`` of VM ``vm`` (a non-protected guest), on CPU ``cpu``; ``backing``
    maps the guest's frames to the host pages its memslots give them, ``memcache`` are host
    pages the host tops the vCPU's memcache up with."""

    def __init__(self, mach: PkvmMachine, vm: int, index: int, cpu: int,
                 backing: dict[int, int], memcache: list[int]) -> None:
        self.mach = mach
        self.hyp = mach.hyp
        self.vm = self.hyp.vms[vm]
        self.index = index
        self.cpu = HostCpu(mach, cpu)
        self.cpu.name = self.name = f"vm{vm}.vcpu{index}"
        self.backing = backing
        self.memcache = memcache
        self.loaded = False

    async def load(self) -> None:
        """vcpu_load: the host pins this vCPU to its CPU at EL2 (__pkvm_vcpu_load), and
        tops up its memcache (topup_hyp_memcache: pages the host still owns)."""
        host_mc = self.vm.vcpus[self.index].host_memcache
        while self.memcache:
            host_mc.push(self.memcache.pop())
        await self.cpu.hvc("__pkvm_vcpu_load", self.vm.handle, self.index)
        self.loaded = True

    async def put(self) -> None:
        await self.cpu.hvc("__pkvm_vcpu_put")
        self.loaded = False

    async def access(self, gfn: int, write: bool = False) -> int:
        """A guest load (store) of frame ``gfn``: the pfn it reached. A stage-2 fault exits
        to the host, which shares the backing page (or relaxes a read-only mapping) and
        re-enters."""
        if not self.loaded:
            await self.load()
        hyp = self.hyp
        while True:
            pfn = await guest_mem_access(hyp, self.cpu.index, self.vm, gfn, write)
            if pfn >= 0:
                self.mach.reached(self.name, self.vm.index, gfn << PAGE_SHIFT, pfn)
                return pfn
            if pfn == -EFAULT:
                await self.cpu.hcall("__pkvm_host_share_guest", self.backing[gfn], gfn, 1,
                                     KVM_PGTABLE_PROT_RWX)
            elif pfn == -EPERM:
                await self.cpu.hcall("__pkvm_host_relax_perms_guest", gfn,
                                     KVM_PGTABLE_PROT_RWX)
            await self.mach.m.yield_point(f"{self.name} re-enters the guest")
