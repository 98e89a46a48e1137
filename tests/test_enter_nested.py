"""H_ENTER_NESTED in L0 (emu/kvm/enter_nested.py): byte access to L1 memory, the check order
(the first failing check wins), both endiannesses end to end through L1's memory bytes, the
exit state and L1's restoration, release keying, the sanitisation invariant, the quirks
B7 / B9 / no-hfscr-sanitise found by Machine-driven hunts and absent without them, and a
fuzz of adversarial argument sets over every release profile.

Expected values are worked out from the kernel lines the module cites (book3s_hv_nested.c,
book3s_hv.c), not from the module. Fixed seeds; the fuzz is derandomized."""

from __future__ import annotations

import attrs
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import emu
from emu.hw.memory import FramePool
from emu.hw.radix import Pate, TableMemory, encode_ptcr, pate_address
from emu.kvm import enter_nested as en
from emu.kvm import hv_guest_state as hgs
from emu.kvm import nested_regs as nr
from emu.kvm.hvcall import (
    H_AUTHORITY,
    H_BAD_MODE,
    H_ENTER_NESTED,
    H_FUNCTION,
    H_INTERRUPT,
    H_NOT_AVAILABLE,
    H_P2,
    H_PARAMETER,
    H_TOO_HARD,
    MASK64,
    PAGE_SHIFT,
    PAGE_SIZE,
)
from emu.kvm.nested import NESTED_QUIRKS, L1Host, LpidPool
from emu.kvm.vm import KVM, NR_CPUS, kvm_delete_memslot
from emu.sim.controller import Controller
from emu.sim.machine import Machine
from emu.sim.releases import version
from emu.sim.strategies import RandomWalk

# L1's memory: 64 KiB pages; gfn 3 is a hole, gfns 4 and 5 are adjacent slots
SLOTS = ((0, 0, 1), (1, 1, 2), (2, 4, 1), (3, 5, 1))
"""(slot id, base gfn, pages)."""
NPAGES = 6
PTCR = encode_ptcr(0x1000, 4096)  # 256 partition-table entries, in slot 0
LPID = 3
HV_ADDR, REGS_ADDR = 0x10000, 0x10400  # in slot 1
HOLE = 3 << PAGE_SHIFT
HDEC = 0x980  # BOOK3S_INTERRUPT_HV_DECREMENTER
HDSI = en.BOOK3S_INTERRUPT_H_DATA_STORAGE
HISI = en.BOOK3S_INTERRUPT_H_INST_STORAGE
HEAI = en.BOOK3S_INTERRUPT_H_EMUL_ASSIST
HFAC = en.BOOK3S_INTERRUPT_H_FAC_UNAVAIL
SYSCALL = 0xC00
VCORE_LPCR = (4 << 52) | 0x1  # DPFD 4 and HDICE (outside the mask L1 may change)
L1_MSR = en.MSR_SF | en.MSR_ME
PROFILES = (None, "v4.20", "v5.4", "v5.8", "v5.9", "v5.12", "v5.13", "v5.14", "v5.15",
            "v5.16", "v5.19")
"""Every release the module keys something on, and the newest (None)."""
U64 = st.integers(0, MASK64)


def swab64(v: int) -> int:
    return int.from_bytes(v.to_bytes(8, "big"), "little")


def signed(v: int) -> int:
    return v - (1 << 64) if v >> 63 else v


# ------------------------------------------------------------------------ the harness
@attrs.define(eq=False)
class L1Memory:
    """L1's memory as bytes: a doubleword is visible where a memslot of the L1's KVM holds
    it, and writable unless its page is in ``read_only``."""

    kvm: KVM
    read_only: frozenset[int] = frozenset()
    data: bytearray = attrs.Factory(lambda: bytearray(NPAGES * PAGE_SIZE))

    def _visible(self, addr: int) -> bool:
        return addr + 8 <= len(self.data) and \
            self.kvm.gfn_to_memslot(addr >> PAGE_SHIFT) is not None

    def read_guest(self, addr: int) -> int | None:
        return int.from_bytes(self.data[addr:addr + 8], "big") if self._visible(addr) else None

    def write_guest(self, addr: int, value: int) -> bool:
        if not self._visible(addr) or addr >> PAGE_SHIFT in self.read_only:
            return False
        self.data[addr:addr + 8] = value.to_bytes(8, "big")
        return True

    def store(self, addr: int, raw: bytes) -> None:
        """L1 writes ``raw`` at ``addr`` (what falls outside its memory is dropped)."""
        lo, hi = max(addr, 0), min(addr + len(raw), len(self.data))
        if lo < hi:
            self.data[lo:hi] = raw[lo - addr:hi - addr]

    def visible_prefix(self, snapshot: bytes, addr: int, n: int) -> bytes:
        """The bytes of ``snapshot`` from ``addr`` up to the first invisible one (at most n)."""
        end = addr
        while end < addr + n and self._visible(end & ~7):
            end = (end & ~7) + 8
        return snapshot[addr:min(end, addr + n)]


def make_l1(m: Machine, *, quirks: tuple[str, ...] = (),
            read_only: frozenset[int] = frozenset()) -> tuple[L1Host, L1Memory]:
    """L1's KVM (the release is the machine's), its memory, and L0's view of it."""
    kvm = KVM(m, 1, None)  # type: ignore[arg-type]
    for slot_id, base, npages in SLOTS:
        kvm.add_memslot(slot_id, base, npages)
    mem = L1Memory(kvm, read_only)
    pate = Pate.radix(0x8000, 0)
    addr = pate_address(PTCR, LPID)
    mem.store(addr, pate.dw0.to_bytes(8, "big") + pate.dw1.to_bytes(8, "big"))
    l1 = L1Host(kvm, LpidPool(4096, reserved=(0, 1)), TableMemory(FramePool("l0")),
                read_guest=mem.read_guest, write_guest=mem.write_guest,
                flush_lpid=lambda lpid: None, set_ptbl_entry=lambda lpid, dw0, dw1: None,
                quirks=quirks, l1_ptcr=PTCR)
    return l1, mem


def regs_with(**words: int) -> tuple[int, ...]:
    regs = [0] * hgs.PT_REGS_WORDS
    for name, value in words.items():
        regs[int(name[1:]) if name[1:].isdigit() else getattr(hgs, f"PT_{name.upper()}")] = \
            value
    return tuple(regs)


GOOD_STATE = hgs.HvGuestState(
    version=2, lpid=LPID, vcpu_token=1, lpcr=nr.LPCR_ILE, pcr=0x10, hfscr=nr.HFSCR_FP,
    tb_offset=-100, dawr0=0x5000, dawrx0=nr.DAWRX_USER, ciabr=0x7000 | nr.CIABR_PRIV_USER,
    hdec_expiry=10_000, purr=1, spurr=2, ic=3, vtb=4, srr0=0x700, srr1=0x9000,
    sprg=(11, 12, 13, 14), pidr=5, cfar=0x800, ppr=0x3 << 50, dawr1=0x6000,
    dawrx1=nr.DAWRX_KERNEL)
GOOD_REGS = regs_with(r1=0x1000, r3=0x33, nip=0x4000, msr=en.MSR_SF | en.MSR_LE, ccr=7)


@attrs.frozen
class Exit:
    """What the fake L2 does before it exits: its trap (or -EINTR), and its state then."""

    trap: int = HDEC
    mmio: bool = False
    msr: int | None = None
    """L2's MSR at the exit (None: as it entered)."""
    r3: int = 0x5A
    fault_dar: int = 0xDA00
    fault_dsisr: int = 0x4200_0000
    fault_gpa: int = 0x6A00
    emul_inst: int = 0x7C00_0008
    cause: int = 0x1A
    """The HFSCR cause byte an HFAC exit sets."""
    ticks: int = 1000
    """How far purr, spurr, ic and vtb advance while L2 runs."""


@attrs.frozen
class Setup:
    release: str | None = None
    quirks: tuple[str, ...] = ()
    nesting: bool = True
    ptcr: int = PTCR
    l1_be: bool = False
    l0_be: bool = False
    l1_ts: int = 0
    state: hgs.HvGuestState = GOOD_STATE
    layout: int = 2
    regs: tuple[int, ...] = GOOD_REGS
    hv_ptr: int = HV_ADDR
    regs_ptr: int = REGS_ADDR
    read_only: frozenset[int] = frozenset()
    l1_hfscr: int = en.HFSCR_DEFAULT
    hfscr_permitted: int = en.HFSCR_DEFAULT
    prefetch_bug: bool = False
    exit: Exit = Exit()


@attrs.frozen
class Seen:
    """What run_l2 was entered with."""

    regs: tuple[int, ...]
    msr: int
    hv: nr.HvRegs
    pcr: int
    hdec_exp: int
    tb_offset: int
    dec_expires: int
    lpid: int
    token: int
    nested_hfscr: int
    other: tuple[int, ...]
    """srr0, srr1, sprg..., pid, cfar, ppr, dawr0, dawr1, purr, spurr, ic, vtb, dpdes."""


@attrs.frozen
class Outcome:
    rc: int
    """The hcall's return code as L1's r3 would carry it (H_INTERRUPT / H_TOO_HARD from the
    run-loop code, since r3 is 0 for those)."""
    ret: int
    r3: int
    vcpu: en.KvmVcpu
    mem: L1Memory
    before: bytes
    seen: tuple[Seen, ...]
    violations: tuple


def _seen(vcpu: en.KvmVcpu, hdec_exp: int, lpcr: int) -> Seen:
    vc = vcpu.vcore
    return Seen(vcpu.regs, vcpu.msr, nr.HvRegs(lpcr, vcpu.hfscr, vcpu.dawrx0, vcpu.dawrx1,
                                                vcpu.ciabr),
                vc.pcr, hdec_exp, vc.tb_offset, vcpu.dec_expires, vcpu.nested.l1_lpid,
                vcpu.nested_vcpu_id, vcpu.nested_hfscr,
                (vcpu.srr0, vcpu.srr1, *vcpu.sprg, vcpu.pid, vcpu.cfar, vcpu.ppr, vcpu.dawr0,
                 vcpu.dawr1, vcpu.purr, vcpu.spurr, vcpu.ic, vc.vtb, vc.dpdes))


def fake_l2(m: Machine, ex: Exit, seen: list[Seen]) -> en.RunL2:
    async def run_l2(vcpu: en.KvmVcpu, hdec_exp: int, lpcr: int) -> int:
        seen.append(_seen(vcpu, hdec_exp, lpcr))
        await m.point("L2 runs")
        en.kvmppc_set_gpr(vcpu, 3, ex.r3)
        if ex.msr is not None:
            vcpu.msr = ex.msr
        for name in ("purr", "spurr", "ic"):
            setattr(vcpu, name, (getattr(vcpu, name) + ex.ticks) & MASK64)
        vcpu.vcore.vtb = (vcpu.vcore.vtb + ex.ticks) & MASK64
        vcpu.srr0 = 0xE00D
        vcpu.fault_dar, vcpu.fault_dsisr = ex.fault_dar, ex.fault_dsisr
        vcpu.fault_gpa, vcpu.emul_inst = ex.fault_gpa, ex.emul_inst
        if ex.trap == HFAC:
            vcpu.hfscr = (vcpu.hfscr & ~nr.HFSCR_INTR_CAUSE) | ex.cause << 56
        if ex.mmio:
            vcpu.mmio_needed, vcpu.io_gpr = True, 9  # a load into GPR 9
        return ex.trap
    return run_l2


def make_vcpu(s: Setup) -> en.KvmVcpu:
    regs = regs_with(r3=H_ENTER_NESTED, r4=s.hv_ptr, r5=s.regs_ptr)
    return en.KvmVcpu(
        vcore=en.KvmppcVcore(lpcr=VCORE_LPCR, pcr=0, tb_offset=1000, vtb=40),
        msr=L1_MSR | (0 if s.l1_be else en.MSR_LE) | s.l1_ts, regs=regs, hfscr=s.l1_hfscr,
        hfscr_permitted=s.hfscr_permitted, purr=100, spurr=200, ic=300, srr0=0x1111,
        dec_expires=5000, l0_big_endian=s.l0_be, radix_prefetch_bug=s.prefetch_bug)


def enter(s: Setup = Setup()) -> Outcome:
    """One H_ENTER_NESTED from an L1 vCPU, through the hcall dispatcher, on a fresh machine
    whose L1 stored the blocks of ``s`` in its byte order at r4 and r5."""
    m = Machine(Controller(RandomWalk(0)), {}, (), tuple(NESTED_QUIRKS), 0, release=s.release)
    l1, mem = make_l1(m, quirks=s.quirks, read_only=s.read_only)
    l1.l1_ptcr = s.ptcr
    mem.store(s.hv_ptr, hgs.encode(s.state, big_endian=s.l1_be, version=s.layout))
    mem.store(s.regs_ptr, hgs.encode_pt_regs(s.regs, big_endian=s.l1_be))
    vcpu = make_vcpu(s)
    before = bytes(mem.data)
    m.invariant("L2 sanitisation", lambda: en.l2_sanitisation(vcpu))
    seen: list[Seen] = []
    ret, violations = run_actor(m, en.h_enter_nested, l1, vcpu, fake_l2(m, s.exit, seen),
                                nesting_enabled=s.nesting)
    r3 = vcpu.regs[3]
    rc = {-en.EINTR: H_INTERRUPT, en.RESUME_HOST: H_TOO_HARD}.get(ret, signed(r3))
    return Outcome(rc, ret, r3, vcpu, mem, before, tuple(seen), violations)


def l1_reads_back(o: Outcome, s: Setup) -> tuple[hgs.HvGuestState, tuple[int, ...]]:
    """The blocks as L1 reads them after the hcall, in its own byte order."""
    size = 232 if s.layout == 1 else 248
    state = hgs.decode(bytes(o.mem.data[s.hv_ptr:s.hv_ptr + size]), big_endian=s.l1_be)
    regs = hgs.decode_pt_regs(bytes(o.mem.data[s.regs_ptr:s.regs_ptr + en.PT_REGS_BYTES]),
                              big_endian=s.l1_be)
    return state, regs


def run_actor(m: Machine, fn, *args, **kwargs) -> tuple[object, tuple]:
    """Run ``fn(*args, **kwargs)`` as the only actor of ``m``: its result (None if the
    schedule stopped first) and the violations found."""
    got: list = [None]

    async def actor() -> None:
        got[0] = await fn(*args, **kwargs)

    m.spawn("l1.vcpu0", actor)
    trio.run(m.ctl.run)
    assert m.ctl.error is None
    return got[0], tuple(m.ctl.violations)


# ------------------------------------------------------------------------ byte access
def test_byte_access_any_alignment_and_memslot_edges():
    m = Machine(Controller(RandomWalk(0)), {}, (), tuple(NESTED_QUIRKS), 0)
    l1, mem = make_l1(m, read_only=frozenset({5}))
    mem.store(0x10003, bytes(range(1, 20)))
    edge = (5 << PAGE_SHIFT) - 5  # 5 bytes before the end of slot 2, slot 3 next to it
    mem.store(edge, b"ABCDEFGHIJ")

    async def go():
        return (await en.kvm_vcpu_read_guest(l1, 0x10003, 19),
                await en.kvm_vcpu_read_guest(l1, edge, 10),  # across two adjacent slots
                await en.kvm_vcpu_read_guest(l1, HOLE - 4, 8),  # runs into the hole
                await en.kvm_vcpu_read_guest(l1, 2**64 - 4, 8),  # off the top
                await en.kvm_vcpu_write_guest(l1, 0x10005, b"\xaa\xbb\xcc"),
                await en.kvm_vcpu_write_guest(l1, (4 << PAGE_SHIFT) + 1, b"\x11" * 20),
                await en.kvm_vcpu_write_guest(l1, edge + 2, b"xyzuvw"))  # gfn 5 read-only

    got, violations = run_actor(m, go)
    assert violations == ()
    assert got[:4] == (bytes(range(1, 20)), b"ABCDEFGHIJ", None, None)
    assert got[4:] == (True, True, False)
    assert mem.data[0x10003:0x1000A] == bytes([1, 2, 0xAA, 0xBB, 0xCC, 6, 7])
    base = 4 << PAGE_SHIFT
    assert mem.data[base:base + 22] == b"\0" + b"\x11" * 20 + b"\0"
    # the failing write kept its first page's bytes (kvm_vcpu_write_guest is page by page)
    assert mem.data[edge:edge + 10] == b"ABxyzFGHIJ"


# ------------------------------------------------------------------------ check order
def test_check_order_first_failing_check_wins():
    """Every defect at once, then fixed one by one in the kernel's order: each step returns
    the code of the first check still failing (newest release)."""
    bad_state = attrs.evolve(GOOD_STATE, version=3, vcpu_token=NR_CPUS, lpid=256)
    s = Setup(nesting=False, ptcr=0, l1_ts=nr.MSR_TS_T, hv_ptr=HOLE, regs_ptr=HOLE + 0x400,
              state=bad_state, regs=regs_with(msr=nr.MSR_TS_T), read_only=frozenset({1}),
              exit=Exit(trap=-en.EINTR, mmio=True))
    steps = (
        (H_FUNCTION, {"nesting": True}),
        (H_NOT_AVAILABLE, {"ptcr": PTCR}),
        (H_BAD_MODE, {"l1_ts": 0}),  # L1 transactional
        (H_PARAMETER, {"hv_ptr": HV_ADDR}),  # the version unreadable
        (H_PARAMETER, {"state": attrs.evolve(bad_state, version=0x1_0000_0002)}),  # size -1
        (H_PARAMETER, {"regs_ptr": REGS_ADDR}),  # the pt_regs unreadable
        (H_P2, {"state": attrs.evolve(bad_state, version=2)}),  # sized as 2, but > 2
        (H_PARAMETER, {"state": attrs.evolve(bad_state, version=2, vcpu_token=1)}),  # token
        (H_BAD_MODE, {"regs": GOOD_REGS}),  # L2 transactional, L1 not suspended
        (H_PARAMETER, {"state": attrs.evolve(GOOD_STATE)}),  # lpid beyond the 256 entries
        (H_AUTHORITY, {"read_only": frozenset()}),  # L2 ran; the write-back failed
        (H_INTERRUPT, {"exit": Exit(trap=HDSI, mmio=True)}),
        (H_TOO_HARD, {"exit": Exit(trap=HDSI)}),
        (HDSI, {}),
    )
    for i, (rc, fix) in enumerate(steps):
        o = enter(s)
        assert (o.rc, o.violations) == (rc, ()), f"step {i}: {o.rc} {o.violations}"
        assert bool(o.seen) == (i >= 10), f"step {i}: L2 ran: {bool(o.seen)}"
        s = attrs.evolve(s, **fix)


@pytest.mark.parametrize(("release", "version_", "regs_ptr", "rc"), [
    ("v5.8", 2, HOLE, H_P2),  # the version was checked before the pt_regs were read
    ("v5.9", 2, HOLE, H_PARAMETER),  # both read first (the B7 fix)
    ("v5.11", 2, REGS_ADDR, H_P2),  # version 1 exactly before v5.12
    ("v5.11", 3, REGS_ADDR, H_P2),
    ("v5.12", 3, REGS_ADDR, H_PARAMETER),  # unknown size: the read fails
    ("v5.12", 0x5_0000_0001, REGS_ADDR, H_P2),  # sized as version 1, then > 2
    (None, 1, HOLE, H_PARAMETER),
])
def test_version_and_read_order_per_release(release, version_, regs_ptr, rc):
    state = attrs.evolve(GOOD_STATE, version=version_)
    o = enter(Setup(release=release, state=state, layout=1, regs_ptr=regs_ptr))
    assert (o.rc, o.seen, o.violations) == (rc, (), ())


def test_dispatcher_sets_r3_and_what_the_run_loop_gets():
    o = enter(Setup(exit=Exit(trap=-en.EINTR)))
    assert (o.ret, o.r3, o.vcpu.hcall_needed) == (-en.EINTR, 0, 0)
    o = enter(Setup(exit=Exit(trap=HDSI, mmio=True)))
    assert (o.ret, o.r3, o.vcpu.trap) == (en.RESUME_HOST, 0, 0)
    # the L2 load completes into L1 memory: GPR 9 of the pt_regs at r5
    assert (o.vcpu.nested_io_gpr, o.vcpu.io_gpr) == (REGS_ADDR + 8 * 9,
                                                     en.KVM_MMIO_REG_NESTED_GPR)
    o = enter(Setup(exit=Exit(trap=SYSCALL)))
    assert (o.ret, o.r3) == (en.RESUME_GUEST, SYSCALL)
    o = enter(Setup(nesting=False))
    assert (o.ret, o.r3, o.seen) == (en.RESUME_GUEST, H_FUNCTION & MASK64, ())


# ------------------------------------------------------------------------ endianness
@pytest.mark.parametrize("release", [None, "v5.11"])
def test_both_endiannesses_give_l2_the_same_registers(release):
    """A big- and a little-endian L1 store the same blocks in their own byte order; on
    either L0 the L2 starts with the same registers. The write-back: an L1 of L0's order
    reads L2's exit state back; of the other order it gets H_AUTHORITY from v5.12 (nothing
    written: the size comes from the swapped version), before that the state with the
    reserved PCR bits smeared (pcr | PCR_MASK | swab64(PCR_MASK))."""
    layout = 1 if release else 2
    state = attrs.evolve(GOOD_STATE, version=layout)
    outcomes = {}
    for l1_be in (False, True):
        for l0_be in (False, True):
            s = Setup(release=release, l1_be=l1_be, l0_be=l0_be, state=state, layout=layout,
                      exit=Exit(trap=HDSI))
            outcomes[l1_be, l0_be] = s, enter(s)
    assert len({o.seen for _, o in outcomes.values()}) == 1
    (entry,) = outcomes[False, False][1].seen
    assert entry.regs[1] == 0x1000 and entry.regs[hgs.PT_NIP] == 0x4000
    assert entry.other[:7] == (0x700, 0x9000, 11, 12, 13, 14, 5)
    assert (entry.lpid, entry.token, entry.pcr) == (LPID, 1, 0x10 | hgs.PCR_MASK)
    for (l1_be, l0_be), (s, o) in outcomes.items():
        assert o.violations == ()
        back, regs = l1_reads_back(o, s)
        if l1_be == l0_be:
            assert o.rc == HDSI
            assert (back.hdar, back.hdsisr, back.asdr, back.srr0) == (0xDA00, 0x4200_0000,
                                                                      0x6A00, 0xE00D)
            assert regs[3] == 0x5A and back.pcr == 0x10
        elif release is None:
            assert o.rc == H_AUTHORITY and o.mem.data == o.before
        else:
            assert o.rc == HDSI and back.hdar == 0xDA00
            assert back.pcr == 0x10 | hgs.PCR_MASK | swab64(hgs.PCR_MASK)


# ------------------------------------------------------------------------ exit and restore
@pytest.mark.parametrize(("trap", "fields"), [
    (HDSI, {"hdar": 0xDA00, "hdsisr": 0x4200_0000, "asdr": 0x6A00}),
    (HISI, {"hdar": 0, "hdsisr": 0, "asdr": 0x6A00}),
    (HEAI, {"heir": 0x7C00_0008, "asdr": 0}),
    (HFAC, {"hfscr": nr.HFSCR_FP | 0x1A << 56, "asdr": 0}),  # L1's request + the cause
    (HDEC, {"hfscr": nr.HFSCR_FP, "heir": 0}),
])
def test_exit_specific_fields_reach_l1(trap, fields):
    s = Setup(exit=Exit(trap=trap))
    o = enter(s)
    back, _ = l1_reads_back(o, s)
    assert o.rc == trap
    assert {k: getattr(back, k) for k in fields} == fields


def test_l1_is_restored_around_the_run():
    s = Setup(l1_ts=nr.MSR_TS_S, regs=regs_with(msr=en.MSR_SF | nr.MSR_TS_T | en.MSR_HV),
              exit=Exit(msr=en.MSR_SF | nr.MSR_TS_T))
    o = enter(s)
    (entry,) = o.seen
    v = o.vcpu
    assert o.rc == HDEC and o.violations == ()
    # L2 runs with ME set and HV clear; its timebase offset and HDEC in L0's terms
    assert entry.msr == en.MSR_SF | nr.MSR_TS_T | en.MSR_ME
    assert entry.tb_offset == 1000 - 100 and entry.hdec_exp == 10_000 - 1000
    assert entry.dec_expires == 5000 - 100  # moves with the offset (v5.16+)
    assert entry.other[-5:] == (1, 2, 3, 4, 0)  # purr, spurr, ic, vtb, dpdes: L1's block
    # L1: its regs and MSR back, suspended because L2 was transactional
    assert v.regs[4:6] == (HV_ADDR, REGS_ADDR) and v.regs[3] == HDEC
    assert v.msr == L1_MSR | en.MSR_LE | nr.MSR_TS_S and v.nested is None
    assert (v.vcore.tb_offset, v.dec_expires, v.srr0) == (1000, 5000, 0x1111)
    # purr, spurr, ic, vtb: L1's plus what L2 used
    assert (v.purr, v.spurr, v.ic, v.vcore.vtb) == (1100, 1200, 1300, 1040)
    assert v.vcore.pcr == hgs.PCR_MASK and v.hfscr == en.HFSCR_DEFAULT
    assert v.nested_vcpu_id == 1 and v.nested_hfscr == nr.HFSCR_FP
    assert v.l2_entry is not None and en.l2_sanitisation(v) is None


# ------------------------------------------------------------------------ release keying
REQUEST = attrs.evolve(GOOD_STATE, version=1, lpcr=nr.LPCR_TC | nr.LPCR_LPES | 0x2,
                       hfscr=nr.HFSCR_FP | nr.HFSCR_VECVSX | nr.HFSCR_TM | 0x42 << 56,
                       dawrx0=0x7, tb_offset=50)
L1_HFSCR = nr.HFSCR_FP
PERMITTED = nr.HFSCR_FP | nr.HFSCR_VECVSX | nr.HFSCR_TM
CAUSE = 0x42 << 56


@pytest.mark.parametrize(("release", "pcr", "lpcr", "hfscr", "back", "dec"), [
    # L2's pcr; L2's LPCR; L2's HFSCR; (hfscr, lpcr, dawrx0) L1 reads back; dec_expires in L2
    ("v4.20", 0x10, nr.LPCR_TC | nr.LPCR_LPES, L1_HFSCR | CAUSE,
     (L1_HFSCR | CAUSE, REQUEST.lpcr, 0x3), 5000),
    ("v5.4", 0x10 | hgs.PCR_MASK, nr.LPCR_TC | nr.LPCR_LPES, L1_HFSCR | CAUSE,
     (L1_HFSCR | CAUSE, REQUEST.lpcr, 0x3), 5000),
    ("v5.13", 0x10 | hgs.PCR_MASK, nr.LPCR_LPES, L1_HFSCR | CAUSE,
     (L1_HFSCR | CAUSE, 0x1 | nr.LPCR_LPES, 0x3), 5000),
    ("v5.15", 0x10 | hgs.PCR_MASK, nr.LPCR_LPES, PERMITTED | CAUSE,
     (REQUEST.hfscr, REQUEST.lpcr, 0x7), 5000),
    ("v5.16", 0x10 | hgs.PCR_MASK, nr.LPCR_LPES, PERMITTED | CAUSE,
     (REQUEST.hfscr, REQUEST.lpcr, 0x7), 5050),
    ("v5.19", 0x10 | hgs.PCR_MASK, 0, PERMITTED | CAUSE,
     (REQUEST.hfscr, REQUEST.lpcr, 0x7), 5050),
])
def test_release_keying(release, pcr, lpcr, hfscr, back, dec):
    """One request, as each release handles it: 13c7bb3c57dc (v5.4) sets PCR_MASK; the
    LPCR filter (v5.13) clears TC and, until v5.15, is written back; 7487cabc7ed2 and
    8b210a880b35 (v5.15) stop writing the sanitised values back and limit HFSCR by
    hfscr_permitted, not L1's HFSCR; dec_expires follows tb_offset from v5.16; LPES is
    L0's from v5.19 (2852ebfa10af). HDICE (0x1) is the vcore's, HVICE (0x2) never L1's,
    DPFD is L1's (0)."""
    s = Setup(release=release, state=REQUEST, layout=1, l1_hfscr=L1_HFSCR,
              hfscr_permitted=PERMITTED)
    o = enter(s)
    (entry,) = o.seen
    assert o.rc == HDEC and o.violations == ()
    assert (entry.pcr, entry.hv.lpcr, entry.hv.hfscr, entry.dec_expires) == (
        pcr, 0x1 | lpcr, hfscr, dec)
    got, _ = l1_reads_back(o, s)
    assert (got.hfscr, got.lpcr, got.dawrx0) == back


def test_bugs_per_release():
    assert en.bugs("v4.20") == en.bugs("v5.8") == ("enter-nested-no-srcu", "no-tm-sanitise")
    assert en.bugs("v5.9") == en.bugs("v5.13") == ("no-tm-sanitise",)
    assert en.bugs("v5.14") == en.bugs("v5.15") == en.bugs("v6.15") == en.bugs(None) == ()
    assert not any(en.NO_HFSCR_SANITISE in en.bugs(r) for r in PROFILES)
    assert {en.NO_SRCU, en.NO_TM_SANITISE, en.NO_HFSCR_SANITISE} <= set(NESTED_QUIRKS)


# ------------------------------------------------------------------------ the invariant
def test_sanitisation_invariant_names_each_forbidden_value():
    fine = en.L2Entry(nr.HvRegs(VCORE_LPCR, nr.HFSCR_FP, 1, 2, 1), en.MSR_SF, L1_MSR,
                      VCORE_LPCR, en.HFSCR_DEFAULT, None)
    assert en.l2_entry_violations(fine) == ()
    cases = {
        "LPCR bits 0x1 differ": attrs.evolve(fine, hv=attrs.evolve(fine.hv, lpcr=4 << 52)),
        "HFSCR facilities 0x20": attrs.evolve(fine, hv=attrs.evolve(fine.hv,
                                                                     hfscr=nr.HFSCR_TM)),
        "DAWRX1 matches": attrs.evolve(fine, hv=attrs.evolve(fine.hv, dawrx1=nr.DAWRX_HYP)),
        "CIABR matches": attrs.evolve(fine, hv=attrs.evolve(fine.hv, ciabr=3)),
        "MSR[HV]": attrs.evolve(fine, msr=en.MSR_HV),
        "MSR[TS] 0b10 with L1's 0b00": attrs.evolve(fine, msr=nr.MSR_TS_T),
        "MSR[TS] 0b00 with L1's 0b01": attrs.evolve(fine, l1_msr=nr.MSR_TS_S),
        "MSR[TS] 0b00 with L1's 0b10": attrs.evolve(fine, l1_msr=nr.MSR_TS_T),
    }
    for text, entry in cases.items():
        found = en.l2_entry_violations(entry)
        assert len(found) == 1 and text in found[0], (text, found)
    vcpu = en.KvmVcpu(l2_entry=cases["MSR[HV]"])
    assert "L2 of vcpu0 entered with MSR[HV] set" in en.l2_sanitisation(vcpu)
    assert en.l2_sanitisation(en.KvmVcpu()) is None


# ------------------------------------------------------------------------ quirks, hunted
@emu.scenario(name="enter-nested-test", quirks=NESTED_QUIRKS)
def enter_nested_test(m: emu.Machine) -> None:
    """An L1 vCPU enters L2 three times: with its blocks in memslot 1 while QEMU deletes
    that slot, then (blocks in slot 2) asking for every HFSCR facility, then with L2
    transactional."""
    l1, mem = make_l1(m, quirks=m.quirks)
    vcpu = make_vcpu(Setup())
    m.invariant("L2 sanitisation", lambda: en.l2_sanitisation(vcpu))
    run_l2 = fake_l2(m, Exit(), [])
    other = 4 << PAGE_SHIFT
    requests = ((HV_ADDR, GOOD_STATE, GOOD_REGS),
                (other, attrs.evolve(GOOD_STATE, hfscr=MASK64), GOOD_REGS),
                (other, GOOD_STATE, regs_with(msr=en.MSR_SF | nr.MSR_TS_T)))

    async def l1_vcpu() -> None:
        for hv_ptr, state, regs in requests:
            mem.store(hv_ptr, hgs.encode(state, big_endian=False, version=2))
            mem.store(hv_ptr + 0x400, hgs.encode_pt_regs(regs, big_endian=False))
            vcpu.regs = make_vcpu(Setup(hv_ptr=hv_ptr, regs_ptr=hv_ptr + 0x400)).regs
            ret = await en.h_enter_nested(l1, vcpu, run_l2, nesting_enabled=True)
            rc = signed(vcpu.regs[3])
            if ret != en.RESUME_GUEST or rc not in (HDEC, H_BAD_MODE, H_PARAMETER,
                                                     H_AUTHORITY):
                m.fail("return code", f"H_ENTER_NESTED: run loop {ret}, r3 {rc}")

    async def qemu() -> None:
        await kvm_delete_memslot(l1.kvm, l1.kvm.gfn_to_memslot(HV_ADDR >> PAGE_SHIFT))

    m.spawn("l1.vcpu0", l1_vcpu)
    m.spawn("qemu", qemu)


@pytest.mark.parametrize(("quirk", "seed", "kind", "text"), [
    (en.NO_SRCU, 47, "use-after-free", "which kvm_delete_memslot freed while this copy "
                                      "(outside kvm->srcu)"),
    (en.NO_TM_SANITISE, 0, "invariant", "MSR[TS] 0b10 with L1's 0b00"),
    (en.NO_HFSCR_SANITISE, 0, "invariant", "HFSCR facilities 0xfffffffffffe60 not"),
])
def test_quirk_found_by_a_hunt(quirk, seed, kind, text):
    h = emu.hunt(enter_nested_test, schedules=2000, seed=0, quirks=(quirk,))
    assert h.found is not None, f"{quirk} not found in 2000 schedules"
    v = h.found.violation
    assert (h.found.seed, v.kind) == (seed, kind) and text in v.message, v.describe()


def test_fixed_model_is_clean_on_the_same_hunt():
    for strategy in ({}, {"strategy": "pct", "depth": 3}):
        h = emu.hunt(enter_nested_test, schedules=300, seed=0, **strategy)
        assert h.ok, h.found.violation.describe()


# ------------------------------------------------------------------------ the fuzz
def mostly(draw, usual: st.SearchStrategy, odd: st.SearchStrategy):
    """A value of ``usual`` three times in four, else of ``odd``: enough argument sets get
    past the early checks to exercise the whole path, and every check still meets its
    adversary."""
    return draw(odd if draw(QUARTER) == 0 else usual)


QUARTER = st.integers(0, 3)
EDGES = (0, 0x1000, 0x10000, 0x30000, 0x40000, 0x50000, 0x60000, MASK64 + 1)
"""Slot starts and ends, the hole, the partition table, the top of the address space."""
USUAL_POINTER = st.integers(0x10000, 0x30000 - en.PT_REGS_BYTES)  # in the blocks' slot
ODD_POINTER = st.one_of(
    st.tuples(st.sampled_from(EDGES), st.integers(-400, 400)).map(
        lambda t: (t[0] + t[1]) & MASK64),  # straddling a memslot's end, or none
    st.integers(0x40000, 0x60000 - 1),  # across the two adjacent slots
    U64)
USUAL_VERSIONS = {False: st.sampled_from((1, 2)), True: st.just(1)}  # (before v5.12?)
ODD_VERSION = st.one_of(st.sampled_from((0, 3, 2**32 + 1, 2**32 + 2, swab64(1), swab64(2),
                                         MASK64)), U64)
USUAL_LPID, ODD_LPID = st.sampled_from((LPID, 0, 255)), st.integers(256, 2**32 - 1)
USUAL_TOKEN, ODD_TOKEN = st.integers(0, NR_CPUS - 1), st.integers(NR_CPUS, 2**32 - 1)
L1_TS, TS = st.sampled_from((0, nr.MSR_TS_S)), st.sampled_from(
    (0, nr.MSR_TS_S, nr.MSR_TS_T, nr.MSR_TS_MASK))
HV_WORD = st.sampled_from((None, None, 0, MASK64, nr.DAWRX_HYP | nr.DAWRX_KERNEL,
                           nr.CIABR_PRIV_HYPER, nr.LPCR_TC | nr.LPCR_AIL,
                           nr.LPCR_LPES | nr.LPCR_ILE | nr.LPCR_MER))
"""A hypervisor-register field: a value the sanitiser must catch, or (None) the random one."""
BLOB = st.binary(min_size=248 + 384 + 32, max_size=248 + 384 + 32)
"""The blocks' random bytes and 32 more for the exit's values, in one draw."""
PERMITTED_SETS = st.sampled_from((en.HFSCR_DEFAULT, en.HFSCR_DEFAULT | nr.HFSCR_TM,
                                  nr.HFSCR_FP))
TRAP = st.sampled_from((HDEC, HDSI, HISI, HEAI, HFAC, SYSCALL, -en.EINTR))
READ_ONLY = st.sampled_from(((), (), (1,), (2,), (4,), (5,)))
FLAGS = st.integers(0, 63)
"""l1_be, l0_be, layout 2, the prefetch bug, MMIO needed, L2's MSR changed at the exit."""


@st.composite
def argument_sets(draw, release: str | None) -> Setup:
    """An H_ENTER_NESTED argument set: the blocks' bytes random, the fields the checks read
    chosen adversarially, r4 / r5 anywhere, either byte order on either side. (Few draws
    per set: drawing costs more than the hcall.)"""
    blob = draw(BLOB)
    raw = hgs.decode(blob[:248], big_endian=True)
    picks = {f: draw(HV_WORD) for f in ("lpcr", "hfscr", "dawrx0", "dawrx1", "ciabr")}
    old = release is not None and version(release) < (5, 12)
    state = attrs.evolve(
        raw, version=mostly(draw, USUAL_VERSIONS[old], ODD_VERSION),
        lpid=mostly(draw, USUAL_LPID, ODD_LPID),
        vcpu_token=mostly(draw, USUAL_TOKEN, ODD_TOKEN),
        **{f: v for f, v in picks.items() if v is not None})
    l1_ts = mostly(draw, L1_TS, TS)
    l2_ts = mostly(draw, st.just(nr.MSR_TS_T if l1_ts == nr.MSR_TS_S else 0), TS)
    words = hgs.decode_pt_regs(blob[248:632], big_endian=True)
    extra = hgs.decode_pt_regs(blob[632:], big_endian=True, words=4)
    flags = draw(FLAGS)
    permitted = draw(PERMITTED_SETS)
    return Setup(
        release=release, l1_be=bool(flags & 1), l0_be=bool(flags & 2), l1_ts=l1_ts,
        state=state, layout=2 if flags & 4 else 1,
        regs=(*words[:hgs.PT_MSR], words[hgs.PT_MSR] & ~nr.MSR_TS_MASK | l2_ts,
              *words[hgs.PT_MSR + 1:]),
        hv_ptr=mostly(draw, USUAL_POINTER, ODD_POINTER),
        regs_ptr=mostly(draw, USUAL_POINTER, ODD_POINTER),
        read_only=frozenset(draw(READ_ONLY)), l1_hfscr=permitted & extra[0],
        hfscr_permitted=permitted, prefetch_bug=bool(flags & 8),
        exit=Exit(trap=draw(TRAP), mmio=bool(flags & 16),
                  msr=extra[1] if flags & 32 else None, fault_dar=extra[2],
                  fault_gpa=extra[3], cause=extra[3] >> 56))


def check_outcome(s: Setup, o: Outcome) -> None:
    """Only kernel return codes (or the L2 trap), nothing raised, no escalation, L1's
    memory outside the two blocks untouched, L1's own state back."""
    assert o.violations == (), o.violations
    assert o.rc in (H_BAD_MODE, H_PARAMETER, H_P2, H_AUTHORITY, H_INTERRUPT, H_TOO_HARD,
                    s.exit.trap), o.rc
    touched = bytearray(o.before)
    for addr, n in ((s.hv_ptr, 248), (s.regs_ptr, en.PT_REGS_BYTES)):
        touched[addr:addr + n] = o.mem.data[addr:addr + n]
    assert touched == o.mem.data, "L1 memory outside the blocks changed"
    v = o.vcpu
    assert v.nested is None and v.regs[4:6] == (s.hv_ptr, s.regs_ptr)
    assert v.msr & ~nr.MSR_TS_MASK == L1_MSR | (0 if s.l1_be else en.MSR_LE)
    if not o.seen:
        return
    assert en.l2_entry_violations(v.l2_entry) == ()
    assert (v.vcore.tb_offset, v.dec_expires, v.hfscr) == (1000, 5000, s.l1_hfscr)
    # what L2 got is what the pure reading of L1's bytes (hv_guest_state.py) gives
    rel = version(s.release) if s.release else None
    expected = hgs.read_guest_state(
        o.mem.visible_prefix(o.before, s.hv_ptr, 248), l1_big_endian=s.l1_be,
        l0_big_endian=s.l0_be, release=rel,
        pcr_mask=hgs.PCR_MASK if rel is None or rel >= (5, 4) else 0)
    (entry,) = o.seen
    x = expected.state
    assert (entry.lpid, entry.token, entry.nested_hfscr) == (x.lpid, x.vcpu_token, x.hfscr)
    assert entry.other[:9] == (x.srr0, x.srr1, *x.sprg, x.pidr, x.cfar, x.ppr)
    l2_regs = hgs.decode_pt_regs(o.before[s.regs_ptr:s.regs_ptr + en.PT_REGS_BYTES],
                                 big_endian=s.l1_be)
    assert entry.regs[:hgs.PT_MSR] == l2_regs[:hgs.PT_MSR]
    assert entry.msr == (l2_regs[hgs.PT_MSR] | en.MSR_ME) & ~en.MSR_HV


@pytest.mark.parametrize("release", PROFILES)
@settings(max_examples=910, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_fuzz_adversarial_argument_sets(release, data):
    """910 adversarial argument sets per release profile (10,010 in all), each release with
    its bugs fixed (B9 would rightly let L2 run with a forbidden TM state)."""
    s = data.draw(argument_sets(release))
    check_outcome(s, enter(s))
