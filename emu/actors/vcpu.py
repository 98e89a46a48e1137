"""vCPUs and the handle their guest programs use.

A vCPU actor runs its guest program, an ``async def program(g: Guest)``, and does everything
a CPU does on its pCPU (``pcpu.py``): it enters the guest the way ``kvmppc_vcpu_run_hv`` does
(count itself in ``vcpus_running``, full barrier, set the MMU up under ``mmu_setup_lock`` if
it is not ready), and each guest load, store, hcall and ucall runs there. The program reads and
writes guest memory, issues hcalls and ucalls by name or number with raw integer arguments,
and gets raw return codes back; a bad argument gets the kernel's code, never an exception.

Memory of a secure VM is reached through the Ultravisor (a first touch of a paged-out page
pages it back in); memory of a normal VM through the HV's page tables. The guest keeps what
it last wrote to each GFN and which GFNs it shared itself: reading anything else back is an
integrity violation, and a secret landing in memory the HV can read is a confidentiality one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import attrs

from ..kvm import hvcall
from ..kvm.hvcall import H_FUNCTION, H_SUCCESS, PAGE_SHIFT, U_SUCCESS
from .ultravisor import U_PARAMETER

if TYPE_CHECKING:
    from ..kvm.vm import KVM
    from ..scenarios.svm_machine import SvmMachine
    from ..sim.channel import Completion
    from .pcpu import PCpu

GuestProgram = Callable[["Guest"], Awaitable[None]]


def _number(call: int | str) -> int:
    if isinstance(call, str):
        value = getattr(hvcall, call, None)
        if not isinstance(value, int):
            raise ValueError(f"no hcall or ucall named {call!r}")
        return value
    return call


@attrs.define(eq=False)
class GuestMemory:
    """What the guest believes of its own memory (shared by its vCPUs)."""

    expected: dict[int, int] = attrs.Factory(dict)
    """GFN -> the value last written (absent: undefined, e.g. after a share)."""
    shared: dict[int, bool] = attrs.Factory(dict)
    """GFNs the guest itself asked to share."""
    sharing: dict[int, int] = attrs.Factory(dict)
    """GFNs with a share in flight: their content is undefined from the moment a share
    starts (it drops the secure content, even if the share then fails)."""

    def forget(self, gfn: int) -> None:
        self.expected.pop(gfn, None)

@attrs.define(eq=False)
class VCpu:
    machine: SvmMachine
    kvm: KVM
    index: int
    program: GuestProgram
    pcpu: PCpu
    start: Completion | None = None
    """If set, the vCPU enters the guest (KVM_RUN) only once this completes."""
    in_guest: bool = False

    @property
    def name(self) -> str:
        return f"vm{self.kvm.lpid}.vcpu{self.index}"

    async def run(self) -> None:
        if self.start is not None:
            await self.start.wait_for_completion()
        await self.on_cpu(self._enter)
        try:
            await self.program(Guest(self))
        finally:
            self.in_guest = False
            self.kvm.vcpus_running -= 1

    async def on_cpu(self, op: Callable[[], Awaitable]):
        return await self.pcpu.execute(self.name, op)

    async def _enter(self) -> None:
        """KVM_RUN's entry path, on the pCPU."""
        kvm, m = self.kvm, self.machine.m
        kvm.vcpus_running += 1  # atomic_inc
        await m.point("smp_mb (vcpus_running vs mmu_ready)")
        if not kvm.mmu_ready:
            await kvm.mmu_setup_lock.lock()
            if not kvm.mmu_ready:
                kvm.mmu_ready = 1  # kvmhv_setup_mmu
            kvm.mmu_setup_lock.unlock()
        self.in_guest = True


class Guest:
    """What a guest program can do on its vCPU."""

    def __init__(self, vcpu: VCpu) -> None:
        self._vcpu = vcpu
        self._kvm = vcpu.kvm
        self._machine = vcpu.machine
        self.memory = vcpu.machine.guest_memory(vcpu.kvm.lpid)

    @property
    def lpid(self) -> int:
        return self._kvm.lpid

    @property
    def vcpu(self) -> int:
        return self._vcpu.index

    # ------------------------------------------------------------------ calls
    async def hcall(self, call: int | str, *args: int) -> int:
        """A raw hcall from the guest (never with MSR_S: only the UV's own hcalls carry
        it)."""
        nr, hv = _number(call), self._machine.hv
        return await self._vcpu.on_cpu(lambda: hv.hcall(self.lpid, nr, *args, msr_s=False))

    async def uv_hcall(self, call: int | str, *args: int) -> int:
        """Have the Ultravisor issue an H_SVM_* hcall on this SVM's behalf (MSR_S set, the
        UV's books kept): to drive the life cycle step by step from a test or a scripted
        boot."""
        nr, uv = _number(call), self._machine.uv
        return await self._vcpu.on_cpu(lambda: uv.issue(self.lpid, nr, *args))

    async def ucall(self, call: int | str, *args: int) -> int:
        return await self._vcpu.on_cpu(lambda: self._ucall(_number(call), *args))

    async def _ucall(self, nr: int, *args: int) -> int:
        """A ucall to the Ultravisor. UV_ESM(first, npages, share_first, share_npages): the
        model's reading of the ESM blob, which names the pages to page in and the pages the
        UV shares during the transition. UV_SHARE_PAGE(gfn, npages),
        UV_UNSHARE_PAGE(gfn, npages) and UV_UNSHARE_ALL_PAGES() (before a kexec). Any other
        ucall is the HV's: a guest gets H_FUNCTION."""
        uv, lpid = self._machine.uv, self.lpid
        a = [*args, 0, 0, 0, 0][:4]
        if nr == hvcall.UV_ESM:
            if self._machine.esm_pagein == "all":
                gfns = [g for s in self._kvm.memslots
                        for g in range(s.base_gfn, s.base_gfn + s.npages)]
            else:
                gfns = list(range(a[0], a[0] + max(a[1], 0)))
            shares = list(range(a[2], a[2] + max(a[3], 0)))
            rc = await uv.esm(lpid, gfns, shares)
            for gfn in shares if rc == U_SUCCESS else []:
                self.memory.shared[gfn] = True
                self.memory.forget(gfn)
            return rc
        if nr == hvcall.UV_UNSHARE_ALL_PAGES:
            rc = await uv.unshare_all_pages(lpid)
            if rc == U_SUCCESS:
                self.memory.shared.clear()
            return rc
        if nr in (hvcall.UV_SHARE_PAGE, hvcall.UV_UNSHARE_PAGE):
            if a[1] <= 0:
                return U_PARAMETER
            for gfn in range(a[0], a[0] + a[1]):
                rc = await (self._share(gfn) if nr == hvcall.UV_SHARE_PAGE
                            else uv.unshare(lpid, gfn))
                if rc != U_SUCCESS:
                    return rc
                if nr == hvcall.UV_UNSHARE_PAGE:
                    self.memory.shared.pop(gfn, None)
            return U_SUCCESS
        return H_FUNCTION

    async def _share(self, gfn: int) -> int:
        mem = self.memory
        mem.sharing[gfn] = mem.sharing.get(gfn, 0) + 1
        mem.forget(gfn)
        try:
            rc = await self._machine.uv.share(self.lpid, gfn)
        finally:
            mem.sharing[gfn] -= 1
            if not mem.sharing[gfn]:
                del mem.sharing[gfn]
        mem.forget(gfn)  # a fresh page: its content is undefined
        if rc == U_SUCCESS:
            mem.shared[gfn] = True
        return rc

    async def esm(self, first_gfn: int = 0, npages: int = 0) -> int:
        return await self.ucall(hvcall.UV_ESM, first_gfn, npages)

    async def share(self, gfn: int, npages: int = 1) -> int:
        return await self.ucall(hvcall.UV_SHARE_PAGE, gfn, npages)

    async def unshare(self, gfn: int, npages: int = 1) -> int:
        return await self.ucall(hvcall.UV_UNSHARE_PAGE, gfn, npages)

    # ------------------------------------------------------------------ memory
    async def write(self, gpa: int, value: int) -> int:
        """Store ``value`` in the page at ``gpa``: H_SUCCESS, or H_PARAMETER for an address
        outside the guest's memory."""
        return await self._vcpu.on_cpu(lambda: self._write(gpa, value))

    async def read(self, gpa: int) -> int | None:
        """The value of the page at ``gpa`` (None outside the guest's memory)."""
        return await self._vcpu.on_cpu(lambda: self._read(gpa))

    async def _write(self, gpa: int, value: int) -> int:
        gfn = gpa >> PAGE_SHIFT
        frame, normal = await self._frame(gfn, "store")
        if frame is None:
            return hvcall.H_PARAMETER
        secret = self._secure() and gfn not in self.memory.shared
        frame.value, frame.secret, frame.encrypted = value, secret, False
        if gfn in self.memory.sharing:
            self.memory.forget(gfn)  # the guest races its own share: either outcome is fine
        else:
            self.memory.expected[gfn] = value
        if secret and normal:
            self._machine.m.fail("confidentiality", f"{self._vcpu.name}: a secret store to GFN "
                                 f"{gfn:#x} landed in normal memory the HV can read")
        return H_SUCCESS

    async def _read(self, gpa: int) -> int | None:
        gfn = gpa >> PAGE_SHIFT
        frame, _ = await self._frame(gfn, "load")
        if frame is None:
            return None
        want = self.memory.expected.get(gfn)
        if want is not None and (frame.encrypted or frame.value != want):
            got = "ciphertext" if frame.encrypted else frame.value
            self._machine.m.fail("integrity", f"{self._vcpu.name} reads {got} from GFN "
                                 f"{gfn:#x}, but last wrote {want}")
        return frame.value

    def _secure(self) -> bool:
        svm = self._machine.uv.svms.get(self.lpid)
        return svm is not None and svm.secure

    async def _frame(self, gfn: int, what: str):
        m = self._machine.m
        await m.point(f"{what} GFN {gfn:#x}")
        if self._secure():
            return await self._machine.uv.touch(self.lpid, gfn)
        kvm = self._kvm
        hva = kvm.gfn_to_hva(gfn)
        if hva is None:
            return None, False
        pfn = await kvm.host_fault(hva)
        return (kvm.memory.normal[pfn], True) if pfn > 0 else (None, False)
