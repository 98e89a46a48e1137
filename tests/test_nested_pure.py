"""The pure functions of POWER nested virtualisation (L0 side): the hv_guest_state / pt_regs
codec and byte swap, the register sanitiser and TM gate, H_TLB_INVALIDATE operands, the
nested rmap word and the shadow PTE composition. Each expected value here is worked out
from the kernel source lines the modules cite, not from the modules."""

from __future__ import annotations

import itertools
import struct

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emu.kvm import hv_guest_state as hgs
from emu.kvm import nested_regs as nr
from emu.kvm import nested_rmap as rm
from emu.kvm import shadow_pte as sp
from emu.kvm import tlbie_operands as tl
from emu.kvm.hvcall import H_BAD_MODE, H_P2, H_PARAMETER, H_SUCCESS

U64 = st.integers(0, 2**64 - 1)
U32 = st.integers(0, 2**32 - 1)
S64 = st.integers(-(2**63), 2**63 - 1)


def swab64(v: int) -> int:
    return int.from_bytes(v.to_bytes(8, "big"), "little")


# ------------------------------------------------------------------------- hv_guest_state
OFFSETS = {  # field -> (byte offset, struct code), from the field list of asm/hvcall.h
    "version": (0, "Q"), "lpid": (8, "I"), "vcpu_token": (12, "I"), "lpcr": (16, "Q"),
    "pcr": (24, "Q"), "amor": (32, "Q"), "dpdes": (40, "Q"), "hfscr": (48, "Q"),
    "tb_offset": (56, "q"), "dawr0": (64, "Q"), "dawrx0": (72, "Q"), "ciabr": (80, "Q"),
    "hdec_expiry": (88, "Q"), "purr": (96, "Q"), "spurr": (104, "Q"), "ic": (112, "Q"),
    "vtb": (120, "Q"), "hdar": (128, "Q"), "hdsisr": (136, "Q"), "heir": (144, "Q"),
    "asdr": (152, "Q"), "srr0": (160, "Q"), "srr1": (168, "Q"), "pidr": (208, "Q"),
    "cfar": (216, "Q"), "ppr": (224, "Q"), "dawr1": (232, "Q"), "dawrx1": (240, "Q"),
}


def hand_built(big_endian: bool, size: int) -> tuple[bytes, dict[str, int]]:
    """A block written field by field at the kernel's offsets, every field a distinct value."""
    buf = bytearray(size)
    order = ">" if big_endian else "<"
    expected: dict[str, int] = {}
    for name, (off, code) in OFFSETS.items():
        if off >= size:
            expected[name] = 0
            continue
        value = -0x123456789A if code == "q" else (0x0102030405060700 | off) & (
            0xFFFF_FFFF if code == "I" else 2**64 - 1)
        struct.pack_into(order + code, buf, off, value)
        expected[name] = value
    sprg = tuple(0xAB00 + i for i in range(4))
    struct.pack_into(order + "4Q", buf, 176, *sprg)
    struct.pack_into(order + "Q", buf, 0, 2)
    expected["version"] = 2
    expected["sprg"] = sprg
    return bytes(buf), expected


@pytest.mark.parametrize("big_endian", [True, False])
@pytest.mark.parametrize("size", [232, 248])
def test_decode_reads_each_field_at_the_kernel_offset(big_endian, size):
    data, expected = hand_built(big_endian, size)
    state = hgs.decode(data, big_endian=big_endian)
    assert attrs.asdict(state) == expected
    assert state.lpid == 0x0506_0708 and state.vcpu_token == 0x0506_070C
    if size == 232:
        assert state.dawr1 == state.dawrx1 == 0


def test_sizes_follow_hv_guest_state_size():
    assert hgs.size_for_version(1) == 232 and hgs.size_for_version(2) == 248
    assert hgs.size_for_version(0) is None and hgs.size_for_version(3) is None
    # the kernel's parameter is unsigned int: only the low 32 bits count
    assert hgs.size_for_version(0x1_0000_0002) == 248
    assert hgs.size_for_version(swab64(1)) is None
    s = hgs.HvGuestState(dawr1=7)
    assert len(hgs.encode(s, big_endian=True, version=1)) == 232
    assert len(hgs.encode(s, big_endian=True, version=2)) == 248
    with pytest.raises(ValueError):
        hgs.encode(s, big_endian=True, version=3)
    with pytest.raises(ValueError):
        hgs.decode(bytes(240), big_endian=True)


def states(version_1: bool = False) -> st.SearchStrategy[hgs.HvGuestState]:
    fields = {n: (U32 if c == "I" else S64 if c == "q" else U64)
              for n, (_, c) in OFFSETS.items()}
    if version_1:
        fields["dawr1"] = fields["dawrx1"] = st.just(0)
    return st.builds(hgs.HvGuestState, sprg=st.tuples(U64, U64, U64, U64), **fields)


@pytest.mark.parametrize("big_endian", [True, False])
@pytest.mark.parametrize("version", [1, 2])
def test_round_trip_each_order_and_layout(big_endian, version):
    s = hgs.HvGuestState(version=version, lpid=0xFFF, vcpu_token=3, tb_offset=-5, pcr=9,
                         sprg=(1, 2, 3, 4), ppr=2**63, dawr1=11 if version == 2 else 0,
                         dawrx1=12 if version == 2 else 0)
    data = hgs.encode(s, big_endian=big_endian, version=version)
    assert hgs.decode(data, big_endian=big_endian) == s
    assert hgs.decode(data, big_endian=not big_endian) != s


@settings(max_examples=60)
@given(states(), st.booleans())
def test_round_trip_any_values_v2(state, big_endian):
    assert hgs.decode(hgs.encode(state, big_endian=big_endian, version=2),
                      big_endian=big_endian) == state


@settings(max_examples=60)
@given(states(), st.booleans())
def test_v1_layout_drops_only_the_second_dawr(state, big_endian):
    back = hgs.decode(hgs.encode(state, big_endian=big_endian, version=1),
                      big_endian=big_endian)
    assert back == attrs.evolve(state, dawr1=0, dawrx1=0)


@settings(max_examples=60)
@given(states(), st.booleans())
def test_byteswapped_read_is_l1s_values_with_reserved_pcr_bits(state, l1_big_endian):
    """L0 reads L1's bytes in its own order, then byteswap_hv_regs: L1's values, pcr | mask."""
    data = hgs.encode(state, big_endian=l1_big_endian, version=2)
    l0_view = hgs.decode(data, big_endian=not l1_big_endian)
    assert hgs.byteswap_hv_regs(l0_view) == attrs.evolve(state,
                                                         pcr=state.pcr | hgs.PCR_MASK)
    assert hgs.byteswap_hv_regs(l0_view, pcr_mask=0) == state


def test_byteswap_widths_and_pcr_mask():
    s = hgs.HvGuestState(version=1, lpid=0x01020304, tb_offset=-2, pcr=0)
    w = hgs.byteswap_hv_regs(s)
    assert w.lpid == 0x04030201 and w.version == 0x0100_0000_0000_0000
    assert w.tb_offset == int.from_bytes((2**64 - 2).to_bytes(8, "little"), "big",
                                         signed=True)
    assert hgs.PCR_MASK == 0x0FFF_FFFF_FFFF_FFE1 and w.pcr == hgs.PCR_MASK


def block(state, *, big_endian, version):
    return hgs.encode(state, big_endian=big_endian, version=version)


@pytest.mark.parametrize("l1_be,l0_be", [(False, False), (True, True), (True, False),
                                         (False, True)])
def test_read_guest_state_v2_and_v1(l1_be, l0_be):
    swapped = l1_be != l0_be
    s2 = hgs.HvGuestState(version=2, lpid=7, pcr=0x10, dawrx1=4)
    got = hgs.read_guest_state(block(s2, big_endian=l1_be, version=2),
                               l1_big_endian=l1_be, l0_big_endian=l0_be)
    assert got.rc == H_SUCCESS
    assert got.state == attrs.evolve(s2, pcr=(0x10 | hgs.PCR_MASK) if swapped else 0x10)
    # a version-1 block is read as 232 bytes even when more memory follows
    s1 = hgs.HvGuestState(version=1, lpid=7)
    mem = block(s1, big_endian=l1_be, version=1) + b"\xff" * 16
    got = hgs.read_guest_state(mem, l1_big_endian=l1_be, l0_big_endian=l0_be)
    assert got.rc == H_SUCCESS and got.state.dawr1 == got.state.dawrx1 == 0


@pytest.mark.parametrize("version,rc", [(0, H_PARAMETER), (3, H_PARAMETER),
                                        (0x1_0000_0001, H_P2), (0x5_0000_0002, H_P2)])
def test_read_guest_state_version_errors_v512(version, rc):
    mem = block(hgs.HvGuestState(version=version), big_endian=False, version=2)
    assert hgs.read_guest_state(mem, l1_big_endian=False, l0_big_endian=False).rc == rc


def test_read_guest_state_short_memory_fails_the_read():
    mem = block(hgs.HvGuestState(version=2), big_endian=False, version=2)
    assert hgs.read_guest_state(mem[:240], l1_big_endian=False,
                                l0_big_endian=False).rc == H_PARAMETER
    assert hgs.read_guest_state(mem[:4], l1_big_endian=False,
                                l0_big_endian=False).rc == H_PARAMETER
    assert hgs.read_guest_state(mem[:240], l1_big_endian=False, l0_big_endian=False,
                                release=(5, 11)).rc == H_P2  # 232 read; version 2 != 1


def test_read_guest_state_before_v512_wants_version_1_exactly():
    old = (5, 11)
    for version, rc in ((1, H_SUCCESS), (2, H_P2), (0, H_P2), (3, H_P2)):
        mem = block(hgs.HvGuestState(version=version), big_endian=True, version=1)
        assert hgs.read_guest_state(mem, l1_big_endian=True, l0_big_endian=True,
                                    release=old).rc == rc
    assert hgs.read_guest_state(bytes(231), l1_big_endian=True, l0_big_endian=True,
                                release=old).rc == H_PARAMETER


@pytest.mark.parametrize("version", [1, 2])
def test_write_back_same_order_is_the_block(version):
    s = hgs.HvGuestState(version=version, lpid=3, pcr=0x10, srr0=0x700,
                         dawr1=5 if version == 2 else 0)
    out = hgs.write_guest_state(s, l1_big_endian=False, l0_big_endian=False)
    assert out == block(s, big_endian=False, version=version)
    assert len(out) == hgs.size_for_version(version)


def test_write_back_other_order_fails_from_v512():
    """byteswap_hv_regs runs first, so hv_guest_state_size sees swab64(version)."""
    for version in (1, 2):
        s = hgs.HvGuestState(version=version)
        assert hgs.write_guest_state(s, l1_big_endian=True, l0_big_endian=False) is None


def test_write_back_other_order_before_v512_corrupts_pcr():
    l1_pcr = 0x8  # PCR_ARCH_207 as L1 set it
    s_l1 = hgs.HvGuestState(version=1, lpid=9, pcr=l1_pcr, srr1=0xABC)
    mem = block(s_l1, big_endian=True, version=1)
    read = hgs.read_guest_state(mem, l1_big_endian=True, l0_big_endian=False,
                                release=(5, 11))
    assert read.rc == H_SUCCESS and read.state.pcr == l1_pcr | hgs.PCR_MASK
    out = hgs.write_guest_state(read.state, l1_big_endian=True, l0_big_endian=False,
                                release=(5, 11))
    assert len(out) == 232
    back = hgs.decode(out, big_endian=True)  # what L1 reads back
    assert back.pcr == l1_pcr | hgs.PCR_MASK | swab64(hgs.PCR_MASK) == 0xEFFF_FFFF_FFFF_FFEF
    assert attrs.evolve(back, pcr=l1_pcr) == s_l1


@settings(max_examples=40)
@given(st.lists(U64, min_size=hgs.PT_REGS_WORDS, max_size=hgs.PT_REGS_WORDS),
       st.booleans())
def test_pt_regs_round_trip_and_swap(words, big_endian):
    regs = tuple(words)
    data = hgs.encode_pt_regs(regs, big_endian=big_endian)
    assert len(data) == 384
    assert hgs.decode_pt_regs(data, big_endian=big_endian) == regs
    # byteswap_pt_regs: L0's reading in the other order, every word swapped, is L1's values
    other = hgs.decode_pt_regs(data, big_endian=not big_endian)
    assert tuple(swab64(w) for w in other) == regs
    assert hgs.read_pt_regs(data + b"\0" * 8, l1_big_endian=big_endian) == regs


def test_pt_regs_indices_and_short_read():
    data = bytearray(384)
    struct.pack_into("<Q", data, 8 * 33, 0x8000_0000_0000_1033)  # msr after gpr[32], nip
    struct.pack_into("<Q", data, 8 * 32, 0x700)
    regs = hgs.decode_pt_regs(bytes(data), big_endian=False)
    assert regs[hgs.PT_MSR] == 0x8000_0000_0000_1033 and regs[hgs.PT_NIP] == 0x700
    assert hgs.read_pt_regs(bytes(383), l1_big_endian=False) is None
    assert len(hgs.decode_pt_regs(bytes(352), big_endian=False, words=44)) == 44
    with pytest.raises(ValueError):
        hgs.decode_pt_regs(bytes(352), big_endian=False)


# ----------------------------------------------------------------------------- sanitiser
VCORE_LPCR = (4 << 52) | nr.LPCR_LPES & 0x4 | 0x1  # DPFD=4, LPES1, HDICE (outside the mask)
FULL_REQUEST = nr.HvRegs(lpcr=2**64 - 1, hfscr=2**64 - 1, dawrx0=0x7F, dawrx1=0x7F,
                         ciabr=0x1000 | nr.CIABR_PRIV_HYPER)


def sanitise(req=FULL_REQUEST, *, release=None, permitted=nr.HFSCR_FP | nr.HFSCR_VECVSX,
             l1_hfscr=nr.HFSCR_FP | nr.HFSCR_TM, prefetch=False):
    return nr.load_l2_hv_regs(req, vcore_lpcr=VCORE_LPCR, hfscr_permitted=permitted,
                              l1_hfscr=l1_hfscr, release=release, radix_prefetch_bug=prefetch)


def test_lpcr_mask_loses_lpes_in_v519():
    base = (nr.LPCR_DPFD | nr.LPCR_ILE | nr.LPCR_TC | nr.LPCR_AIL | nr.LPCR_LD
            | nr.LPCR_MER)
    assert nr.lpcr_l1_mask() == base == nr.lpcr_l1_mask((5, 19))
    assert nr.lpcr_l1_mask((5, 18)) == base | 0xC


def test_lpcr_lpes_follows_l1_before_v519_and_the_vcore_after():
    req = nr.HvRegs(lpcr=0x8)  # L1 asks for LPES0 only
    assert sanitise(req, release=(5, 18)).lpcr & nr.LPCR_LPES == 0x8
    assert sanitise(req).lpcr & nr.LPCR_LPES == 0x4
    assert sanitise(req, release=(5, 19)).lpcr & nr.LPCR_LPES == 0x4


def test_lpcr_bits_outside_the_mask_come_from_the_vcore():
    got = sanitise().lpcr
    assert got & ~nr.lpcr_l1_mask() == VCORE_LPCR & ~nr.lpcr_l1_mask()
    assert got & nr.LPCR_DPFD == nr.LPCR_DPFD and got & nr.LPCR_ILE and got & nr.LPCR_MER


@pytest.mark.parametrize("release,ail,prefetch,tc_kept,ail_out", [
    ((5, 12), 1 << 23, False, True, 1 << 23),  # no filter before v5.13
    (None, 1 << 23, False, False, 0),           # AIL=1 refused
    (None, 2 << 23, False, False, 0),           # AIL=2 refused
    (None, nr.LPCR_AIL_3, False, False, nr.LPCR_AIL_3),
    (None, nr.LPCR_AIL_3, True, False, 0),      # POWER9 radix prefetch bug: no AIL
])
def test_filter_lpcr_hv(release, ail, prefetch, tc_kept, ail_out):
    got = sanitise(nr.HvRegs(lpcr=ail | nr.LPCR_TC | nr.LPCR_LD), release=release,
                   prefetch=prefetch).lpcr
    assert bool(got & nr.LPCR_TC) == tc_kept
    assert got & nr.LPCR_AIL == ail_out and got & nr.LPCR_LD


def test_hfscr_limit_is_release_keyed():
    cause = nr.HFSCR_INTR_CAUSE
    assert sanitise().hfscr == cause | nr.HFSCR_FP | nr.HFSCR_VECVSX  # hfscr_permitted
    assert sanitise(release=(5, 14)).hfscr == cause | nr.HFSCR_FP | nr.HFSCR_TM  # L1's HFSCR
    assert sanitise(nr.HvRegs(hfscr=nr.HFSCR_TM)).hfscr == 0


def test_dawrx_and_ciabr():
    got = sanitise()
    assert got.dawrx0 == got.dawrx1 == 0x7B  # only DAWRX_HYP (bit 2) cleared
    assert sanitise(release=(5, 11)).dawrx1 == 0
    assert got.ciabr == 0x1000  # PRIV HYPER -> 0, address kept
    for priv in (nr.CIABR_PRIV_USER, nr.CIABR_PRIV_SUPER, 0):
        assert sanitise(nr.HvRegs(ciabr=0x2000 | priv)).ciabr == 0x2000 | priv


def test_violations_name_each_forbidden_value():
    bad = nr.HvRegs(lpcr=VCORE_LPCR ^ 0x1 | nr.LPCR_TC | (1 << 23),
                    hfscr=nr.HFSCR_TM | nr.HFSCR_INTR_CAUSE, dawrx0=nr.DAWRX_HYP,
                    dawrx1=nr.DAWRX_HYP, ciabr=nr.CIABR_PRIV_HYPER)
    v = nr.l2_regs_violations(bad, vcore_lpcr=VCORE_LPCR, hfscr_limit=nr.HFSCR_FP)
    assert len(v) == 7 and not nr.l2_regs_allowed(bad, vcore_lpcr=VCORE_LPCR,
                                                   hfscr_limit=nr.HFSCR_FP)
    # before the filter, TC and AIL=1 are not violations
    assert len(nr.l2_regs_violations(bad, vcore_lpcr=VCORE_LPCR, hfscr_limit=nr.HFSCR_FP,
                                     release=(5, 12))) == 5
    # LPES differing from the vcore is a violation only from v5.19
    lpes = nr.HvRegs(lpcr=VCORE_LPCR ^ 0xC)
    assert not nr.l2_regs_allowed(lpes, vcore_lpcr=VCORE_LPCR, hfscr_limit=0)
    assert nr.l2_regs_allowed(lpes, vcore_lpcr=VCORE_LPCR, hfscr_limit=0, release=(5, 18))


RELEASES = st.sampled_from([None, (5, 11), (5, 12), (5, 13), (5, 14), (5, 15), (5, 18),
                            (5, 19), (6, 6)])


@settings(max_examples=150)
@given(st.builds(nr.HvRegs, U64, U64, U64, U64, U64), U64, U64, U64, RELEASES,
       st.booleans())
def test_sanitised_registers_are_always_allowed(req, vcore, permitted, l1_hfscr, release,
                                                prefetch):
    out = nr.load_l2_hv_regs(req, vcore_lpcr=vcore, hfscr_permitted=permitted,
                             l1_hfscr=l1_hfscr, release=release, radix_prefetch_bug=prefetch)
    limit = l1_hfscr if release is not None and release < (5, 15) else permitted
    assert nr.l2_regs_violations(out, vcore_lpcr=vcore, hfscr_limit=limit,
                                 release=release) == ()


TS = {"N": 0, "S": nr.MSR_TS_S, "T": nr.MSR_TS_T, "R": nr.MSR_TS_MASK}  # R: reserved 0b11
TM_TABLE = {  # (L1 TS, L2 TS) -> H_BAD_MODE? (d9c57d3ed52a)
    ("S", "N"): True, ("S", "S"): False, ("S", "T"): False, ("S", "R"): False,
    ("N", "N"): False, ("N", "S"): True, ("N", "T"): True, ("N", "R"): True,
    ("T", "N"): True, ("T", "S"): True, ("T", "T"): True, ("T", "R"): True,
    ("R", "N"): True, ("R", "S"): True, ("R", "T"): True, ("R", "R"): True,
}


@pytest.mark.parametrize("l1,l2", sorted(TM_TABLE))
def test_tm_state_truth_table(l1, l2):
    other = 0x8000_0000_0000_1033  # SF, ME, IR, DR, RI, LE: must not matter
    rc = nr.check_tm_state(TS[l1] | other, TS[l2] | other)
    assert rc == (H_BAD_MODE if TM_TABLE[l1, l2] else None)
    assert nr.check_tm_state(TS[l1], TS[l2], release=(5, 13)) is None
    assert nr.check_l1_not_transactional(TS[l1]) == (H_BAD_MODE if l1 == "T" else None)


# ------------------------------------------------------------------------ H_TLB_INVALIDATE
def kernel_rejects(ric, prs, r, is_):
    return (not r) or prs or ric == 3 or is_ == 1 or (not is_ and ric in (1, 2))


@pytest.mark.parametrize("ric,prs,r,is_,ap", list(itertools.product(
    range(4), range(2), range(2), range(4), range(8))))
def test_check_matches_the_kernel_condition_then_ap(ric, prs, r, is_, ap):
    ops = tl.decode_tlbie(*tl.encode_tlbie(ric=ric, prs=prs, r=r, lpid=1, is_=is_, ap=ap,
                                           epn=5))
    bad = kernel_rejects(ric, prs, r, is_) or (is_ == 0 and ap not in (0, 1, 2, 5))
    assert tl.check_tlbie(ops) == (H_PARAMETER if bad else None)


def test_each_named_rejection_and_acceptance():
    def rc(**kw):
        return tl.check_tlbie(tl.decode_tlbie(*tl.encode_tlbie(**kw)))
    assert rc(ric=0, r=0, is_=2) == H_PARAMETER  # not radix
    assert rc(ric=0, prs=1, is_=2) == H_PARAMETER  # process scoped
    assert rc(ric=3, is_=2) == H_PARAMETER  # cluster bomb
    assert rc(ric=0, is_=1) == H_PARAMETER  # PID scope
    assert rc(ric=1, is_=0) == H_PARAMETER and rc(ric=2, is_=0) == H_PARAMETER
    assert rc(ric=0, is_=0, ap=3) == H_PARAMETER  # bad AP
    assert rc(ric=0, is_=0, ap=5) is None
    for ric in (0, 1, 2):
        assert rc(ric=ric, is_=2, ap=7) is None and rc(ric=ric, is_=3, ap=3) is None


def test_getter_bit_positions():
    instr = tl.h_tlbie_p1_enc(2, 0, 1)
    assert instr == 0x9_0000
    ops = tl.decode_tlbie(instr | 0xFFFF_FFFF_0000_0000, 0xDEAD_0000_0000_0007,
                          (0x12345 << 12) | (3 << 10) | (5 << 5) | 0x1F)
    assert (ops.ric, ops.prs, ops.r) == (2, 0, 1)
    assert ops.lpid == 7 and ops.is_ == 3 and ops.ap == 5 and ops.epn == 0x12345


def test_ap_to_shift_and_aligned_address():
    assert {ap: tl.ap_to_shift(ap) for ap in range(8)} == {
        0: 12, 1: 21, 2: 30, 3: None, 4: None, 5: 16, 6: None, 7: None}
    addr = 0x1234_5678_9000
    ops = tl.decode_tlbie(*tl.encode_tlbie(ric=0, is_=0, ap=1, epn=tl.addr_to_epn(addr)))
    assert ops.page_shift == 21 and ops.addr == addr & ~(2**21 - 1)
    ops4k = tl.decode_tlbie(*tl.encode_tlbie(ric=0, is_=0, ap=0, epn=tl.addr_to_epn(addr)))
    assert ops4k.addr == addr
    assert tl.decode_tlbie(*tl.encode_tlbie(ric=0, is_=0, ap=4)).addr is None


@given(st.integers(0, 3), st.integers(0, 1), st.integers(0, 1), U32, st.integers(0, 3),
       st.integers(0, 7), st.integers(0, 2**52 - 1))
def test_encode_decode_round_trip(ric, prs, r, lpid, is_, ap, epn):
    ops = tl.decode_tlbie(*tl.encode_tlbie(ric=ric, prs=prs, r=r, lpid=lpid, is_=is_, ap=ap,
                                           epn=epn))
    assert ops == tl.TlbieOperands(ric, prs, r, lpid, is_, ap, epn)


# ----------------------------------------------------------------------------- nested rmap
def test_rmap_masks_and_entry_layout():
    assert rm.RMAP_NESTED_LPID_MASK == 0xFFF << 52
    assert rm.RMAP_NESTED_GPA_MASK == ((1 << 52) - 1) & ~0xFFF
    assert rm.RMAP_NESTED_GPA_MASK.bit_count() == 40
    e = rm.n_rmap_encode(0xABC, 0x1234_5678_9FFF)
    assert e == (0xABC << 52) | 0x1234_5678_9000
    assert rm.n_rmap_lpid(e) == 0xABC and rm.n_rmap_gpa(e) == 0x1234_5678_9000
    assert rm.n_rmap_encode(0x1001, 0) == 1 << 52  # lpid bits above 12 fall off
    assert rm.n_rmap_is_equal(e, e | rm.RMAP_NESTED_IS_SINGLE_ENTRY)
    assert not rm.n_rmap_is_equal(e, e ^ (1 << 12)) and not rm.n_rmap_is_equal(e, e ^ (1 << 52))


@given(st.integers(0, 0xFFF), st.integers(0, 2**52 - 1))
def test_rmap_entry_round_trip(lpid, gpa):
    e = rm.n_rmap_encode(lpid, gpa)
    assert rm.n_rmap_lpid(e) == lpid and rm.n_rmap_gpa(e) == gpa & ~0xFFF
    assert e & rm.RMAP_NESTED_IS_SINGLE_ENTRY == 0


A, B, C = (rm.n_rmap_encode(lpid, 0x10000 * lpid) for lpid in (1, 2, 3))


def test_rmap_word_shapes():
    w = rm.RmapWord()
    assert w.kind == "empty" and list(w.kernel_walk()) == []
    assert w.insert(A) and w.kind == "single"
    assert list(w.kernel_walk()) == [A | 1]  # the word holds the tagged entry
    assert w.insert(B) and w.kind == "list" and w.nodes == [B] and w.single == A
    assert w.insert(C) and w.nodes == [C, B]
    assert list(w.kernel_walk()) == [C, B, A | 1]  # the first entry is the tagged tail
    assert w.entries() == (C, B, A)


def test_rmap_dedup_on_and_off():
    w = rm.RmapWord()
    for e in (A, B):
        w.insert(e)
    assert not w.insert(A) and not w.insert(B | 1) and w.entries() == (B, A)
    assert w.duplicates() == ()
    assert w.insert(A, dedup=False) and w.entries() == (A, B, A)
    assert w.duplicates() == (A,)


def test_rmap_del_all_detaches_the_chain():
    w = rm.RmapWord()
    for e in (A, B, C):
        w.insert(e)
    chain = w.del_all()
    assert w.kind == "empty" and w.entries() == ()
    assert list(chain.kernel_walk()) == [C, B, A | 1]
    assert w.insert(B) and w.kind == "single"


def test_rmap_walk_stops_at_a_zero_entry():
    zero = rm.n_rmap_encode(0, 0)  # L1 lpid 0, L2 GPA 0
    assert zero == 0
    w = rm.RmapWord()
    w.insert(A)
    w.insert(zero)
    assert w.entries() == (0, A) and list(w.kernel_walk()) == []
    assert w.insert(A) and w.duplicates() == (A,)  # the dedup scan no longer sees A
    assert list(w.del_all().kernel_walk()) == [A]  # invalidation misses the zero and old A
    single = rm.RmapWord()
    single.insert(zero)
    assert list(single.kernel_walk()) == [1]  # tagged: a lone zero entry is still seen


@settings(max_examples=80)
@given(st.lists(st.tuples(st.integers(1, 0xFFF), st.integers(0, 63)), max_size=30))
def test_rmap_with_dedup_never_holds_duplicates(inserts):
    w = rm.RmapWord()
    entries = [rm.n_rmap_encode(lpid, page << 16) for lpid, page in inserts]
    for e in entries:
        w.insert(e)
    assert w.duplicates() == ()
    assert sorted(w.entries()) == sorted(set(entries))
    assert [e & ~1 for e in w.kernel_walk()] == list(w.entries())


# ------------------------------------------------------------------------------ shadow PTE
SIZE_TABLE = {  # (L0 shift, L1 shift) -> shadow shift
    (16, 16): 16, (16, 21): 16, (16, 30): 16,
    (21, 16): 16, (21, 21): 21, (21, 30): 21,
    (30, 16): 16, (30, 21): 16, (30, 30): 30,
}


@pytest.mark.parametrize("l0,l1", sorted(SIZE_TABLE))
def test_shadow_size_table(l0, l1):
    assert sp.shadow_shift(l0, l1) == SIZE_TABLE[l0, l1]
    leaf = sp._PAGE_PRESENT | sp._PAGE_PTE | sp._PAGE_RWX
    got = sp.compose_shadow_pte(leaf | 0x4000_0000, l0_shift=l0, l1_pte=sp._PAGE_RWX,
                                l1_shift=l1, gpa=0x1234_5678, n_gpa=0x9876_5432,
                                writing=False)
    assert got.shift == SIZE_TABLE[l0, l1]
    assert got.level == {16: 0, 21: 1, 30: 2}[got.shift]
    assert got.n_gpa == 0x9876_5432 & ~((1 << got.shift) - 1)


def test_shadow_size_needs_l1_strictly_above_2m_for_2m():
    assert sp.shadow_shift(30, 25) == 21 and sp.shadow_shift(30, 21) == 16


def test_rpn_composition_from_a_large_l0_page():
    hpa = 0x4000_0000  # L0's 2M page
    gpa = 0x0123_4567_89AB  # L1 GPA inside it, in-page offset included
    l0_pte = sp._PAGE_PRESENT | sp._PAGE_PTE | sp._PAGE_RW | hpa
    got = sp.compose_shadow_pte(l0_pte, l0_shift=21, l1_pte=sp._PAGE_RW, l1_shift=16,
                                gpa=gpa, n_gpa=0x5_4321, writing=False)
    assert got.shift == 16
    assert got.pte & sp.PTE_RPN_MASK == hpa + (gpa & (2**21 - 1) & ~0xFFFF)
    assert got.rmap_gfn == (gpa & ~(2**21 - 1)) >> 16
    assert got.n_gpa == 0x5_0000
    same = sp.compose_shadow_pte(l0_pte, l0_shift=21, l1_pte=sp._PAGE_RW, l1_shift=21,
                                 gpa=gpa, n_gpa=0x5_4321, writing=False)
    assert same.pte == l0_pte & ~(sp._PAGE_ACCESSED | sp._PAGE_DIRTY)  # no bits OR'd


@pytest.mark.parametrize("r,w,x,a,d,writing", list(itertools.product((0, 1), repeat=6)))
def test_permission_and_rc_composition(r, w, x, a, d, writing):
    full = (sp._PAGE_PRESENT | sp._PAGE_PTE | sp._PAGE_RWX | sp._PAGE_ACCESSED
            | sp._PAGE_DIRTY | sp._PAGE_PRIVILEGED)
    l1 = ((sp._PAGE_READ if r else 0) | (sp._PAGE_WRITE if w else 0)
          | (sp._PAGE_EXEC if x else 0) | (sp._PAGE_ACCESSED if a else 0)
          | (sp._PAGE_DIRTY if d else 0))
    pte = sp.compose_shadow_pte(full, l0_shift=16, l1_pte=l1, l1_shift=16, gpa=0, n_gpa=0,
                                writing=bool(writing)).pte
    assert bool(pte & sp._PAGE_READ) == bool(r)
    assert bool(pte & sp._PAGE_WRITE) == bool(w)
    assert bool(pte & sp._PAGE_EXEC) == bool(x)
    assert bool(pte & sp._PAGE_ACCESSED) == bool(a)
    assert bool(pte & sp._PAGE_DIRTY) == bool(d and writing)
    assert pte & (sp._PAGE_PRESENT | sp._PAGE_PTE | sp._PAGE_PRIVILEGED) == (
        sp._PAGE_PRESENT | sp._PAGE_PTE | sp._PAGE_PRIVILEGED)
    # a bit L0's PTE lacks is never added
    bare = sp.compose_shadow_pte(sp._PAGE_PRESENT | sp._PAGE_PTE, l0_shift=16, l1_pte=l1,
                                 l1_shift=16, gpa=0, n_gpa=0, writing=bool(writing)).pte
    assert bare == sp._PAGE_PRESENT | sp._PAGE_PTE


def test_small_l1_pages_are_refused_and_levels_map():
    with pytest.raises(ValueError):
        sp.compose_shadow_pte(0, l0_shift=16, l1_pte=0, l1_shift=12, gpa=0, n_gpa=0,
                              writing=False)
    assert [sp.level_to_shift(lv) for lv in (0, 1, 2)] == [16, 21, 30]
    assert [sp.shift_to_level(s) for s in (16, 21, 30, 12)] == [0, 1, 2, 0]


def test_shadow_pte_maps_is_the_stale_entry_test():
    hpa = 0x4000_0000
    pte = sp._PAGE_PRESENT | sp._PAGE_PTE | sp._PAGE_RW | (hpa + 0x3_0000)  # 64K of a 2M
    assert sp.shadow_pte_maps(pte, hpa, 2**21)
    assert sp.shadow_pte_maps(pte, hpa + 0x3_0000, 2**16)
    assert not sp.shadow_pte_maps(pte, hpa, 2**16)
    assert not sp.shadow_pte_maps(pte, hpa + 2**21, 2**21)
    assert not sp.shadow_pte_maps(pte & ~sp._PAGE_PRESENT, hpa, 2**21)
    updating = pte & ~sp._PAGE_PRESENT | sp._PAGE_INVALID
    assert sp.pte_present(updating) and sp.shadow_pte_maps(updating, hpa, 2**21)
