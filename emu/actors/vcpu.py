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

import contextlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING

import attrs

from ..kvm import hvcall
from ..kvm.hvcall import (
    EBUSY,
    EFAULT,
    EINVAL,
    H_FUNCTION,
    H_PAGE_IN_SHARED,
    H_PARAMETER,
    H_SUCCESS,
    MASK64,
    PAGE_SHIFT,
    U_SUCCESS,
    rc_name,
)
from ..sim.explain import entry
from .ultravisor import U_PERMISSION

if TYPE_CHECKING:
    from ..kvm.vm import KVM
    from ..scenarios.svm_machine import SvmMachine
    from ..sim import Machine
    from ..sim.channel import Completion
    from .pcpu import PCpu

GuestProgram = Callable[["Guest"], Awaitable[None]]


GUEST_UCALLS = (hvcall.UV_ESM, hvcall.UV_SHARE_PAGE, hvcall.UV_UNSHARE_PAGE,
                hvcall.UV_UNSHARE_ALL_PAGES)
HV_UCALLS = frozenset(nr for nr, name in hvcall.NAMES.items()
                      if name.startswith("UV_") and nr not in GUEST_UCALLS)
"""The ucalls only the HV may make (UV_PAGE_IN, UV_REGISTER_MEM_SLOT, ...): from a guest,
U_PERMISSION ("if called from context other than Hypervisor", ultravisor.rst)."""


def _number(call: int | str) -> int:
    """The call number in r3: a name of asm/hvcall.h or ultravisor-api.h, or any integer
    (taken modulo 2**64). A name that names no call is a programming error: ValueError."""
    if isinstance(call, str):
        value = getattr(hvcall, call, None) if call.startswith(("H_", "UV_")) else None
        if not isinstance(value, int) or hvcall.NAMES.get(value) != call:
            raise ValueError(f"no hcall or ucall named {call!r}")
        return value
    return call & MASK64


def _regs(args: tuple[int, ...]) -> list[int]:
    """The argument registers r4, r5, ...: each argument modulo 2**64."""
    return [a & MASK64 for a in args]


# ---------------------------------------------------------------------- return codes
ERRNO_NAMES = {0: "0", -EBUSY: "-EBUSY", -EINVAL: "-EINVAL", -EFAULT: "-EFAULT"}
ALL_GFNS = range(0, 1 << 64)
"""What a VM-wide call (UV_ESM, UV_UNSHARE_ALL_PAGES, an H_SVM_INIT_*, a reset) covers."""


def code_name(call: str, rc: int) -> str:
    """A return code by name: an errno for the host's ioctls and accesses, else hvcall's."""
    if call.startswith(("KVM_", "qemu ")):
        return ERRNO_NAMES.get(rc, str(rc))
    return rc_name(rc)


@attrs.frozen
class Accept:
    """The return codes a scenario accepts from one call: ``codes`` always, ``contended``
    only when the call was contended: another vCPU (or QEMU) had a call on an overlapping
    GFN range in flight at some moment of this one, or, for an unshare, the guest's books
    did not say the page was still shared when it started (another vCPU unshared it): a
    race the scenario means to lose sometimes."""

    codes: frozenset[int]
    contended: frozenset[int] = frozenset()

    @classmethod
    def of(cls, spec: AcceptSpec) -> Accept:
        if isinstance(spec, Accept):
            return spec
        return cls(frozenset(spec))

    def allows(self, rc: int, contended: bool) -> bool:
        return rc in self.codes or (contended and rc in self.contended)

    def describe(self, call: str) -> str:
        text = ", ".join(code_name(call, c) for c in sorted(self.codes)) or "nothing"
        if self.contended - self.codes:
            text += " (and when contended " + ", ".join(
                code_name(call, c) for c in sorted(self.contended - self.codes)) + ")"
        return text


AcceptSpec = Accept | Iterable[int]


def accept(*codes: int, contended: Iterable[int] = ()) -> Accept:
    """``accept(H_SUCCESS, contended=[H_PARAMETER])``: the codes a call may return."""
    return Accept(frozenset(codes), frozenset(contended))


class ReturnCodes:
    """The return codes a scenario accepts, call by call: ``table`` maps a call name (an
    hcall or ucall name such as ``"UV_UNSHARE_PAGE"``, ``"read"`` and ``"write"`` for a
    guest's loads and stores, ``"qemu read"``, ``"qemu write"``, ``"KVM_PPC_SVM_OFF"``,
    ``"KVM_SET_USER_MEMORY_REGION"`` and ``"UV_PAGE_INVAL"`` (reclaim) for QEMU) to the
    codes it accepts; ``"*"`` is the default for a call the table does not name. Anything
    else is a violation of kind ``return-code``. ``None``: the program checks its codes
    itself (a hand-built machine; the scenarios of ``emu/scenarios/svm.py`` declare)."""

    def __init__(self, m: Machine, table: Mapping[str, AcceptSpec] | None) -> None:
        self.m = m
        self.table = None if table is None else {k: Accept.of(v) for k, v in table.items()}

    def check(self, who: str, call: str, args: Iterable[int], rc: int, contended: bool,
              override: AcceptSpec | None = None) -> None:
        if override is not None:
            allowed = Accept.of(override)
        elif self.table is None:
            return
        else:
            allowed = self.table.get(call, self.table.get("*"))
            if allowed is None:
                return
        if allowed.allows(rc, contended):
            return
        shown = ", ".join(hex(a) if isinstance(a, int) else str(a) for a in args)
        race = "contended" if contended else "uncontended"
        self.m.fail("return-code", f"{who}: {call}({shown}) returned {code_name(call, rc)} "
                    f"({race}); the scenario accepts {allowed.describe(call)}")


@attrs.define(eq=False)
class _Call:
    """A call in flight on a range of GFNs, for contention: as a context manager, it is
    among ``calls`` while it lasts, and marks every call of someone else it overlaps as
    raced (and itself, if there is one)."""

    calls: list[_Call]
    gfns: range
    who: str
    raced: bool = False

    def __enter__(self) -> _Call:
        for other in self.calls:
            if other.who != self.who and _overlap(other.gfns, self.gfns):
                other.raced = self.raced = True
        self.calls.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.calls.remove(self)


class _Sharing:
    """A share of ``gfns`` in flight (``GuestMemory.sharing_range``)."""

    def __init__(self, memory: GuestMemory, gfns: range) -> None:
        self.memory, self.gfns = memory, gfns

    def __enter__(self) -> None:
        memory, gfns = self.memory, self.gfns
        for gfn in [g for g in memory.expected if g in gfns] if gfns else ():
            memory.forget(gfn)
        for raced in memory.watchers:
            raced.append(gfns)
        memory.sharing.append(gfns)

    def __exit__(self, *exc: object) -> None:
        self.memory.sharing.remove(self.gfns)


_NO_CALL = contextlib.nullcontext()
"""A memory access that is no call (``Guest._access``)."""


def _overlap(a: range, b: range) -> bool:
    return max(a.start, b.start) < min(a.stop, b.stop)


@attrs.define(eq=False)
class GuestMemory:
    """What the guest believes of its own memory (shared by its vCPUs)."""

    expected: dict[int, int] = attrs.Factory(dict)
    """GFN -> the value last written (absent: undefined, e.g. after a share)."""
    insecure: dict[int, bool] = attrs.Factory(dict)
    """GFNs whose expected value was written while the VM was not secure: if the UV never
    received it (H_SVM_INIT_DONE moves the GFNs UV_ESM did not page in without a copy),
    the secure VM finds the UV's zero page there (``Frame.zero``), and that is no
    integrity violation."""
    shared: dict[int, bool] = attrs.Factory(dict)
    """GFNs the guest itself asked to share."""
    sharing: list[range] = attrs.Factory(list)
    """GFN ranges with a share in flight (UV_SHARE_PAGE, or the shares of a UV_ESM): their
    content is undefined from the moment a share starts (it drops the secure content, even
    if the share then fails). Kept as ranges: a guest may name any range."""
    watchers: list[list[range]] = attrs.Factory(list)
    """One list per UV_UNSHARE_ALL_PAGES in flight, collecting the shares that start
    meanwhile: a page shared during it may or may not be unshared by it."""
    calls: list[_Call] = attrs.Factory(list)
    """The calls of the VM's vCPUs and of QEMU in flight, with the GFNs each covers: a
    call is *contended* if a call of someone else on an overlapping range was in flight
    at some moment of it (``Accept.contended``)."""

    def call(self, gfns: range, who: str, raced: bool = False) -> _Call:
        """A call on ``gfns`` by ``who`` is in flight while the context lasts; it yields its
        record (``.raced``, set from the start if ``raced``)."""
        return _Call(self.calls, gfns, who, raced)

    def forget(self, gfn: int) -> None:
        self.expected.pop(gfn, None)
        self.insecure.pop(gfn, None)

    def in_flight(self, gfn: int) -> bool:
        return any(gfn in r for r in self.sharing)

    def sharing_range(self, gfns: range) -> _Sharing:
        """A share of ``gfns`` is in flight while the context lasts: forget their content
        now and meanwhile."""
        return _Sharing(self, gfns)


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
            await self.program(Guest(self))
        finally:
            self.in_guest = False
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
        kvm.vcpus_running += 1  # atomic_inc
        await m.point("smp_mb (vcpus_running vs mmu_ready)")
        if not kvm.mmu_ready:
            await kvm.mmu_setup_lock.lock()
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
        raced = unsharing and (gfns.stop - gfns.start > 64 or
                               any(g not in self.memory.shared for g in gfns))
        with self.memory.call(gfns, self._vcpu.name, raced) as record:
            rc = await self._vcpu.on_cpu(op)
        self._machine.codes.check(self._vcpu.name, name, args, rc, record.raced, accept)
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
        nr, regs, hv = _number(call), _regs(args), self._machine.hv

        async def op() -> int:
            rc = await hv.hcall(self.lpid, nr, *regs, msr_s=False)
            self._after_abort(nr, rc)
            return rc

        return await self._checked(hvcall.NAMES.get(nr, hex(nr)), regs, self._gfns(nr, regs),
                                   op, accept)

    def _after_abort(self, nr: int, rc: int) -> None:
        """H_SVM_INIT_ABORT took the VM back to Normal: nothing is shared any more."""
        if nr == hvcall.H_SVM_INIT_ABORT and rc == H_PARAMETER and not self._kvm.secure_guest:
            self.memory.shared.clear()

    async def uv_hcall(self, call: int | str, *args: int, accept: AcceptSpec | None = None
                       ) -> int:
        """Have the Ultravisor issue an H_SVM_* hcall on this SVM's behalf (MSR_S set, the
        UV's books kept): to drive the life cycle step by step from a test or a scripted
        boot. The UV refuses what it would never issue (see ``Ultravisor.issue``)."""
        nr, regs, uv = _number(call), _regs(args), self._machine.uv
        name, gfns = hvcall.NAMES.get(nr, hex(nr)), self._gfns(nr, regs)
        if nr != hvcall.H_SVM_PAGE_IN or regs[1:3] not in ([H_PAGE_IN_SHARED, PAGE_SHIFT],
                                                            [0, PAGE_SHIFT]):
            async def other() -> int:
                rc = await uv.issue(self.lpid, nr, *regs)
                self._after_abort(nr, rc)
                return rc

            return await self._checked(name, regs, gfns, other, accept)
        gfn = regs[0] >> PAGE_SHIFT  # a share, or a page-in (unshare): the guest's books follow
        if regs[1] == H_PAGE_IN_SHARED:
            return await self._checked(
                name, regs, gfns,
                lambda: self._sharing(gfn, lambda: uv.issue(self.lpid, nr, *regs)), accept)

        async def page_in() -> int:
            rc = await uv.issue(self.lpid, nr, *regs)
            if rc == H_SUCCESS:
                self.memory.shared.pop(gfn, None)
            return rc

        return await self._checked(name, regs, gfns, page_in, accept, unsharing=True)

    async def ucall(self, call: int | str, *args: int, accept: AcceptSpec | None = None
                    ) -> int:
        """A ucall to the Ultravisor; see ``_ucall`` for the ones a guest may make."""
        nr, regs = _number(call), _regs(args)
        return await self._checked(hvcall.NAMES.get(nr, hex(nr)), regs, self._gfns(nr, regs),
                                   lambda: self._ucall(nr, *regs), accept,
                                   unsharing=nr == hvcall.UV_UNSHARE_PAGE)

    @entry(lambda f: hvcall.describe_ucall(f["nr"], f["args"]))
    async def _ucall(self, nr: int, *args: int) -> int:
        """A ucall to the Ultravisor (arguments already 64-bit registers).

        UV_ESM(first, npages, share_first, share_npages): the model's reading of the ESM
        blob, which names the pages to page in and the pages the UV shares during the
        transition; the UV checks them against the VM's registered memory (U_PARAMETER,
        and ESM aborted, if any lies outside). UV_SHARE_PAGE(gfn, npages) and
        UV_UNSHARE_PAGE(gfn, npages): U_PARAMETER if the UV does not know the VM or ``gfn``
        is not its memory, U_P2 if ``npages`` is 0 or runs past it. UV_UNSHARE_ALL_PAGES()
        (before a kexec). The other ucalls are the HV's: a guest gets U_PERMISSION, and a
        number that names no ucall gets U_FUNCTION."""
        uv, lpid = self._machine.uv, self.lpid
        a = [*args, 0, 0, 0, 0][:4]
        if nr == hvcall.UV_ESM:
            if self._machine.esm_pagein == "all":
                gfns = [g for s in self._kvm.memslots
                        for g in range(s.base_gfn, s.base_gfn + s.npages)]
            else:
                gfns = range(a[0], a[0] + a[1])
            shares = range(a[2], a[2] + a[3])
            with self.memory.sharing_range(shares):
                rc = await uv.esm(lpid, gfns, shares)
            for gfn in shares if rc == U_SUCCESS else ():  # checked: inside the VM
                self.memory.shared[gfn] = True
                self.memory.forget(gfn)
            if rc == U_SUCCESS and self._machine.esm_pagein != "all":
                # H_SVM_INIT_DONE moved every page the blob does not name without a copy:
                # what the guest wrote there as a normal VM is undefined now
                for gfn in [g for g in self.memory.insecure if g not in gfns]:
                    self.memory.forget(gfn)
            return rc
        if nr == hvcall.UV_UNSHARE_ALL_PAGES:
            before, raced = list(self.memory.shared), []
            self.memory.watchers.append(raced)
            try:
                rc = await uv.unshare_all_pages(lpid)
            finally:
                watchers = self.memory.watchers
                del watchers[next(i for i, w in enumerate(watchers) if w is raced)]
            for gfn in before if rc == U_SUCCESS else ():
                if not any(gfn in r for r in raced):  # (a racing share may stay shared)
                    self.memory.shared.pop(gfn, None)
            return rc
        if nr in (hvcall.UV_SHARE_PAGE, hvcall.UV_UNSHARE_PAGE):
            rc = uv.check_pages(lpid, a[0], a[1])
            if rc != U_SUCCESS:
                return rc
            for gfn in range(a[0], a[0] + a[1]):  # checked: inside the VM's memory
                rc = await (self._share(gfn) if nr == hvcall.UV_SHARE_PAGE
                            else uv.unshare(lpid, gfn))
                if rc != U_SUCCESS:
                    return rc
                if nr == hvcall.UV_UNSHARE_PAGE:
                    self.memory.shared.pop(gfn, None)
            return U_SUCCESS
        return U_PERMISSION if nr in HV_UCALLS else H_FUNCTION

    async def _share(self, gfn: int) -> int:
        return await self._sharing(gfn, lambda: self._machine.uv.share(self.lpid, gfn))

    async def _sharing(self, gfn: int, share: Callable[[], Awaitable[int]]) -> int:
        """Share ``gfn`` with ``share()``, keeping the guest's books: the page's content is
        undefined from the moment the share starts."""
        mem = self.memory
        with mem.sharing_range(range(gfn, gfn + 1)):
            rc = await share()
        mem.forget(gfn)  # a fresh page: its content is undefined
        if rc == U_SUCCESS:
            mem.shared[gfn] = True
        return rc

    async def esm(self, first_gfn: int = 0, npages: int = 0, *,
                  accept: AcceptSpec | None = None) -> int:
        return await self.ucall(hvcall.UV_ESM, first_gfn, npages, accept=accept)

    async def share(self, gfn: int, npages: int = 1, *,
                    accept: AcceptSpec | None = None) -> int:
        return await self.ucall(hvcall.UV_SHARE_PAGE, gfn, npages, accept=accept)

    async def unshare(self, gfn: int, npages: int = 1, *,
                      accept: AcceptSpec | None = None) -> int:
        return await self.ucall(hvcall.UV_UNSHARE_PAGE, gfn, npages, accept=accept)

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

    def _access(self, gpa: int):
        """A memory access is no call, except under a hostile UV: that UV does not order
        an access to a GFN after its own page-in or unshare of it, so the access (holding
        the page through gfn_to_pfn) contends with them."""
        if self._machine.uv.faithful:
            return _NO_CALL
        gfn = gpa >> PAGE_SHIFT
        return self.memory.call(range(gfn, gfn + 1), self._vcpu.name)

    async def _write(self, gpa: int, value: int) -> int:
        gfn = gpa >> PAGE_SHIFT
        frame, normal, secure = await self._frame(gfn, "store")
        if frame is None:
            return hvcall.H_PARAMETER
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
        if frame.zero and self.memory.insecure.pop(gfn, False):
            self.memory.forget(gfn)  # written before ESM, never paged in: a zero page now
        if frame.encrypted and not secure and self.lpid in self._machine.uv.svms:
            self.memory.forget(gfn)  # read through the HV while ESM ran on another vCPU
        want = self.memory.expected.get(gfn)
        if want is not None and (frame.encrypted or frame.value != want) and \
                self._machine.uv.faithful:  # a hostile UV may lose the SVM's data itself
            got = "ciphertext" if frame.encrypted else frame.value
            self._machine.m.fail("integrity", f"{self._vcpu.name} reads {got} from GFN "
                                 f"{gfn:#x}, but last wrote {want}")
        return frame.value

    def _secure(self) -> bool:
        svm = self._machine.uv.svms.get(self.lpid)
        return svm is not None and svm.secure

    async def _frame(self, gfn: int, what: str):
        """The frame an access to ``gfn`` lands on: (frame or None, normal memory the HV can
        read, whether the access was made by a secure VM). The access is made as the VM is
        when it reaches memory: through the Ultravisor once the VM is secure (a store then
        is secret unless the page is shared), through the HV's page tables before (a store
        then is no secret, even if ESM completes meanwhile on another vCPU)."""
        m = self._machine.m
        await m.point(f"{what} GFN {gfn:#x}")
        if self._secure():
            return (*await self._machine.uv.touch(self.lpid, gfn), True)
        kvm = self._kvm
        hva = kvm.gfn_to_hva(gfn)
        if hva is None:
            return None, False, False
        pfn = await kvm.host_fault(hva)
        return (kvm.memory.normal[pfn] if pfn > 0 else None), pfn > 0, False
