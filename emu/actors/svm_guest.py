"""The guest of a POWER secure VM: what the Ultravisor adds to a vCPU's guest handle.

It adds the ucalls a guest may make (UV_ESM, UV_SHARE_PAGE, UV_UNSHARE_PAGE,
UV_UNSHARE_ALL_PAGES; the HV's own get U_PERMISSION) and ``uv_hcall``, which has the UV
issue an H_SVM_* hcall for the VM. Memory of the VM is reached through the Ultravisor once
the VM is secure (a first touch of a paged-out page pages it back in), and a store there is
the SVM's secret unless the page is shared: a secret landing in memory the HV can read is a
confidentiality violation. The guest's books also follow what the secure VM's design makes
undefined (a share drops a page's content; INIT_DONE moves pages ESM did not name without a
copy).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..kvm import hvcall
from ..kvm.hvcall import H_FUNCTION, H_PAGE_IN_SHARED, H_PARAMETER, H_SUCCESS, PAGE_SHIFT, U_SUCCESS
from ..sim.explain import entry
from .platform import Platform
from .returncodes import AcceptSpec
from .ultravisor import U_PERMISSION
from .vcpu import Guest, call_number, registers

if TYPE_CHECKING:
    from ..hw.memory import Frame
    from .ultravisor import Ultravisor

GUEST_UCALLS = (hvcall.UV_ESM, hvcall.UV_SHARE_PAGE, hvcall.UV_UNSHARE_PAGE,
                hvcall.UV_UNSHARE_ALL_PAGES)
HV_UCALLS = frozenset(nr for nr, name in hvcall.NAMES.items()
                      if name.startswith("UV_") and nr not in GUEST_UCALLS)
"""The ucalls only the HV may make (UV_PAGE_IN, UV_REGISTER_MEM_SLOT, ...): from a guest,
U_PERMISSION ("if called from context other than Hypervisor", ultravisor.rst)."""


class SvmPlatform(Platform, Protocol):
    """A machine with an Ultravisor."""

    uv: Ultravisor
    esm_pagein: str
    """"necessary" (UV_ESM pages in the GFNs its blob names) or "all"."""


class SvmGuest(Guest):
    """What a guest program of a secure VM can do on its vCPU (``Guest``, plus ucalls)."""

    _machine: SvmPlatform

    # ------------------------------------------------------------------ calls
    def _after_hcall(self, nr: int, rc: int) -> None:
        """H_SVM_INIT_ABORT took the VM back to Normal: nothing is shared any more."""
        if nr == hvcall.H_SVM_INIT_ABORT and rc == H_PARAMETER and not self._kvm.secure_guest:
            self.memory.touch_all()
            self.memory.shared.clear()

    async def uv_hcall(self, call: int | str, *args: int, accept: AcceptSpec | None = None
                       ) -> int:
        """Have the Ultravisor issue an H_SVM_* hcall on this SVM's behalf (MSR_S set, the
        UV's books kept): to drive the life cycle step by step from a test or a scripted
        boot. The UV refuses what it would never issue (see ``Ultravisor.issue``)."""
        nr, regs, uv = call_number(call), registers(args), self._machine.uv
        name, gfns = hvcall.NAMES.get(nr, hex(nr)), self._gfns(nr, regs)
        if nr != hvcall.H_SVM_PAGE_IN or regs[1:3] not in ([H_PAGE_IN_SHARED, PAGE_SHIFT],
                                                            [0, PAGE_SHIFT]):
            async def other() -> int:
                rc = await uv.issue(self.lpid, nr, *regs)
                self._after_hcall(nr, rc)
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
                self.memory.touch_gfn(gfn, True)
                self.memory.shared.pop(gfn, None)
            return rc

        return await self._checked(name, regs, gfns, page_in, accept, unsharing=True)

    async def ucall(self, call: int | str, *args: int, accept: AcceptSpec | None = None
                    ) -> int:
        """A ucall to the Ultravisor; see ``_ucall`` for the ones a guest may make."""
        nr, regs = call_number(call), registers(args)
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
                self._kvm.touch_memslots()
                gfns = [g for s in self._kvm.memslots
                        for g in range(s.base_gfn, s.base_gfn + s.npages)]
            else:
                gfns = range(a[0], a[0] + a[1])
            shares = range(a[2], a[2] + a[3])
            with self.memory.sharing_range(shares):
                rc = await uv.esm(lpid, gfns, shares)
            for gfn in shares if rc == U_SUCCESS else ():  # checked: inside the VM
                self.memory.forget(gfn)
                self.memory.shared[gfn] = True
            if rc == U_SUCCESS and self._machine.esm_pagein != "all":
                # H_SVM_INIT_DONE moved every page the blob does not name without a copy:
                # what the guest wrote there as a normal VM is undefined now
                self.memory.touch_all()
                for gfn in [g for g in self.memory.insecure if g not in gfns]:
                    self.memory.forget(gfn)
            return rc
        if nr == hvcall.UV_UNSHARE_ALL_PAGES:
            self.memory.touch_all()
            before, raced = list(self.memory.shared), []
            self.memory.touch_calls()
            self.memory.watchers.append(raced)
            try:
                rc = await uv.unshare_all_pages(lpid)
            finally:
                self.memory.touch_calls()
                watchers = self.memory.watchers
                del watchers[next(i for i, w in enumerate(watchers) if w is raced)]
            if rc == U_SUCCESS:
                self.memory.touch_all()
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
                    self.memory.touch_gfn(gfn, True)
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
    def _access(self, gpa: int) -> Any:
        """A memory access is no call, except under a hostile UV: that UV does not order
        an access to a GFN after its own page-in or unshare of it, so the access (holding
        the page through gfn_to_pfn) contends with them."""
        if self._machine.uv.faithful:
            return super()._access(gpa)
        gfn = gpa >> PAGE_SHIFT
        return self.memory.call(range(gfn, gfn + 1), self._vcpu.name)

    def _undefined(self, gfn: int, frame: Frame, secure: bool) -> bool:
        # written before ESM, never paged in: a zero page now
        self.memory.touch_gfn(gfn, True)
        if frame.zero and self.memory.insecure.pop(gfn, False):
            return True
        # read through the HV while ESM ran on another vCPU
        return frame.encrypted and not secure and self._machine.uv.svm(self.lpid) is not None

    def _integrity_checked(self) -> bool:
        return self._machine.uv.faithful  # a hostile UV may lose the SVM's data itself

    def _secure(self) -> bool:
        svm = self._machine.uv.svm(self.lpid)
        return svm is not None and svm.secure

    async def _route(self, gfn: int) -> tuple[Frame | None, bool, bool]:
        """The access is made as the VM is when it reaches memory: through the Ultravisor
        once the VM is secure (a store then is secret unless the page is shared), through
        the HV's page tables before (a store then is no secret, even if ESM completes
        meanwhile on another vCPU)."""
        if self._secure():
            return (*await self._machine.uv.touch(self.lpid, gfn), True)
        return await super()._route(gfn)
