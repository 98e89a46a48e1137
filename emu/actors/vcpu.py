"""vCPUs and the handle their guest programs use, on any POWER platform.

A vCPU actor runs its guest program, an ``async def program(g: Guest)``, and does everything
a CPU does on its pCPU (``pcpu.py``): it enters the guest the way ``kvmppc_vcpu_run_hv`` does
(count itself in ``vcpus_running``, full barrier, set the MMU up under ``mmu_setup_lock`` if
it is not ready), and each guest load, store and hcall runs there. The program reads and
writes guest memory and issues hcalls by name or number with raw integer arguments, and gets
raw return codes back; a bad argument gets the kernel's code, never an exception.

``Guest`` reaches memory through the HV's page tables. A platform plugs in what its guests
add (``Platform.guest``): a secure VM's guest (``svm_guest.SvmGuest``) adds the ucalls and
reaches memory through the Ultravisor once the VM is secure. The guest keeps what it last
wrote to each GFN and which GFNs it shared itself: reading anything else back is an
integrity violation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs

from ..kvm import hvcall
from ..kvm.hvcall import H_PARAMETER, H_SUCCESS, MASK64, PAGE_SHIFT
from .guest_memory import ALL_GFNS
from .returncodes import AcceptSpec

if TYPE_CHECKING:
    from ..hw.memory import Frame
    from ..kvm.vm import KVM
    from ..sim.channel import Completion
    from .pcpu import PCpu
    from .platform import Platform

GuestProgram = Callable[["Guest"], Awaitable[None]]


def call_number(call: int | str) -> int:
    """The call number in r3: a name of asm/hvcall.h or ultravisor-api.h, or any integer
    (taken modulo 2**64). A name that names no call is a programming error: ValueError."""
    if isinstance(call, str):
        value = getattr(hvcall, call, None) if call.startswith(("H_", "UV_")) else None
        if not isinstance(value, int) or hvcall.NAMES.get(value) != call:
            raise ValueError(f"no hcall or ucall named {call!r}")
        return value
    return call & MASK64


def registers(args: tuple[int, ...]) -> list[int]:
    """The argument registers r4, r5, ...: each argument modulo 2**64."""
    return [a & MASK64 for a in args]



@attrs.define(eq=False)
class VCpu:
    machine: Platform
    kvm: KVM
    index: int
    program: GuestProgram
    pcpu: PCpu
    start: Completion | None = None
    """If set, the vCPU enters the guest (KVM_RUN) only once this completes."""
    in_guest: bool = False
    exited: bool = False
    """Its program returned (or raised): the thread is gone."""
    name: str = attrs.field(init=False)
    """vm<lpid>.vcpu<index>: its actor's name."""

    def __attrs_post_init__(self) -> None:
        self.name = f"vm{self.kvm.lpid}.vcpu{self.index}"
        self.kvm.online_vcpus += 1  # KVM_CREATE_VCPU

    async def run(self) -> None:
        if self.start is not None:
            await self.start.wait_for_completion()
        await self.on_cpu(self._enter)
        try:
            await self.program(self.machine.guest(self))
        finally:
            self.in_guest = False
            self.exited = True
            self.kvm.touch_running(True)
            self.kvm.vcpus_running -= 1

    async def on_cpu(self, op: Callable[[], Awaitable]):
        return await self.pcpu.execute(self.name, op)

    async def _enter(self) -> None:
        """KVM_RUN's entry path, on the pCPU: kvmppc_vcpu_run_hv counts the vCPU in
        vcpus_running, full barrier; kvmhv_run_single_vcpu sets the MMU up if it is not
        ready (kvmhv_setup_mmu under mmu_setup_lock: kvmppc_setup_partition_table, then
        mmu_ready = 1). The guest must then find its LPID's partition-table entry: entering
        without one (KVM_PPC_SVM_OFF left it to the terminated UV, say) is a violation."""
        kvm, m = self.kvm, self.machine.m
        kvm.touch_running(True)
        kvm.vcpus_running += 1  # atomic_inc
        await m.point("smp_mb (vcpus_running vs mmu_ready)")
        kvm.touch_mmu()
        if not kvm.mmu_ready:
            await kvm.mmu_setup_lock.lock()
            kvm.touch_mmu(True)
            if not kvm.mmu_ready:  # kvmhv_setup_mmu
                kvm.pate = True  # kvmppc_setup_partition_table
                kvm.mmu_ready = 1
            kvm.mmu_setup_lock.unlock()
        if not kvm.pate:
            m.fail("entry", f"{self.name} enters the guest with no partition-table entry for "
                   f"LPID {kvm.lpid} (mmu_ready is set, so nothing set the MMU up again)")
        self.in_guest = True


class Guest:
    """What a guest program can do on its vCPU.

    Every integer argument (a call number, an hcall or ucall argument, an address, a value
    stored) is taken modulo 2**64, as the 64-bit register the guest loads it into would
    hold it: -1 is 0xffff_ffff_ffff_ffff and 2**64 + 5 is 5. Any number of arguments may be
    given (missing ones are 0, extra ones are ignored by the callee), and whatever they are,
    the guest gets a return code: the kernel's or the Ultravisor's, never a Python
    exception. Only a call *name* that names no hcall or ucall raises ValueError (a
    programming error, not an argument)."""

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
    async def _checked(self, name: str, args: list[int], gfns: range,
                       op: Callable[[], Awaitable[int]], accept: AcceptSpec | None,
                       unsharing: bool = False) -> int:
        """Run ``op`` on the vCPU as a call on ``gfns`` (for contention) and check its return
        code against what the scenario accepts (``accept`` overrides it for this call).
        ``unsharing``: an unshare, contended from the start if the guest's books do not say
        every page of it is shared (another vCPU unshared one meanwhile)."""
        if unsharing and gfns.stop - gfns.start <= 64:
            for g in gfns:
                self.memory.touch_gfn(g)
        raced = unsharing and (gfns.stop - gfns.start > 64 or
                               any(g not in self.memory.shared for g in gfns))
        causes, ctl = self._kvm.rc_causes, self._machine.m.ctl

        async def caused() -> tuple[int, tuple[str, int] | None]:
            """``op``'s code and its cause, if the kernel named one on this CPU's thread."""
            me = ctl.current.name
            causes.pop(me, None)  # one a call before this one left (its code was accepted)
            rc = await op()
            return rc, causes.pop(me, None)

        with self.memory.call(gfns, self._vcpu.name, raced) as record:
            rc, cause = await self._vcpu.on_cpu(caused)
        self._machine.codes.check(self._vcpu.name, name, args, rc, record.raced, accept, cause)
        return rc

    @staticmethod
    def _gfns(nr: int, regs: list[int]) -> range:
        """The GFNs an hcall or ucall acts on (for contention)."""
        a = [*regs, 0, 0][:2]
        if nr in (hvcall.H_SVM_PAGE_IN, hvcall.H_SVM_PAGE_OUT):
            return range(a[0] >> PAGE_SHIFT, (a[0] >> PAGE_SHIFT) + 1)
        if nr in (hvcall.UV_SHARE_PAGE, hvcall.UV_UNSHARE_PAGE):
            return range(a[0], a[0] + a[1])
        if nr in (hvcall.H_SVM_INIT_START, hvcall.H_SVM_INIT_DONE, hvcall.H_SVM_INIT_ABORT,
                  hvcall.UV_ESM, hvcall.UV_UNSHARE_ALL_PAGES):
            return ALL_GFNS
        return range(0)

    async def hcall(self, call: int | str, *args: int, accept: AcceptSpec | None = None
                    ) -> int:
        """A raw hcall from the guest (never with MSR_S: only the UV's own hcalls carry
        it). An hcall KVM does not handle gets H_FUNCTION. ``accept``: the codes this call
        may return, instead of the scenario's declaration (see ``ReturnCodes``)."""
        nr, regs, hv = call_number(call), registers(args), self._machine.hv

        async def op() -> int:
            rc = await hv.hcall(self.lpid, nr, *regs, msr_s=False)
            self._after_hcall(nr, rc)
            return rc

        return await self._checked(hvcall.NAMES.get(nr, hex(nr)), regs, self._gfns(nr, regs),
                                   op, accept)
    def _after_hcall(self, nr: int, rc: int) -> None:
        """What the guest's books learn from an hcall's return (a platform's guest adds)."""

    # ------------------------------------------------------------------ memory
    async def write(self, gpa: int, value: int, *, accept: AcceptSpec | None = None) -> int:
        """Store ``value`` in the page at ``gpa``: H_SUCCESS, or H_PARAMETER for an address
        outside the guest's memory (checked as the call ``"write"``)."""
        gpa, value = gpa & MASK64, value & MASK64
        with self._access(gpa):
            rc = await self._vcpu.on_cpu(lambda: self._write(gpa, value))
        self._machine.codes.check(self._vcpu.name, "write", [gpa, value], rc, False, accept)
        return rc

    async def read(self, gpa: int, *, accept: AcceptSpec | None = None) -> int | None:
        """The value of the page at ``gpa`` (None outside the guest's memory: checked as
        the call ``"read"`` returning H_PARAMETER, H_SUCCESS otherwise)."""
        gpa &= MASK64
        with self._access(gpa):
            value = await self._vcpu.on_cpu(lambda: self._read(gpa))
        rc = H_SUCCESS if value is not None else H_PARAMETER
        self._machine.codes.check(self._vcpu.name, "read", [gpa], rc, False, accept)
        return value

    def _access(self, gpa: int) -> Any:
        """The context a memory access runs in: no call (a platform's guest may make an
        access contend with calls on the same GFN)."""
        return _NO_CALL

    async def _write(self, gpa: int, value: int) -> int:
        gfn = gpa >> PAGE_SHIFT
        frame, normal, secure = await self._frame(gfn, "store")
        if frame is None:
            return hvcall.H_PARAMETER
        self.memory.touch_gfn(gfn, True)
        sharing = self.memory.in_flight(gfn)  # the guest races its own share of the page:
        secret = secure and gfn not in self.memory.shared and not sharing  # no secret there
        frame.value, frame.secret, frame.encrypted, frame.zero = value, secret, False, False
        if sharing:
            self.memory.forget(gfn)  # and either outcome is fine
        else:
            self.memory.expected[gfn] = value
            if secure:
                self.memory.insecure.pop(gfn, None)
            else:
                self.memory.insecure[gfn] = True
        if secret and normal:
            self._machine.m.fail("confidentiality", f"{self._vcpu.name}: a secret store to GFN "
                                 f"{gfn:#x} landed in normal memory the HV can read")
        return H_SUCCESS

    async def _read(self, gpa: int) -> int | None:
        gfn = gpa >> PAGE_SHIFT
        frame, _, secure = await self._frame(gfn, "load")
        if frame is None:
            return None
        self.memory.touch_gfn(gfn)
        if self._undefined(gfn, frame, secure):
            self.memory.forget(gfn)
        want = self.memory.expected.get(gfn)
        if want is not None and (frame.encrypted or frame.value != want) and \
                self._integrity_checked():
            got = "ciphertext" if frame.encrypted else frame.value
            self._machine.m.fail("integrity", f"{self._vcpu.name} reads {got} from GFN "
                                 f"{gfn:#x}, but last wrote {want}")
        return frame.value

    def _undefined(self, gfn: int, frame: Frame, secure: bool) -> bool:
        """Whether what the guest last wrote to ``gfn`` is undefined now, by the platform's
        design (not a lost store): never, on a plain VM."""
        return False

    def _integrity_checked(self) -> bool:
        """Whether a read that differs from the last store is a violation."""
        return True

    async def _frame(self, gfn: int, what: str) -> tuple[Frame | None, bool, bool]:
        """The frame an access to ``gfn`` lands on: (frame or None, normal memory the HV can
        read, whether the access was made by a secure VM)."""
        await self._machine.m.point(f"{what} GFN {gfn:#x}")
        return await self._route(gfn)

    async def _route(self, gfn: int) -> tuple[Frame | None, bool, bool]:
        """The way to memory: through the HV's page tables (a host fault populates it)."""
        kvm = self._kvm
        hva = kvm.gfn_to_hva(gfn)
        if hva is None:
            return None, False, False
        pfn = await kvm.host_fault(hva)
        return (kvm.memory.normal[pfn] if pfn > 0 else None), pfn > 0, False


_NO_CALL = contextlib.nullcontext()
"""A memory access that is no call (``Guest._access``)."""
