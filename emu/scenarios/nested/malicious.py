"""``malicious-l1``: an L1 hypervisor that hands L0 hostile ``hv_guest_state`` blocks,
``pt_regs``, H_TLB_INVALIDATE operands and partition-table registers, in its own byte
order (``endian=le``: L0's; ``be``: the other), and after each one runs a well-formed L2.

Two L1 vCPUs (in different TLB groups) each make ``calls`` hostile hcalls. Which forms
they make is the schedule's choice: drawn from ``FORMS`` with the machine's seeded random
source when the scenario is built, so a schedule (and its replay) is a function of its
seed. Every hcall's return code must be exactly the kernel's for that form; after each,
the L1 vCPU runs an L2 vCPU of guest 1 that stores to and loads from a page L1 mapped at
boot: on an L1 of L0's byte order H_ENTER_NESTED returns its H_CEDE (0xC00); on the other
order H_AUTHORITY (from v5.12 the write-back sizes the block from the already swapped
version: README, "A finding in the kernel's code"), so L1 checks that the store landed by
reading the page itself. The machine's invariants run throughout, sanitisation among them
(L2 never entered with a value L0 forbids): ``no-tm-sanitise`` (B9) and
``no-hfscr-sanitise`` are found by it.

The forms, with the newest kernel's answer (PARM H_PARAMETER, MODE H_BAD_MODE, OK
H_SUCCESS; "runs": L2 runs, sanitised, and the hcall returns its exit, or H_AUTHORITY on
the other byte order). H_ENTER_NESTED (``kvmhv_enter_nested_guest``; END is the end of
L1's one memslot, 32 MiB):

| form                                    | why                                     | answer       |
|-----------------------------------------|-----------------------------------------|--------------|
| version 0, 3, 2**64-1                   | hv_guest_state_size < 0: read fails     | PARM         |
| version 2**32+2                         | sized by its low 32 bits (248), then >2 | H_P2         |
| LPCR all ones; TC, AIL=1, LPES, HDICE   | load_l2_hv_regs keeps L0's bits         | runs         |
| HFSCR all ones; TM + MSGP + cause       | masked by hfscr_permitted               | runs         |
| DAWRX0/1 HYP; CIABR PRIV=HYPER          | HYP cleared; PRIV cleared               | runs         |
| L1 transactional (block fine, or not    | MSR_TM_TRANSACTIONAL(L1): before any    | MODE         |
| even readable)                          | read                                    |              |
| L1 suspended, L2 TS 0                   | L2 must be TM-active                    | MODE         |
| L1 suspended, L2 transactional          | the one legal TM entry; L1 comes back   | runs         |
|                                         | suspended                               |              |
| L1 suspended, L2 TS 0b11 (reserved)     | MSR_TM_ACTIVE counts 0b11               | runs         |
| L1 not in TM, L2 transactional / 0b11   | L2 TS must be 0                         | MODE         |
| whole block in the other byte order     | the swapped version sizes as -1         | PARM         |
| lpid / vcpu_token in the other order    | swab32 of a small value is >= 1 << 24:  | PARM         |
|                                         | beyond the table / >= NR_CPUS           |              |
| pt_regs in the other byte order         | NIP swapped: no code there              | runs (0x700) |
| vcpu_token NR_CPUS, 2**32-1             | prev_cpu[] is NR_CPUS long              | PARM         |
| lpid 256, 2**32-1                       | beyond L1's 256-entry partition table   | PARM         |
| lpid 0; lpid 7 (no PATE)                | created with l1_gr_to_hr 0: the first   | runs (0xE00) |
|                                         | fault goes back to L1                   |              |
| block at END-100, at END, at 2**64-4;   | kvm_vcpu_read_guest fails               | PARM         |
| pt_regs at END-100                      |                                         |              |
| a version-1 block ending at END         | 232 bytes read and written back         | runs         |

H_TLB_INVALIDATE (``kvmhv_emulate_priv_tlbie``) and H_SET_PARTITION_TABLE:

| form                                                     | answer |
|----------------------------------------------------------|--------|
| R=0; PRS=1; RIC=3; IS=1; IS=0 with RIC 1 or 2            | PARM   |
| IS=0 with AP 3 (none); AP 7 on an lpid with no guest     | PARM   |
| IS=0: EPN beyond the 52-bit range (aliases the page), at | OK     |
| the top; a 2M and a 4K AP on the page                    |        |
| lpid 0 (RIC=2); lpid 9 (none); lpid 2**32-1; the lpid in | OK     |
| RS's high half; instruction bits above the 32-bit image  |        |
| IS=3 with RIC 1 and 2                                    | OK     |
| PTCR of 2**21 bytes (over 4096 entries); base beyond END | PARM   |

1 GiB IS=0 pages are left out: the kernel removes one shadow PTE per 64K (16,384 mmu_lock
sections), which a step budget does not want; tests/test_nested_fuzz.py covers them.

The H_ENTER_NESTED code a call must get is worked out from the bytes L1 stored
(``kernel_code``: the pure readers of emu/kvm/hv_guest_state.py and the TM gate of
emu/kvm/nested_regs.py, in the kernel's check order; for the newest kernel it gives the
table above, which tests/test_nested_malicious.py checks), so under ``--kernel`` an older
release's answers are the ones accepted (version 1 only before v5.12, the pt_regs read
after the version check before v5.9, no TM checks where B9 is on).

Two readings of the kernel these forms led to (pinned in tests/test_nested_malicious.py,
not checked here): an EPN beyond 2**52 clears the shadow PTE that the masked table index
finds but tlbies the unmasked address, so where the TLB compares those bits the entry
outlives its PTE, and a later L0 unmap of the L1 page (no host reclaim runs here) leaves L2
a translation to a freed page; and L1 suspended lets L2 in with the reserved TS 0b11.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from ...actors.guest_code import Ld, Map, St
from ...actors.l1_hypervisor import PTBL_ENTRIES, L1Hypervisor, L2Vcpu
from ...actors.nested_cpu import BOOK3S_INTERRUPT_PROGRAM, BOOK3S_INTERRUPT_SYSCALL
from ...hw.memory import PAGE_SHIFT
from ...hw.radix import PAGE_ACCESSED, PAGE_DIRTY, PAGE_RWX, encode_ptcr, make_pte
from ...kvm import hv_guest_state as hgs
from ...kvm import nested_regs as nr
from ...kvm.enter_nested import NO_TM_SANITISE, KvmVcpu
from ...kvm.hvcall import (
    H_AUTHORITY,
    H_BAD_MODE,
    H_ENTER_NESTED,
    H_P2,
    H_PARAMETER,
    H_SET_PARTITION_TABLE,
    H_SUCCESS,
    H_TLB_INVALIDATE,
    MASK64,
)
from ...kvm.radix_mmu import BOOK3S_INTERRUPT_H_DATA_STORAGE
from ...kvm.tlbie_operands import IS_ADDR, IS_ALL, IS_LPID, IS_PID, encode_tlbie
from ...kvm.vm import NR_CPUS
from ...machines.nested import L1_PAGES, NestedMachine
from ...sim import Machine, Param
from ...sim.releases import version
from .common import EA, boot_guest, machine, nested_scenario, other_group

QUIRK_SCENARIO = {"no-tm-sanitise": "malicious-l1", "no-hfscr-sanitise": "malicious-l1"}
QUIRK_PARAMS: dict[str, dict[str, object]] = {}

END = L1_PAGES << PAGE_SHIFT
"""The end of L1's memory (its one memslot)."""
SYSCALL = BOOK3S_INTERRUPT_SYSCALL
HDSI = BOOK3S_INTERRUPT_H_DATA_STORAGE
U32 = 0xFFFF_FFFF
_U32_FIELDS = {"lpid": 8, "vcpu_token": 12}
"""The u32 fields of hv_guest_state and their byte offsets (emu/kvm/hv_guest_state.py)."""
_TOKENS = 8
"""vcpu_tokens per L1 vCPU: its well-formed L2 vCPU is 8 * vcpu, its hostile ones 8 * vcpu
+ 1 (one L1 vCPU's tokens are never another's: prev_cpu[] is per token)."""


def _visible(ptr: int, data: bytes) -> bytes:
    """What L0 can read of ``data`` stored at ``ptr``: the part inside L1's memory."""
    return data[:END - ptr] if ptr < END else b""


# ------------------------------------------------------------------ the forms
@attrs.frozen
class EnterForm:
    """A hostile H_ENTER_NESTED: the L2 vCPU's blocks as L1 would store them, changed."""

    name: str
    rc: int | None
    """The newest kernel's answer; None: L2 runs and the hcall returns its exit, ``trap``
    (or H_AUTHORITY where the write-back fails)."""
    hv: Mapping[str, int] = attrs.field(factory=dict)
    """hv_guest_state fields that differ from the well-formed block."""
    l1_ts: int = 0
    """L1's MSR[TS] at the hcall."""
    l2_ts: int = 0
    """L2's MSR[TS] in the pt_regs."""
    swapped: frozenset[str] = frozenset()
    """What is stored in the other byte order: "block", "regs", or a u32 field."""
    hv_ptr: int | None = None
    """r4 (None: the L2 vCPU's own page); the block is stored there as far as L1's memory
    goes."""
    regs_ptr: int | None = None
    layout: int | None = None
    """The hv_guest_state layout stored (None: the L1's own version)."""
    trap: int = SYSCALL

    def blocks(self, hv: hgs.HvGuestState, regs: tuple[int, ...], home: tuple[int, int], *,
               big_endian: bool) -> tuple[int, bytes, int, bytes]:
        """(r4, the block's bytes, r5, the pt_regs' bytes) for an L2 vCPU whose well-formed
        state is ``hv`` and ``regs``, its blocks at ``home``."""
        layout = self.layout or hv.version
        state = attrs.evolve(hv, **self.hv)
        block = bytearray(hgs.encode(state, big_endian=big_endian != ("block" in self.swapped),
                                     version=layout))
        for name, offset in _U32_FIELDS.items():
            if name in self.swapped:
                block[offset:offset + 4] = getattr(state, name).to_bytes(
                    4, "little" if big_endian else "big")
        msr = (regs[hgs.PT_MSR] & ~nr.MSR_TS_MASK) | self.l2_ts
        regs_bytes = hgs.encode_pt_regs((*regs[:hgs.PT_MSR], msr, *regs[hgs.PT_MSR + 1:]),
                                        big_endian=big_endian != ("regs" in self.swapped))
        hv_ptr = home[0] if self.hv_ptr is None else self.hv_ptr
        regs_ptr = home[1] if self.regs_ptr is None else self.regs_ptr
        return hv_ptr, bytes(block), regs_ptr, regs_bytes

    async def call(self, l1: HostileL1) -> None:
        v = l1.l2_vcpu(1)
        hv_ptr, hv, regs_ptr, regs = self.blocks(
            v.hv, tuple(v.regs), (v.hv_addr, v.regs_addr), big_endian=l1.big_endian)
        tables = l1.h.kernel.tables
        tables.write_bytes(hv_ptr, _visible(hv_ptr, hv))
        tables.write_bytes(regs_ptr, _visible(regs_ptr, regs))
        kv = l1.kvm_vcpu
        kv.msr = (kv.msr & ~nr.MSR_TS_MASK) | self.l1_ts  # (tbegin, tsuspend)
        rc = l1.kernel_code(self, hv_ptr, hv, regs_ptr, regs)
        await l1.h.hcall(H_ENTER_NESTED, hv_ptr, regs_ptr, accept={rc})
        kv.msr &= ~nr.MSR_TS_MASK  # L1 leaves TM (tend, or treclaim when L2 left it suspended)


def kernel_code(form: EnterForm, hv_ptr: int, hv: bytes, regs_ptr: int, regs: bytes, *,
                big_endian: bool, release: str | None, quirks: tuple[str, ...]) -> int:
    """What ``kvmhv_enter_nested_guest`` answers (on a little-endian L0) when L1 stored
    ``hv`` at ``hv_ptr`` and ``regs`` at ``regs_ptr``: the first failing check, in the
    kernel's order (emu/kvm/enter_nested.py's table, read through the pure functions), or,
    when L2 runs, its exit ``form.trap`` unless the write-back writes nothing (H_AUTHORITY).
    The TM checks are the quirk's, as the model's are."""
    rel = None if release is None else version(release)
    tm = NO_TM_SANITISE not in quirks
    if tm and nr.check_l1_not_transactional(form.l1_ts):
        return H_BAD_MODE
    got = hgs.read_guest_state(_visible(hv_ptr, hv), l1_big_endian=big_endian,
                               l0_big_endian=False, release=rel)
    l2_regs = hgs.read_pt_regs(_visible(regs_ptr, regs), l1_big_endian=big_endian)
    b7_order = rel is None or rel >= (5, 9)  # the pt_regs read moved before the version check
    if got.rc == H_PARAMETER or (got.rc != H_SUCCESS and not b7_order):
        return got.rc
    if l2_regs is None:
        return H_PARAMETER
    if got.state is None:
        return got.rc
    if got.state.vcpu_token >= NR_CPUS:
        return H_PARAMETER
    if tm and nr.check_tm_state(form.l1_ts, l2_regs[hgs.PT_MSR]):
        return H_BAD_MODE
    if got.state.lpid >= PTBL_ENTRIES:  # kvmhv_get_nested: beyond the partition table
        return H_PARAMETER
    back = hgs.write_guest_state(got.state, l1_big_endian=big_endian, l0_big_endian=False,
                                 release=rel)
    return form.trap if back is not None else H_AUTHORITY


@attrs.frozen
class TlbieForm:
    """A hostile H_TLB_INVALIDATE; ``on_page``: IS=0 names the page this L1 vCPU's L2 uses,
    with ``high`` (address bits) OR'd in."""

    name: str
    rc: int
    ric: int = 0
    prs: int = 0
    r: int = 1
    is_: int = IS_LPID
    ap: int = 5
    lpid: int = 1
    on_page: bool = False
    high: int = 0
    epn: int = 0
    r4_high: int = 0
    """Bits above the 32-bit instruction image (the kernel's ``unsigned int instr``)."""
    rs_high: int = 0
    """Bits above RS's 32-bit lpid."""

    def operands(self, page: int) -> tuple[int, int, int]:
        epn = (page | self.high) >> 12 if self.on_page else self.epn
        r4, r5, r6 = encode_tlbie(ric=self.ric, prs=self.prs, r=self.r, lpid=self.lpid,
                                  is_=self.is_, ap=self.ap, epn=epn)
        return r4 | self.r4_high, r5 | self.rs_high, r6

    async def call(self, l1: HostileL1) -> None:
        await l1.h.hcall(H_TLB_INVALIDATE, *self.operands(l1.page), accept={self.rc})


@attrs.frozen
class PtcrForm:
    """A hostile H_SET_PARTITION_TABLE (refused, so L0 keeps L1's table)."""

    name: str
    ptcr: int
    rc: int = H_PARAMETER

    async def call(self, l1: HostileL1) -> None:
        await l1.h.hcall(H_SET_PARTITION_TABLE, self.ptcr, accept={self.rc})


WELL_FORMED = EnterForm("well-formed", None)
"""The blocks as L1Hypervisor.enter stores them: L2 runs to its H_CEDE (0xC00), or, on the
other byte order from v5.12, H_AUTHORITY."""
TS_T, TS_S, TS_RESV = nr.MSR_TS_T, nr.MSR_TS_S, nr.MSR_TS_MASK
FORMS: tuple[EnterForm | TlbieForm | PtcrForm, ...] = (
    EnterForm("version 0", H_PARAMETER, {"version": 0}),
    EnterForm("version 3", H_PARAMETER, {"version": 3}),
    EnterForm("version 2**64-1", H_PARAMETER, {"version": MASK64}),
    EnterForm("version 2**32+2", H_P2, {"version": (1 << 32) + 2}, layout=2),
    EnterForm("LPCR all ones", None, {"lpcr": MASK64}),
    EnterForm("LPCR TC, AIL=1, LPES, HDICE", None,
              {"lpcr": nr.LPCR_TC | 0x80_0000 | nr.LPCR_LPES | 0x1}),
    EnterForm("HFSCR all ones", None, {"hfscr": MASK64}),
    EnterForm("HFSCR TM and MSGP", None,
              {"hfscr": nr.HFSCR_TM | nr.HFSCR_MSGP | nr.HFSCR_FP | 0x2A << 56}),
    EnterForm("DAWRX0/1 HYP", None, {"dawrx0": nr.DAWRX_HYP | nr.DAWRX_KERNEL,
                                     "dawrx1": nr.DAWRX_HYP}),
    EnterForm("CIABR PRIV=HYPER", None, {"ciabr": 0x7000 | nr.CIABR_PRIV_HYPER}),
    EnterForm("L1 transactional", H_BAD_MODE, l1_ts=TS_T),
    EnterForm("L1 transactional, block unreadable", H_BAD_MODE, l1_ts=TS_T, hv_ptr=END),
    EnterForm("L1 suspended, L2 TS 0", H_BAD_MODE, l1_ts=TS_S),
    EnterForm("L1 suspended, L2 transactional", None, l1_ts=TS_S, l2_ts=TS_T),
    EnterForm("L1 suspended, L2 TS 0b11", None, l1_ts=TS_S, l2_ts=TS_RESV),
    EnterForm("L2 transactional", H_BAD_MODE, l2_ts=TS_T),
    EnterForm("L2 TS 0b11", H_BAD_MODE, l2_ts=TS_RESV),
    EnterForm("block in the other byte order", H_PARAMETER, swapped=frozenset({"block"})),
    EnterForm("lpid in the other byte order", H_PARAMETER, swapped=frozenset({"lpid"})),
    EnterForm("vcpu_token in the other byte order", H_PARAMETER,
              swapped=frozenset({"vcpu_token"})),
    EnterForm("pt_regs in the other byte order", None, swapped=frozenset({"regs"}),
              trap=BOOK3S_INTERRUPT_PROGRAM),
    EnterForm("vcpu_token NR_CPUS", H_PARAMETER, {"vcpu_token": NR_CPUS}),
    EnterForm("vcpu_token 2**32-1", H_PARAMETER, {"vcpu_token": U32}),
    EnterForm("lpid 256", H_PARAMETER, {"lpid": PTBL_ENTRIES}),
    EnterForm("lpid 2**32-1", H_PARAMETER, {"lpid": U32}),
    EnterForm("lpid 0", None, {"lpid": 0}, trap=HDSI),
    EnterForm("lpid 7, no PATE", None, {"lpid": 7}, trap=HDSI),
    EnterForm("block straddling END", H_PARAMETER, hv_ptr=END - 100),
    EnterForm("block at END", H_PARAMETER, hv_ptr=END),
    EnterForm("block across 2**64", H_PARAMETER, hv_ptr=(1 << 64) - 4),
    EnterForm("pt_regs straddling END", H_PARAMETER, regs_ptr=END - 100),
    EnterForm("version-1 block ending at END", None, {"version": 1}, hv_ptr=END - 232,
              layout=1),
    TlbieForm("R=0 (hash)", H_PARAMETER, r=0),
    TlbieForm("PRS=1", H_PARAMETER, prs=1),
    TlbieForm("RIC=3", H_PARAMETER, ric=3),
    TlbieForm("IS=1 (PID)", H_PARAMETER, is_=IS_PID),
    TlbieForm("IS=0 RIC=1", H_PARAMETER, ric=1, is_=IS_ADDR, on_page=True),
    TlbieForm("IS=0 RIC=2", H_PARAMETER, ric=2, is_=IS_ADDR, on_page=True),
    TlbieForm("AP 3", H_PARAMETER, is_=IS_ADDR, ap=3, on_page=True),
    TlbieForm("AP 7, lpid 9", H_PARAMETER, is_=IS_ADDR, ap=7, lpid=9),
    TlbieForm("EPN beyond 2**52", H_SUCCESS, is_=IS_ADDR, on_page=True, high=1 << 60),
    TlbieForm("EPN at the top", H_SUCCESS, is_=IS_ADDR, epn=(1 << 52) - 1),
    TlbieForm("IS=0 2M", H_SUCCESS, is_=IS_ADDR, ap=1, on_page=True),
    TlbieForm("IS=0 4K", H_SUCCESS, is_=IS_ADDR, ap=0, on_page=True),
    TlbieForm("lpid 0 RIC=2", H_SUCCESS, ric=2, lpid=0),
    TlbieForm("lpid 9", H_SUCCESS, is_=IS_ADDR, lpid=9, on_page=True),
    TlbieForm("lpid 2**32-1", H_SUCCESS, lpid=U32),
    TlbieForm("lpid in RS's high half", H_SUCCESS, rs_high=U32 << 32),
    TlbieForm("instruction bits above 32", H_SUCCESS, ric=2, is_=IS_ALL, r4_high=U32 << 32),
    TlbieForm("IS=3 RIC=1", H_SUCCESS, ric=1, is_=IS_ALL),
    TlbieForm("IS=3 RIC=2", H_SUCCESS, ric=2, is_=IS_ALL),
    PtcrForm("PTCR of 2**21 bytes", encode_ptcr(0x1000_0000, 1 << 21)),
    PtcrForm("PTCR base beyond END", encode_ptcr(END, 1 << 12)),
)


# ------------------------------------------------------------------ the L1
class HostileL1:
    """One L1 vCPU of the scenario: its page of guest 1 (mapped in L1's table at boot) and
    its L2 vCPUs."""

    def __init__(self, mach: NestedMachine, h: L1Hypervisor) -> None:
        self.m: Machine = mach.m
        self.h = h
        self.big_endian = mach.kernel.big_endian
        self.kvm_vcpu: KvmVcpu = mach.kvm_vcpus[mach.vcpus[h.vcpu].name]
        """L0's struct kvm_vcpu of this L1 vCPU (its MSR is L1's TM state)."""
        self.page = page_of(h.vcpu)
        self.ea = EA + (h.vcpu << 16)
        self.runs = 0

    def l2_vcpu(self, hostile: int) -> L2Vcpu:
        """A new L2 vCPU of guest 1 (token 8 * vcpu + ``hostile``) that stores the next
        value to this L1 vCPU's page and loads it back."""
        self.runs += 1
        return self.h.l2_vcpu(1, _TOKENS * self.h.vcpu + hostile,
                              [Map(self.ea, self.page), St(self.ea, self.runs),
                               Ld(self.ea, self.runs)])

    def kernel_code(self, form: EnterForm, hv_ptr: int, hv: bytes, regs_ptr: int,
                    regs: bytes) -> int:
        return kernel_code(form, hv_ptr, hv, regs_ptr, regs, big_endian=self.big_endian,
                           release=self.m.release, quirks=self.m.quirks)

    async def well_formed(self) -> None:
        """Run an L2 vCPU to its end; L1 then reads the value it stored from the page."""
        v = self.l2_vcpu(0)
        rc = self.kernel_code(WELL_FORMED, *WELL_FORMED.blocks(
            v.hv, tuple(v.regs), (v.hv_addr, v.regs_addr), big_endian=self.big_endian))
        await self.h.run(v, accept={rc})
        stored = await self.h.read(self.h.kernel.backing(1, self.page))
        if stored != self.runs:
            self.m.fail("integrity", f"L1 vcpu{self.h.vcpu} reads {stored} from its L2's page "
                        f"{self.page:#x}, where the L2 stored {self.runs}")


def page_of(vcpu: int) -> int:
    """The L2 real page of guest 1 that L1 vCPU ``vcpu``'s L2 vCPUs use."""
    return (vcpu + 1) << PAGE_SHIFT


def premap(h: L1Hypervisor, vcpus: int) -> None:
    """L1 maps each L1 vCPU's page of guest 1 (referenced and changed), so its L2 never
    faults to L1 (an L1 of the other byte order never learns where a fault was)."""
    tree = h.kernel.guests[1].tree
    for vcpu in range(vcpus):
        page = page_of(vcpu)
        tree.insert(page, make_pte(h.kernel.backing(1, page),
                                   PAGE_RWX | PAGE_ACCESSED | PAGE_DIRTY), PAGE_SHIFT)


@nested_scenario(
    "malicious-l1",
    endian=Param("le", "the L1's byte order (L0 is little-endian)", choices=("le", "be")),
    calls=Param(3, "hostile hcalls per L1 vCPU", minimum=1, maximum=16))
def malicious_l1(m: Machine, topology: str, moves: int, endian: str, calls: int) -> None:
    """Two L1 vCPUs each make ``calls`` hostile hcalls (forms the seed picks), each followed
    by a well-formed run of an L2 vCPU; every return code is the kernel's for its form."""
    mach = machine(m, topology, moves, l1_big_endian=endian == "be")
    picks = [[FORMS[m.random.randrange(len(FORMS))] for _ in range(calls)] for _ in range(2)]
    booted = m.completion("L1 booted")

    async def l1(h: L1Hypervisor) -> None:
        if h.vcpu == 0:
            await boot_guest(h)
            premap(h, len(picks))
            booted.complete_all()
        await booted.wait_for_completion()
        me = HostileL1(mach, h)
        for form in picks[h.vcpu]:
            m.note(f"hostile: {form.name}")
            await form.call(me)
            await me.well_formed()

    mach.l1_vcpu(l1, 0)
    mach.l1_vcpu(l1, other_group(mach))
