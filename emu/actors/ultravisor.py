"""The Ultravisor: owns secure memory, serves the HV's ucalls, and acts for each SVM.

Two halves, as on the hardware:
- **the ucall server** (an actor): the HV's UV_* ucalls arrive in its mailbox and are served
  one at a time; page copies go to the memory controller. It never calls into the HV, so
  the HV may wait for it while holding its own locks.
- **the firmware paths an SVM's vCPU runs** (UV_ESM, UV_SHARE_PAGE, UV_UNSHARE_PAGE, and a
  first touch of a page that is not in secure memory): they execute on the vCPU's own
  thread and issue H_SVM_* hcalls to the HV with MSR_S set, except H_SVM_INIT_ABORT, which
  the UV issues from the not-yet-secure VM's context (MSR_S clear; this is B4).

Per SVM the UV knows, for each GFN: a secure frame (paged in), paged out (the HV holds the
encrypted copy), shared (it maps the HV's normal page), or nothing yet (a zero page on first
touch once the VM is secure). That knowledge is the ground truth the life-cycle tables are
checked against.

The UV's books are objects of the access relation (``sim.accesses``): ``uvsvm:<lpid>``, an
SVM's own record (known or not, its slots, secure, transition, aborting; written when any
of them changes, read by every operation that looks the SVM up), and ``uv:<lpid>:<gfn>``,
what the UV knows of one GFN (its frame, paged out, copying out, shared, invalidated,
unshared behind). A walk of every GFN the UV knows for an SVM reads every GFN's name
(``SvmState.touch_all``). The count of hcalls in flight is changed as a read of the record
(increments commute); the abort that waits for it to drain writes the record.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import attrs

from ..hw.memory import Frame, PhysicalMemory
from ..kvm.hvcall import (
    H_BUSY,
    H_HARDWARE,
    H_NO_MEM,
    H_P2,
    H_PAGE_IN_SHARED,
    H_PARAMETER,
    H_SUCCESS,
    H_SVM_INIT_ABORT,
    H_SVM_INIT_DONE,
    H_SVM_INIT_START,
    H_SVM_PAGE_IN,
    H_SVM_PAGE_OUT,
    NAMES,
    PAGE_SHIFT,
    U_SUCCESS,
    describe_ucall,
)
from ..kvm.uvmem import VM_TRANSIENT, vm_state
from ..sim import Machine, accesses
from ..sim.explain import numbered
from .memctl import MemoryController

if TYPE_CHECKING:
    from ..kvm.hv import Hypervisor

SHARE_VS_PAGE_IN = "UV_SHARE_PAGE ~ the SVM's page-in of the same GFN"
"""Coverage (``Machine.racing``): a share and the SVM's own access to a paged-out GFN in
flight at once; the faithful UV's per-GFN exclusion (``_serialised``) orders them, so one
waits for the other there, not in the HV."""

U_PARAMETER = -4
U_P2 = H_P2
U_BUSY = H_BUSY
U_STATE = -75
U_PERMISSION = -11
LIFE_CYCLE = (H_SVM_INIT_START, H_SVM_INIT_DONE, H_SVM_INIT_ABORT)
HOSTILE = ("no-serialise", "evict", "register-page-in", "duplicate-register", "page-in-fail",
           "init-done-twice", "init-start-secure")
"""What a hostile UV may do (``Ultravisor.misbehave``): skip its per-GFN serialisation;
page a secure GFN out itself (H_SVM_PAGE_OUT with MSR_S) before a firmware operation; issue
H_SVM_PAGE_IN for a GFN of a slot from inside UV_REGISTER_MEM_SLOT (seed 004's hotplug);
accept a duplicate UV_REGISTER_MEM_SLOT; fail a fraction of the UV_PAGE_IN ucalls of
``page_in_fail_paths`` (U_BUSY, U_PARAMETER or H_HARDWARE); issue H_SVM_INIT_DONE again
after ESM, or H_SVM_INIT_START on the secure VM (out of state, MSR_S set)."""
HOSTILE_DEFAULT = ("no-serialise", "evict", "register-page-in", "page-in-fail")
"""What ``-p uv=hostile`` turns on: the misbehaviour the modelled kernel survives. The rest
lead to the known findings pinned by ``tests/test_hostile_uv.py`` (README, Findings)."""
PAGE_IN_FAIL_CODES = (U_BUSY, U_PARAMETER, H_HARDWARE)
_NO_NAMES = ("", "")
"""A copy's frames when accesses are not recorded (``MemoryController.copy``)."""


numbered("uv", "gfn", "gfns")  # "GFN 0x5" in a message numbers the UV's books uv:<lpid>:0x5


@attrs.define(eq=False)
class SvmState:
    """What the UV knows of one secure VM."""

    lpid: int
    secure: bool = False
    """ESM completed (H_SVM_INIT_DONE succeeded)."""
    slots: dict[int, tuple[int, int]] = attrs.Factory(dict)
    """Registered memslots: slot id -> (first GFN, number of pages)."""
    registered_by: dict[int, str] = attrs.Factory(dict)
    """Slot id -> the thread whose ucall registered it."""
    frames: dict[int, int] = attrs.Factory(dict)
    """GFN -> secure frame (paged in)."""
    paged_out: dict[int, bool] = attrs.Factory(dict)
    copying_out: dict[int, bool] = attrs.Factory(dict)
    """GFNs whose UV_PAGE_OUT copy is under way (unmapped from the SVM, not yet copied)."""
    shared: dict[int, int] = attrs.Factory(dict)
    """GFN -> the HV's normal pfn the UV maps as shared."""
    invalidated: dict[int, bool] = attrs.Factory(dict)
    """Shared GFNs whose mapping the HV invalidated (UV_PAGE_INVAL): the next access faults
    to the HV, which sends the page again (kvmppc_send_page_to_uv)."""
    transition: str = ""
    """The life-cycle operation the UV is carrying out for this SVM (UV_ESM, or an
    H_SVM_INIT_* it issues): the UV runs one at a time per SVM."""
    aborting: bool = False
    """The UV is aborting ESM (H_SVM_INIT_ABORT): it issues nothing more for this SVM."""
    in_flight: int = 0
    """Hcalls the UV has issued for this SVM and that have not returned yet."""
    drained: Any = None
    """Completed when ``in_flight`` drops to 0 (created by an abort waiting for that)."""
    unshared_behind: set[int] = attrs.Factory(set)
    """Shared GFNs a hostile UV's own stale page-in copied into secure memory (silently
    unsharing them): its UV_UNSHARE_PAGE of one then has nothing left to do."""

    def touch(self, write: bool = False) -> None:
        """This step reads (writes) the SVM's record, ``uvsvm:<lpid>``."""
        if accesses.current.on:
            accesses.current.touch(f"uvsvm:{self.lpid}", write)

    def touch_gfn(self, gfn: int, write: bool = False) -> None:
        """This step reads (writes) what the UV knows of ``gfn``, ``uv:<lpid>:<gfn>``, and
        reads the books as a whole, ``uv:<lpid>`` (which a walk writes: ``touch_all``)."""
        if accesses.current.on:
            accesses.current.touch(f"uv:{self.lpid}")
            accesses.current.touch(f"uv:{self.lpid}:{gfn:#x}", write)

    def touch_all(self) -> None:
        """This step walks what the UV knows of every GFN of the SVM. It counts as a write
        of ``uv:<lpid>``, which every step on one GFN reads: dependent on all of them, as
        reading each GFN would be, in one name instead of one per GFN (a walk of a 100 GB
        SVM's books would name 1.6 million)."""
        if accesses.current.on:
            accesses.current.touch(f"uv:{self.lpid}", True)

    def registered(self, gfn: int) -> bool:
        return any(base <= gfn < base + n for base, n in self.slots.values())

    def covers(self, gfns: Iterable[int]) -> bool:
        """Every GFN of ``gfns`` lies in registered memory. A range is checked slot by slot
        (any length, even 2**64 pages, in O(slots**2)), anything else page by page."""
        if not isinstance(gfns, range):
            return all(self.registered(gfn) for gfn in gfns)
        gfn = gfns.start
        while gfn < gfns.stop:
            end = next((base + n for base, n in self.slots.values()
                        if base <= gfn < base + n), None)
            if end is None:
                return False
            gfn = end
        return True


@attrs.define(eq=False)
class Ucall:
    name: str
    args: tuple
    caller: str
    """The thread that made the ucall: a ucall nested in an hcall the UV issued comes back
    on the same thread, which is how the UV knows which of its requests it belongs to."""
    done: Any
    rc: int = 0

    def trace_label(self) -> str:
        return self.name


class Ultravisor:
    def __init__(self, m: Machine, memory: PhysicalMemory, memctl: MemoryController,
                 design: str = "gfn-states", hcall_ns: int = 0, mode: str = "faithful") -> None:
        self.m = m
        self.faithful = mode == "faithful"
        """``faithful``: firmware that keeps its own promises (it serialises its page-in,
        share and unshare of one GFN). ``hostile``: it does not, and the HV must survive
        what follows; the SVM's own data is then the UV's problem, not an HV finding."""
        self.misbehave: frozenset[str] = frozenset(() if self.faithful else HOSTILE_DEFAULT)
        """The hostile behaviours on (``HOSTILE``); a scenario or test may change it. Every
        choice among them is drawn from ``m.random`` (never in the faithful mode, whose
        traces therefore do not change)."""
        self.hostile_pct = 20
        """Chance in percent of each hostile act at each opportunity."""
        self.page_in_fail_paths: frozenset[str] = frozenset(("share", "fault"))
        """The UV_PAGE_IN requests ``page-in-fail`` fails: "share" (kvmppc_share_page),
        "fault" (kvmppc_send_page_to_uv), "page-in" (kvmppc_svm_page_in, the HV's own
        H_SVM_PAGE_IN path: its failure leaves the device page allocated and the GFN flagged,
        the known latent leak, so it is not on by default)."""
        self._injected: dict[str, bool] = {}
        """Thread -> a UV_PAGE_IN of its request failed by ``page-in-fail``."""
        self._register_page_ins: dict[str, list[tuple[int, int]]] = {}
        """Thread -> (lpid, GFN) the UV pages in before its UV_REGISTER_MEM_SLOT returns."""
        self._gfn_locks: dict[tuple[int, int], Any] = {}
        self.hcall_ns = hcall_ns
        self.memory = memory
        self.memctl = memctl
        self.design = design
        self.svms: dict[int, SvmState] = {}
        self.hv: Hypervisor | None = None
        self._caller = ""
        self.fail_register: Callable[[int, int], bool] = lambda lpid, slot_id: False
        """Fault injection: UV_REGISTER_MEM_SLOT runs out of secure memory."""
        self.request: dict[str, tuple[str, int]] = {}
        """Thread -> the UV request it is carrying out ("share", "unshare" or "fault", GFN):
        what a UV_PAGE_IN nested in that thread's hcall or fault is for."""
        self.mailbox = m.channel("ucall", capacity=4)
        m.spawn("ultravisor", self.serve, group="ultravisor", daemon=True)

    def svm(self, lpid: int) -> SvmState | None:
        """The SVM the UV knows as ``lpid`` (None: none), a read of its record."""
        if accesses.current.on:
            accesses.current.touch(f"uvsvm:{lpid}")
        return self.svms.get(lpid)

    # ------------------------------------------------------------------ ucall server
    async def serve(self) -> None:
        while True:
            call: Ucall = await self.mailbox.receive()
            self.m.describe_received(describe_ucall, call.name, call.args)
            self._caller = call.caller
            call.rc = await getattr(self, "_" + call.name.lower())(*call.args)
            call.done.complete()

    async def _ucall(self, name: str, *args: int) -> int:
        """A synchronous firmware call: the CPU is in the UV, not asleep (so it is legal
        under a spinlock, as UV_PAGE_INVAL under mmu_lock is)."""
        call = Ucall(name, args, self.m.ctl.current.name, self.m.completion(name))
        await self.mailbox.send(call, sleeps=False)
        await call.done.wait_for_completion(sleeps=False)
        return call.rc

    async def uv_register_mem_slot(self, lpid: int, start_gpa: int, size: int, flags: int,
                                   slot_id: int) -> int:
        rc = await self._ucall("UV_REGISTER_MEM_SLOT", lpid, start_gpa, size, flags, slot_id)
        for lpid_, gfn in self._register_page_ins.pop(self.m.ctl.current.name, ()):
            await self._register_page_in(lpid_, gfn)
        return rc

    async def _register_page_in(self, lpid: int, gfn: int) -> None:
        """Hostile (seed 004): the UV, still inside UV_REGISTER_MEM_SLOT, issues
        H_SVM_PAGE_IN for a GFN of the slot it registers. It runs on the thread that made
        the ucall (the UV executes a ucall on the caller's CPU, and its hcall goes back to
        the HV from there, with whatever the HV holds), after the ucall server has answered:
        the server itself never calls the HV (it would wait on its own mailbox for the
        UV_PAGE_IN this page-in makes, a deadlock of the model, not of the kernel)."""
        svm = self.svm(lpid)
        if svm is None or svm.aborting or not svm.registered(gfn):
            return
        self.m.note(f"hostile UV: H_SVM_PAGE_IN of GFN {gfn:#x} inside UV_REGISTER_MEM_SLOT")
        with self._in_flight(svm):
            rc = await self.hv.hcall(lpid, H_SVM_PAGE_IN, gfn << PAGE_SHIFT, 0, PAGE_SHIFT,
                                     msr_s=True)
        self.m.note(f"hostile UV: that H_SVM_PAGE_IN returned {rc}")

    def _hostile(self, what: str) -> bool:
        """Whether the hostile UV does ``what`` now (a draw from the seeded data RNG)."""
        return what in self.misbehave and self.m.random.randrange(100) < self.hostile_pct

    async def uv_unregister_mem_slot(self, lpid: int, slot_id: int) -> int:
        return await self._ucall("UV_UNREGISTER_MEM_SLOT", lpid, slot_id)

    async def uv_page_in(self, lpid: int, src_ra: int, dst_gpa: int, flags: int,
                         page_shift: int) -> int:
        return await self._ucall("UV_PAGE_IN", lpid, src_ra, dst_gpa, flags, page_shift)

    async def uv_page_out(self, lpid: int, dst_ra: int, src_gpa: int, flags: int,
                          page_shift: int) -> int:
        return await self._ucall("UV_PAGE_OUT", lpid, dst_ra, src_gpa, flags, page_shift)

    async def uv_page_inval(self, lpid: int, gpa: int, page_shift: int) -> int:
        return await self._ucall("UV_PAGE_INVAL", lpid, gpa, page_shift)

    async def uv_svm_terminate(self, lpid: int) -> int:
        return await self._ucall("UV_SVM_TERMINATE", lpid)

    # the handlers, run by the server
    async def _uv_register_mem_slot(self, lpid: int, start_gpa: int, size: int, flags: int,
                                    slot_id: int) -> int:
        svm = self.svm(lpid)
        if svm is None or flags or (slot_id in svm.slots and
                                    "duplicate-register" not in self.misbehave):
            return U_PARAMETER
        if self.fail_register(lpid, slot_id):
            return H_NO_MEM
        svm.touch(True)
        svm.slots[slot_id] = (start_gpa >> PAGE_SHIFT, size >> PAGE_SHIFT)
        svm.registered_by[slot_id] = self._caller
        if svm.secure and size >> PAGE_SHIFT and self._hostile("register-page-in"):
            gfn = (start_gpa >> PAGE_SHIFT) + self.m.random.randrange(size >> PAGE_SHIFT)
            self._register_page_ins.setdefault(self._caller, []).append((lpid, gfn))
        return U_SUCCESS

    async def _uv_unregister_mem_slot(self, lpid: int, slot_id: int) -> int:
        svm = self.svm(lpid)
        if svm is None or slot_id not in svm.slots:
            return U_PARAMETER
        svm.touch(True)
        del svm.slots[slot_id]
        del svm.registered_by[slot_id]
        return U_SUCCESS

    def _page_args(self, lpid: int, gpa: int, flags: int, page_shift: int) -> SvmState | None:
        svm = self.svm(lpid)
        if svm is None or flags or page_shift != PAGE_SHIFT or \
                not svm.registered(gpa >> PAGE_SHIFT):
            return None
        return svm

    async def _uv_page_in(self, lpid: int, src_ra: int, dst_gpa: int, flags: int,
                          page_shift: int) -> int:
        svm = self._page_args(lpid, dst_gpa, flags, page_shift)
        if svm is None:
            return U_PARAMETER
        gfn, src = dst_gpa >> PAGE_SHIFT, src_ra >> PAGE_SHIFT
        svm.touch_gfn(gfn, True)
        request = self.request.get(self._caller)
        path = request[0] if request and request[0] in ("share", "fault") else "page-in"
        if path in self.page_in_fail_paths and self._hostile("page-in-fail"):
            rc = self.m.random.choice(PAGE_IN_FAIL_CODES)
            self._injected[self._caller] = True
            if svm.secure and not (gfn in svm.frames or gfn in svm.paged_out or
                                   gfn in svm.shared):
                # the page stays the SVM's: its zero page (a touch would make the same)
                svm.frames[gfn] = self.memory.secure.alloc()
                self.memory.secure[svm.frames[gfn]].zero = True
            self.m.note(f"hostile UV: UV_PAGE_IN of GFN {gfn:#x} ({path}) fails with {rc}")
            return rc
        if request == ("fault", gfn) and gfn in svm.shared:  # send_page_to_uv: map it again
            svm.invalidated.pop(gfn, None)
            svm.shared[gfn] = src
            return U_SUCCESS
        if request == ("share", gfn):  # the page the SVM asks to share: map it
            svm.unshared_behind.discard(gfn)
            self._drop_secure(svm, gfn)
            svm.shared[gfn] = src
            return U_SUCCESS
        if gfn in svm.shared and self.design == "two-state" and request != ("unshare", gfn):
            # the UV refuses an HV-initiated page-in of a shared GFN (INIT_DONE's, in this
            # design), but not the one its own UV_UNSHARE_PAGE asked for
            return U_PARAMETER
        if gfn in svm.shared and request != ("unshare", gfn) and not self.faithful:
            svm.unshared_behind.add(gfn)
        spfn = svm.frames.get(gfn) or self.memory.secure.alloc()
        await self.memctl.copy(self.memory.normal[src], self.memory.secure[spfn],
                               into_secure=True, names=(self.memory.normal.name(src),
                                                        self.memory.secure.name(spfn))
                               if accesses.current.on else _NO_NAMES)
        svm.touch_gfn(gfn, True)
        svm.frames[gfn] = spfn
        svm.shared.pop(gfn, None)
        svm.invalidated.pop(gfn, None)
        svm.paged_out.pop(gfn, None)
        return U_SUCCESS

    async def _uv_page_out(self, lpid: int, dst_ra: int, src_gpa: int, flags: int,
                           page_shift: int) -> int:
        svm = self._page_args(lpid, src_gpa, flags, page_shift)
        gfn = src_gpa >> PAGE_SHIFT
        if svm is None:
            return U_PARAMETER
        svm.touch_gfn(gfn, True)
        if gfn in svm.shared:
            return U_PARAMETER
        spfn = svm.frames.pop(gfn, None)  # unmapped from the SVM first: an access by the SVM
        svm.paged_out[gfn] = True  # now faults and pages it back in (after this copy)
        src = self.memory.secure[spfn] if spfn else Frame(secret=True, zero=True)
        svm.copying_out[gfn] = True
        dst = dst_ra >> PAGE_SHIFT
        await self.memctl.copy(src, self.memory.normal[dst], into_secure=False,
                               names=(self.memory.secure.name(spfn) if spfn else "",
                                      self.memory.normal.name(dst))
                               if accesses.current.on else _NO_NAMES)
        svm.touch_gfn(gfn, True)
        del svm.copying_out[gfn]
        if spfn:
            self.memory.secure.free(spfn)
        return U_SUCCESS

    async def _uv_page_inval(self, lpid: int, gpa: int, page_shift: int) -> int:
        svm = self._page_args(lpid, gpa, 0, page_shift)
        if svm is None:
            return U_PARAMETER
        svm.touch_gfn(gpa >> PAGE_SHIFT, True)
        if gpa >> PAGE_SHIFT in svm.shared:
            svm.invalidated[gpa >> PAGE_SHIFT] = True
        return U_SUCCESS

    async def _uv_svm_terminate(self, lpid: int) -> int:
        if accesses.current.on:
            accesses.current.touch(f"uvsvm:{lpid}", True)
        svm = self.svms.pop(lpid, None)
        if svm is None:
            return U_PARAMETER
        for spfn in svm.frames.values():
            self.memory.secure.free(spfn)
        return U_SUCCESS

    def _drop_secure(self, svm: SvmState, gfn: int) -> None:
        spfn = svm.frames.pop(gfn, None)
        if spfn:
            self.memory.secure.free(spfn)
        svm.paged_out.pop(gfn, None)

    # ------------------------------------------------------------------ ground truth
    def uv_gfn_state(self, lpid: int, gfn: int) -> str:
        """A GFN's state in the seed's words as the UV's books say."""
        svm = self.svms.get(lpid)
        if svm is None:
            return "Normal"
        if gfn in svm.shared:
            return "Shared"
        if gfn in svm.frames or gfn in svm.paged_out or (svm.secure and svm.registered(gfn)):
            return "Secure"
        return "Normal"

    # ------------------------------------------------------------------ firmware on a vCPU
    async def issue(self, lpid: int, req: int, *args: int) -> int:
        """The UV issues an H_SVM_* hcall on the SVM's behalf (a guest's ``uv_hcall``),
        keeping its own books: it starts ESM only for a VM it does not know, finishes it
        only for one in transition (the HV does not check either, so the UV refuses with
        U_STATE), issues nothing for a VM it does not know or is aborting (U_STATE), runs
        one life-cycle operation per SVM at a time (U_BUSY while another is in progress),
        shares a page through its own share path (H_PAGE_IN_SHARED with the right page
        size), and issues H_SVM_INIT_ABORT from the not-yet-secure VM's context (MSR_S
        clear, B4). Arguments are 64-bit registers."""
        svm = self.svm(lpid)
        if req == H_SVM_INIT_START:
            if svm is not None:
                return U_STATE
            svm = self.svms[lpid] = SvmState(lpid)
            svm.touch(True)
        elif svm is None or svm.aborting or (req == H_SVM_INIT_DONE and svm.secure):
            return U_STATE  # the UV acts only for SVMs it knows
        elif req in LIFE_CYCLE and svm.transition:
            return U_BUSY
        elif req == H_SVM_PAGE_IN and args[1:3] == (H_PAGE_IN_SHARED, PAGE_SHIFT):
            return await self.share(lpid, args[0] >> PAGE_SHIFT)
        elif req == H_SVM_PAGE_IN and args[1:3] == (0, PAGE_SHIFT):
            if not svm.registered(args[0] >> PAGE_SHIFT):
                return U_PARAMETER  # the UV pages in only memory registered for the SVM
            gfn = args[0] >> PAGE_SHIFT
            async with self._serialised(lpid, gfn), self._requesting("unshare", gfn):
                return await self._issue(svm, req, *args)  # its own page-in (or unshare)
        if req not in LIFE_CYCLE:
            return await self._issue(svm, req, *args)
        svm.touch(True)
        svm.transition = NAMES[req]
        try:
            return await self._issue(svm, req, *args)
        finally:
            svm.touch(True)
            svm.transition = ""

    async def _issue(self, svm: SvmState, req: int, *args: int) -> int:
        """Issue one hcall for ``svm`` (which must still be the SVM the UV knows)."""
        lpid, hv = svm.lpid, self.hv
        if self.svm(lpid) is not svm or svm.aborting:
            return U_STATE  # terminated (or being aborted) meanwhile
        if self.hcall_ns:  # the cost model: the round trip through the UV and the HV
            await self.m.sleep(self.hcall_ns)
        if req == H_SVM_INIT_ABORT:
            svm.touch(True)
            svm.aborting = True
            try:
                while svm.in_flight:  # its other hcalls for the SVM return first
                    svm.drained = svm.drained or self.m.completion(f"SVM {lpid} hcalls done")
                    await svm.drained.wait_for_completion()
                    svm.touch(True)
                return await hv.hcall(lpid, req, *args, msr_s=False, via_uv=True)
            finally:
                svm.touch(True)
                svm.aborting = False  # if the HV refused; else the SVM is gone
        with self._in_flight(svm):
            rc = await hv.hcall(lpid, req, *args, msr_s=True)
        if req == H_SVM_INIT_DONE and rc == H_SUCCESS:
            svm.touch(True)
            svm.secure = True
        return rc

    @staticmethod
    @contextlib.contextmanager
    def _in_flight(svm: SvmState):
        """An hcall the UV issues for ``svm`` (an abort waits for these to return)."""
        svm.touch()
        svm.in_flight += 1
        try:
            yield
        finally:
            svm.touch()
            svm.in_flight -= 1
            if not svm.in_flight and svm.drained is not None:
                svm.drained.complete_all()
                svm.drained = None

    async def esm(self, lpid: int, necessary: Iterable[int], shares: range = range(0)) -> int:
        """UV_ESM: INIT_START, check the ESM blob against the VM's registered memory, page
        in the GFNs the SVM needs, share the ones it asks for, INIT_DONE; abort on failure
        (a blob naming pages outside the VM's memory aborts, and the guest gets the abort's
        H_PARAMETER, i.e. U_PARAMETER). Returns what the guest's UV_ESM returns."""
        if self.svm(lpid) is not None:
            return U_STATE
        svm = self.svms[lpid] = SvmState(lpid, transition="UV_ESM")
        svm.touch(True)
        try:
            rc = await self._issue(svm, H_SVM_INIT_START)
            if vm_state(self.hv.kvms[lpid]) == "Transient":  # (failed or not)
                self.m.hot(VM_TRANSIENT, lpid, "UV_ESM: H_SVM_INIT_START")
            svm.touch()
            if rc == H_SUCCESS and not (svm.covers(necessary) and svm.covers(shares)):
                rc = U_PARAMETER
            for gfn in necessary if rc == H_SUCCESS else ():
                async with self._serialised(lpid, gfn):
                    rc = await self._issue(svm, H_SVM_PAGE_IN, gfn << PAGE_SHIFT, 0,
                                           PAGE_SHIFT)
                if rc != H_SUCCESS:
                    break
            for gfn in shares if rc == H_SUCCESS else ():
                rc = await self.share(lpid, gfn)
                if rc != H_SUCCESS:
                    break
            if rc == H_SUCCESS:
                # INIT_DONE failing leaves the VM Transient, for its owner to terminate
                rc = await self._issue(svm, H_SVM_INIT_DONE)
                if rc == H_SUCCESS:
                    await self._out_of_state(svm)
                else:  # the UV's part is over: the rest is the owner's (outside the model)
                    self.m.cold(VM_TRANSIENT, lpid)
                return rc
            return await self._issue(svm, H_SVM_INIT_ABORT)
        finally:
            svm.touch(True)
            svm.transition = ""

    async def _out_of_state(self, svm: SvmState) -> None:
        """Hostile: after ESM, H_SVM_INIT_DONE again or H_SVM_INIT_START on the secure VM,
        with MSR_S, past the UV's own books (the HV checks neither's state)."""
        for what, req in (("init-done-twice", H_SVM_INIT_DONE),
                          ("init-start-secure", H_SVM_INIT_START)):
            if self._hostile(what):
                self.m.note(f"hostile UV: {NAMES[req]} on a secure VM")
                with self._in_flight(svm):
                    rc = await self.hv.hcall(svm.lpid, req, msr_s=True)
                self.m.note(f"hostile UV: {NAMES[req]} returned {rc}")

    async def _evict(self, lpid: int) -> None:
        """Hostile: before a firmware operation for SVM ``lpid``, the UV pages one of its
        secure GFNs out itself (H_SVM_PAGE_OUT with MSR_S; the HV runs
        kvmppc_h_svm_page_out, which calls UV_PAGE_OUT back)."""
        svm = self.svm(lpid)
        if svm is not None:
            svm.touch_all()
        if svm is None or not svm.secure or svm.aborting or not svm.frames or \
                not self._hostile("evict"):
            return
        gfn = self.m.random.choice(sorted(svm.frames))
        self.m.note(f"hostile UV: H_SVM_PAGE_OUT of GFN {gfn:#x}")
        with self._in_flight(svm):
            rc = await self.hv.hcall(lpid, H_SVM_PAGE_OUT, gfn << PAGE_SHIFT, 0, PAGE_SHIFT,
                                     msr_s=True)
        if rc != H_SUCCESS:
            self.m.note(f"hostile UV: H_SVM_PAGE_OUT of GFN {gfn:#x} returned {rc}")

    def check_pages(self, lpid: int, gfn: int, npages: int) -> int:
        """The checks of UV_SHARE_PAGE and UV_UNSHARE_PAGE(gfn, npages) before any page is
        touched: U_PARAMETER if the UV does not know the VM or ``gfn`` is not its memory,
        U_P2 if ``npages`` is 0 or the range runs past the VM's registered memory."""
        svm = self.svm(lpid)
        if svm is None or not svm.registered(gfn):
            return U_PARAMETER
        if not npages or not svm.covers(range(gfn, gfn + npages)):
            return U_P2
        return U_SUCCESS

    async def share(self, lpid: int, gfn: int) -> int:
        """UV_SHARE_PAGE for one page: the HV provides a normal page the UV maps shared."""
        svm = self.svm(lpid)
        if svm is None or not svm.registered(gfn):
            return U_PARAMETER
        if svm.aborting:
            return U_STATE
        await self._evict(lpid)
        self.m.racing(SHARE_VS_PAGE_IN, "Ultravisor._touch", gfn=gfn)
        async with self._serialised(lpid, gfn), self._requesting("share", gfn):
            for _ in range(20):  # a hostile UV retries when its own UV_PAGE_IN failed
                with self._in_flight(svm):
                    rc = await self.hv.hcall(lpid, H_SVM_PAGE_IN, gfn << PAGE_SHIFT,
                                             H_PAGE_IN_SHARED, PAGE_SHIFT, msr_s=True)
                if not self._injected.pop(self.m.ctl.current.name, False) or \
                        self.svm(lpid) is not svm or svm.aborting:
                    break
            return rc

    @contextlib.asynccontextmanager
    async def _serialised(self, lpid: int, gfn: int):
        """The faithful UV's exclusion for one GFN of one SVM: its page-in on a fault, its
        share and its unshare run one at a time, so none acts on a decision another made
        stale (a page-in decided before a share completed would copy the shared page into
        secure memory after the share and silently unshare it). The hostile UV skips it."""
        if "no-serialise" in self.misbehave:
            yield
            return
        lock = self._gfn_locks.get((lpid, gfn))
        if lock is None:
            lock = self._gfn_locks[(lpid, gfn)] = self.m.mutex(
                f"uv gfn {lpid}:{gfn:#x}", lock_class="uv_gfn_lock")
        await lock.lock()
        try:
            yield
        finally:
            lock.unlock()

    @contextlib.asynccontextmanager
    async def _requesting(self, what: str, gfn: int):
        me = self.m.ctl.current.name
        self.request[me] = (what, gfn)
        try:
            yield
        finally:
            del self.request[me]

    async def unshare(self, lpid: int, gfn: int) -> int:
        """UV_UNSHARE_PAGE for one page: page the shared page back into secure memory."""
        svm = self.svm(lpid)
        if svm is not None:
            svm.touch_gfn(gfn)
        if svm is None or gfn not in svm.shared:
            return self._unshared_behind(svm, gfn)
        if svm.aborting:
            return U_STATE
        await self._evict(lpid)
        async with self._serialised(lpid, gfn), self._requesting("unshare", gfn):
            svm.touch_gfn(gfn)
            if gfn not in svm.shared:  # unshared meanwhile by a vCPU that held the GFN
                return self._unshared_behind(svm, gfn)
            for _ in range(20):  # a hostile UV retries when its own UV_PAGE_IN failed
                with self._in_flight(svm):
                    rc = await self.hv.hcall(lpid, H_SVM_PAGE_IN, gfn << PAGE_SHIFT, 0,
                                             PAGE_SHIFT, msr_s=True)
                if not self._injected.pop(self.m.ctl.current.name, False) or \
                        self.svm(lpid) is not svm or svm.aborting:
                    break
            svm.touch_gfn(gfn)
            if rc != H_SUCCESS and gfn not in svm.shared:  # its stale page-in won the race
                return self._unshared_behind(svm, gfn)
            return rc

    @staticmethod
    def _unshared_behind(svm: SvmState | None, gfn: int) -> int:
        """UV_UNSHARE_PAGE of a GFN that is not shared: U_PARAMETER, unless the hostile
        UV's own stale page-in unshared it behind the SVM's back (then it is done)."""
        if svm is not None and gfn in svm.unshared_behind:
            svm.touch_gfn(gfn, True)
            svm.unshared_behind.discard(gfn)
            return U_SUCCESS
        return U_PARAMETER

    async def unshare_all_pages(self, lpid: int) -> int:
        """UV_UNSHARE_ALL_PAGES (the guest's kexec path): unshare every shared page."""
        svm = self.svm(lpid)
        if svm is None:
            return U_PARAMETER
        svm.touch_all()
        for gfn in sorted(svm.shared):
            rc = await self.unshare(lpid, gfn)
            svm.touch_gfn(gfn)
            if rc != H_SUCCESS and gfn in svm.shared:
                return rc
        return U_SUCCESS

    async def touch(self, lpid: int, gfn: int) -> tuple[Frame | None, bool]:
        """The frame an SVM access to ``gfn`` lands on, and whether it is normal memory the
        HV can read (a shared page). A paged-out page is paged back in first
        (H_SVM_PAGE_IN); a page whose content never reached the UV (a GFN that
        H_SVM_INIT_DONE moved without a copy) is a zero page. (None, False): not the
        SVM's."""
        svm = self.svms[lpid]
        svm.touch()
        if not svm.registered(gfn):
            return None, False
        await self._evict(lpid)
        self.m.racing(SHARE_VS_PAGE_IN, "Ultravisor.share", gfn=gfn)
        async with self._serialised(lpid, gfn):
            return await self._touch(svm, gfn)

    async def _touch(self, svm: SvmState, gfn: int) -> tuple[Frame | None, bool]:
        lpid, tries = svm.lpid, 20
        svm.touch_gfn(gfn)  # (and again after every call below, which ends the step)
        if gfn in svm.copying_out:  # (the window store-vs-pageout targets)
            self.m.note(f"the SVM touches GFN {gfn:#x} while the UV copies it out")
        while gfn not in svm.shared and gfn in svm.paged_out:
            rc = await self.hv.hcall(lpid, H_SVM_PAGE_IN, gfn << PAGE_SHIFT, 0, PAGE_SHIFT,
                                     msr_s=True)
            svm.touch_gfn(gfn)
            # a hostile UV may have shared the GFN meanwhile, the HV paged it in: look again;
            # or failed its own UV_PAGE_IN: try again (at most 20 times)
            if self._injected.pop(self.m.ctl.current.name, False) and tries:
                tries -= 1
                continue
            if rc == H_PARAMETER and not self.faithful and tries:
                # not collected: the hostile UV's own share of the GFN holds a reference
                # (gfn_to_pfn) to the page, and the HV did not retry the busy page (quirk
                # busy-page-fails) or ran out of retries; try again
                tries -= 1
                await self.m.yield_point("retry H_SVM_PAGE_IN (page not collected)")
                svm.touch_gfn(gfn)
                continue
            if rc != H_SUCCESS and gfn in svm.paged_out and gfn not in svm.shared:
                self.m.fail("svm-access", f"the UV cannot page GFN {gfn:#x} back in for the "
                            f"SVM: H_SVM_PAGE_IN returned {rc}")
        tries = 20  # refault while a hostile UV's own UV_PAGE_IN failed it (at most 20)
        while tries and gfn in svm.shared and gfn in svm.invalidated:  # reflected to the HV
            tries -= 1
            async with self._requesting("fault", gfn):
                rc = await self.hv.radix_page_fault(self.hv.kvms[lpid], gfn)
            svm.touch_gfn(gfn)
            if not self._injected.pop(self.m.ctl.current.name, False):
                break
        if gfn in svm.shared and gfn in svm.invalidated:
            self.m.fail("svm-access", f"the HV could not send shared GFN {gfn:#x} back to "
                        f"the UV after UV_PAGE_INVAL: the fault returned {rc}")
        if gfn in svm.shared:
            return self.memory.normal.get(svm.shared[gfn]), True
        if gfn not in svm.frames:
            svm.touch_gfn(gfn, True)
            svm.frames[gfn] = self.memory.secure.alloc()
            self.memory.secure[svm.frames[gfn]].zero = True
        return self.memory.secure[svm.frames[gfn]], False
