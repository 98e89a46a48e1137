"""The H_ENTER_NESTED register blocks: ``struct hv_guest_state`` and ``struct pt_regs``.

Mirrors ``arch/powerpc/include/asm/hvcall.h`` (the struct, ``HV_GUEST_STATE_VERSION``,
``hv_guest_state_size``) and, in ``arch/powerpc/kvm/book3s_hv_nested.c``, ``byteswap_hv_regs``,
``byteswap_pt_regs``, ``kvmhv_read_guest_state_and_regs`` and
``kvmhv_write_guest_state_and_regs``. The blocks live in L1 memory in L1's byte order (not
big-endian as PAPR usually is); L0 reads them in its own order and, when the two differ
(``kvmppc_need_byteswap``), swaps every field, and swaps them back before writing them back.

Layout (byte offsets; every field u64 unless noted):

==========  ======  =====================================================
field       offset  note
==========  ======  =====================================================
version     0
lpid        8       u32
vcpu_token  12      u32
lpcr        16
pcr         24
amor        32
dpdes       40
hfscr       48
tb_offset   56      s64
dawr0       64
dawrx0      72
ciabr       80
hdec_expiry 88
purr        96
spurr       104
ic          112
vtb         120
hdar        128
hdsisr      136
heir        144
asdr        152
srr0        160
srr1        168
sprg[0..3]  176     4 x u64, to 207
pidr        208
cfar        216
ppr         224     version 1 ends here: 232 bytes
dawr1       232
dawrx1      240     version 2 ends here: 248 bytes
==========  ======  =====================================================

Release differences (mainline tags; stable backports are not modelled):

- before v5.12 (afe75049303f "Allow nested guest creation when L0 hv_guest_state > L1")
  ``HV_GUEST_STATE_VERSION`` was 1, L0 always read and wrote ``sizeof(struct
  hv_guest_state)`` = 232 bytes and rejected any version other than 1 with H_P2;
- from v5.12 the version is read first, ``hv_guest_state_size`` picks the size (232 for 1,
  248 for 2, from bd1de1a0e6ef "Add infrastructure to support 2nd DAWR"), an unknown version
  fails the read (H_PARAMETER) and only ``version > 2`` after the full read gives H_P2;
- from v5.4 (13c7bb3c57dc "powerpc/64s: Set reserved PCR bits") ``byteswap_hv_regs`` ORs
  ``PCR_MASK`` into ``pcr``; pass ``pcr_mask=0`` for the releases before.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable
from operator import attrgetter

import attrs

from ..sim.releases import version
from .hvcall import H_P2, H_PARAMETER, H_SUCCESS, MASK64

HV_GUEST_STATE_VERSION = 2
"""The newest layout (since v5.12; it was 1 from v4.20 to v5.11)."""

_SIZES = {1: 232, 2: 248}
_LAYOUT_OF_SIZE = {size: v for v, size in _SIZES.items()}

# asm/reg.h, PCR (the newest reg.h read in full: PCR_HIGH_BITS with MMA_DIS, PCR_LOW_BITS
# with ARCH_300)
PCR_VEC_DIS = 1 << 63
PCR_VSX_DIS = 1 << 62
PCR_TM_DIS = 1 << 61
PCR_MMA_DIS = 1 << 60
PCR_HIGH_BITS = PCR_MMA_DIS | PCR_VEC_DIS | PCR_VSX_DIS | PCR_TM_DIS
PCR_ARCH_300 = 0x10
PCR_ARCH_207 = 0x8
PCR_ARCH_206 = 0x4
PCR_ARCH_205 = 0x2
PCR_LOW_BITS = PCR_ARCH_207 | PCR_ARCH_206 | PCR_ARCH_205 | PCR_ARCH_300
PCR_MASK = ~(PCR_HIGH_BITS | PCR_LOW_BITS) & MASK64
"""The PCR's reserved bits, which are kept set (0x0FFFFFFFFFFFFFE1). The set of non-reserved
bits changed between releases: 13c7bb3c57dc (v5.4) had only VEC/VSX/TM_DIS and ARCH_205..207;
ARCH_300 and MMA_DIS joined later; a newer reg.h also counts PCR_ARCH_31 (0x20) as
non-reserved (release not confirmed). Pass another ``pcr_mask`` to model those."""

# The fields in struct order: (name, struct format); sprg is 4 x u64.
_V1_FIELDS: tuple[tuple[str, str], ...] = (
    ("version", "Q"), ("lpid", "I"), ("vcpu_token", "I"), ("lpcr", "Q"), ("pcr", "Q"),
    ("amor", "Q"), ("dpdes", "Q"), ("hfscr", "Q"), ("tb_offset", "q"), ("dawr0", "Q"),
    ("dawrx0", "Q"), ("ciabr", "Q"), ("hdec_expiry", "Q"), ("purr", "Q"), ("spurr", "Q"),
    ("ic", "Q"), ("vtb", "Q"), ("hdar", "Q"), ("hdsisr", "Q"), ("heir", "Q"), ("asdr", "Q"),
    ("srr0", "Q"), ("srr1", "Q"), ("sprg", "4Q"), ("pidr", "Q"), ("cfar", "Q"), ("ppr", "Q"),
)
_V2_FIELDS = (*_V1_FIELDS, ("dawr1", "Q"), ("dawrx1", "Q"))
_LAYOUT = {1: _V1_FIELDS, 2: _V2_FIELDS}


@attrs.frozen
class HvGuestState:
    """``struct hv_guest_state``: field names as the kernel's. ``lpid`` and ``vcpu_token`` are
    u32, ``tb_offset`` is s64, ``sprg`` is the four SPRGs, every other field is u64. A
    version-1 block has no dawr1/dawrx1: they decode as 0 (the kernel zero-initialises
    ``l2_hv`` before reading)."""

    version: int = HV_GUEST_STATE_VERSION
    lpid: int = 0
    vcpu_token: int = 0
    lpcr: int = 0
    pcr: int = 0
    amor: int = 0
    dpdes: int = 0
    hfscr: int = 0
    tb_offset: int = 0
    dawr0: int = 0
    dawrx0: int = 0
    ciabr: int = 0
    hdec_expiry: int = 0
    purr: int = 0
    spurr: int = 0
    ic: int = 0
    vtb: int = 0
    hdar: int = 0
    hdsisr: int = 0
    heir: int = 0
    asdr: int = 0
    srr0: int = 0
    srr1: int = 0
    sprg: tuple[int, int, int, int] = (0, 0, 0, 0)
    pidr: int = 0
    cfar: int = 0
    ppr: int = 0
    dawr1: int = 0
    dawrx1: int = 0


@attrs.frozen
class _Codec:
    """One layout in one byte order, compiled: its struct, and the fields before and after
    ``sprg`` (the one field of four values)."""

    packer: struct.Struct
    head: Callable[[HvGuestState], tuple[int, ...]]
    tail: Callable[[HvGuestState], tuple[int, ...]]
    sprg: int
    """Where sprg's four values start among the struct's."""


@functools.cache
def _codec(layout: int, big_endian: bool) -> _Codec:
    fields = _LAYOUT[layout]
    names = [name for name, _ in fields]
    if names != [f.name for f in attrs.fields(HvGuestState)][:len(names)]:
        raise AssertionError("decode builds HvGuestState from the struct's values in order")
    i = names.index("sprg")
    return _Codec(struct.Struct((">" if big_endian else "<") + "".join(f for _, f in fields)),
                  attrgetter(*names[:i]), attrgetter(*names[i + 1:]), i)


def size_for_version(version: int) -> int | None:
    """``hv_guest_state_size`` (v5.12+): 232 for version 1, 248 for version 2, None (the
    kernel's -1) otherwise. The kernel's parameter is ``unsigned int``, so only the low 32 bits
    of the u64 version count: 0x1_00000002 sizes as version 2 (and then fails the later
    ``version > HV_GUEST_STATE_VERSION`` check with H_P2)."""
    return _SIZES.get(version & 0xFFFF_FFFF)


def decode(data: bytes, *, big_endian: bool) -> HvGuestState:
    """The fields of a 232-byte (version 1 layout) or 248-byte (version 2 layout) block read
    in the given byte order. The ``version`` field is decoded as stored, whatever the
    length."""
    layout = _LAYOUT_OF_SIZE.get(len(data))
    if layout is None:
        raise ValueError(f"an hv_guest_state is 232 or 248 bytes, not {len(data)}")
    codec = _codec(layout, big_endian)
    values = codec.packer.unpack(data)
    i = codec.sprg  # (the fields in the struct's order are HvGuestState's)
    return HvGuestState(*values[:i], values[i:i + 4], *values[i + 4:])


def encode(state: HvGuestState, *, big_endian: bool, version: int) -> bytes:
    """``state`` laid out as hv_guest_state ``version`` (1: 232 bytes, no dawr1/dawrx1;
    2: 248 bytes) in the given byte order. ``version`` picks the layout only: the version
    field written is ``state.version``, so odd blocks (a v1 layout claiming version 2) can be
    built on purpose. Raises ValueError for an unknown layout and struct.error for a value
    that does not fit its field."""
    if version not in _LAYOUT:
        raise ValueError(f"no hv_guest_state layout for version {version}")
    codec = _codec(version, big_endian)
    return codec.packer.pack(*codec.head(state), *state.sprg, *codec.tail(state))


def _swab(value: int, size: int) -> int:
    return int.from_bytes(value.to_bytes(size, "little"), "big")


def byteswap_hv_regs(state: HvGuestState, *, pcr_mask: int = PCR_MASK) -> HvGuestState:
    """``byteswap_hv_regs``: every field byte-reversed at its own width (lpid and vcpu_token as
    u32, tb_offset as the s64's 8 bytes, the rest u64), and ``pcr`` additionally OR'd with
    ``pcr_mask`` (``hr->pcr = swab64(hr->pcr) | PCR_MASK``).

    The kernel calls it on both paths. On the read side it turns L0's reading of L1's bytes
    into L1's values, with the reserved PCR bits forced on (harmless: ``restore_hv_regs``
    ORs PCR_MASK into ``vc->pcr`` anyway). On the write-back side it runs on L0's values to
    turn them into L1's byte order, and the OR then lands on the byte-swapped image: L1 reads
    back ``pcr | PCR_MASK | swab64(PCR_MASK)``: with the default mask every bit but
    PCR_MMA_DIS and PCR_ARCH_300 (0xEFFFFFFFFFFFFFEF). Not an involution: applying it twice
    does not give ``state`` back."""
    return attrs.evolve(
        state,
        version=_swab(state.version, 8),
        lpid=_swab(state.lpid, 4),
        vcpu_token=_swab(state.vcpu_token, 4),
        lpcr=_swab(state.lpcr, 8),
        pcr=_swab(state.pcr, 8) | pcr_mask,
        amor=_swab(state.amor, 8),
        dpdes=_swab(state.dpdes, 8),
        hfscr=_swab(state.hfscr, 8),
        tb_offset=int.from_bytes((state.tb_offset & MASK64).to_bytes(8, "little"), "big",
                                 signed=True),
        dawr0=_swab(state.dawr0, 8),
        dawrx0=_swab(state.dawrx0, 8),
        ciabr=_swab(state.ciabr, 8),
        hdec_expiry=_swab(state.hdec_expiry, 8),
        purr=_swab(state.purr, 8),
        spurr=_swab(state.spurr, 8),
        ic=_swab(state.ic, 8),
        vtb=_swab(state.vtb, 8),
        hdar=_swab(state.hdar, 8),
        hdsisr=_swab(state.hdsisr, 8),
        heir=_swab(state.heir, 8),
        asdr=_swab(state.asdr, 8),
        srr0=_swab(state.srr0, 8),
        srr1=_swab(state.srr1, 8),
        sprg=tuple(_swab(s, 8) for s in state.sprg),
        pidr=_swab(state.pidr, 8),
        cfar=_swab(state.cfar, 8),
        ppr=_swab(state.ppr, 8),
        dawr1=_swab(state.dawr1, 8),
        dawrx1=_swab(state.dawrx1, 8),
    )


@attrs.frozen
class GuestStateRead:
    """What ``kvmhv_enter_nested_guest`` has after reading and checking the block: ``rc`` is
    H_SUCCESS with ``state`` (L0's values: L1's, with pcr's reserved bits set when swapped),
    or H_PARAMETER (the read failed) / H_P2 (bad version) with ``state`` None."""

    rc: int
    state: HvGuestState | None = None


def _before(release: tuple[int, ...] | None, tag: tuple[int, ...]) -> bool:
    return release is not None and release < tag


def read_guest_state(mem: bytes, *, l1_big_endian: bool, l0_big_endian: bool,
                     release: tuple[int, ...] | None = None,
                     pcr_mask: int = PCR_MASK) -> GuestStateRead:
    """The hv_guest_state half of ``kvmhv_read_guest_state_and_regs`` plus the byte swap and
    version check that follow it in ``kvmhv_enter_nested_guest``.

    ``mem`` is L1 memory from the block's GPA to the end of what L0 can read (a shorter
    ``mem`` than the size needed is a failed ``kvm_vcpu_read_guest``). v5.12+: the first 8
    bytes give the version (swapped when the orders differ), ``size_for_version`` the size
    (unknown → H_PARAMETER), the rest of the 248-byte struct stays 0, then after the swap
    ``version > HV_GUEST_STATE_VERSION`` → H_P2. Before v5.12: 232 bytes are read, and any
    version but 1 → H_P2. The pt_regs read (``read_pt_regs``) fails the same way (H_PARAMETER)
    and comes after this one in the kernel."""
    swap = l1_big_endian != l0_big_endian
    if _before(release, (5, 12)):
        size = _SIZES[1]
        if len(mem) < size:
            return GuestStateRead(H_PARAMETER)
        state = decode(mem[:size], big_endian=l0_big_endian)
        if swap:
            state = byteswap_hv_regs(state, pcr_mask=pcr_mask)
        return GuestStateRead(H_P2) if state.version != 1 else GuestStateRead(H_SUCCESS, state)
    if len(mem) < 8:
        return GuestStateRead(H_PARAMETER)
    version = int.from_bytes(mem[:8], "big" if l1_big_endian else "little")
    size = size_for_version(version)
    if size is None or len(mem) < size:
        return GuestStateRead(H_PARAMETER)
    state = decode(mem[:size] + bytes(_SIZES[2] - size), big_endian=l0_big_endian)
    if swap:
        state = byteswap_hv_regs(state, pcr_mask=pcr_mask)
    if state.version > HV_GUEST_STATE_VERSION:
        return GuestStateRead(H_P2)
    return GuestStateRead(H_SUCCESS, state)


def write_guest_state(state: HvGuestState, *, l1_big_endian: bool, l0_big_endian: bool,
                      release: tuple[int, ...] | None = None,
                      pcr_mask: int = PCR_MASK) -> bytes | None:
    """The bytes ``kvmhv_write_guest_state_and_regs`` writes back at the block's GPA for L0's
    values ``state``, or None when it writes nothing (the hcall then returns H_AUTHORITY).

    When the orders differ the kernel first runs ``byteswap_hv_regs`` on ``state`` (pcr
    quirk included). From v5.12 the size then comes from ``hv_guest_state_size`` of the
    *already swapped* version: swab64(1) and swab64(2) have zero low 32 bits, so the size is
    -1 and nothing is written. By this reading every H_ENTER_NESTED from an L1 of the other
    endianness on v5.12+ ends in H_AUTHORITY after L2 has run. Before v5.12 the write always
    covered 232 bytes."""
    swap = l1_big_endian != l0_big_endian
    if swap:
        state = byteswap_hv_regs(state, pcr_mask=pcr_mask)
    if _before(release, (5, 12)):
        return encode(state, big_endian=l0_big_endian, version=1)
    size = size_for_version(state.version)
    if size is None:
        return None
    return encode(state, big_endian=l0_big_endian, version=2)[:size]


# ----------------------------------------------------------------------------------- pt_regs
PT_NIP = 32
PT_MSR = 33
PT_ORIG_R3 = 34
PT_CTR = 35
PT_LNK = 36
PT_XER = 37
PT_CCR = 38
PT_SOFTE = 39
PT_TRAP = 40
PT_DAR = 41
PT_DSISR = 42
PT_RESULT = 43
"""Word indices of ``struct pt_regs`` (uapi/asm/ptrace.h PT_*); gpr[n] is word n."""

PT_REGS_WORDS = 48
"""``sizeof(struct pt_regs) / 8`` on a current Book3S-64 kernel (asm/ptrace.h): the 44 words
of ``user_pt_regs`` (gpr[32], nip, msr, orig_gpr3, ctr, link, xer, ccr, softe, trap, dar,
dsisr, result) and a 4-word union (ppr, exit_result, kuap/amr, iamr; ``__pad[4]``): 384
bytes. Older kernels had 44 words (no ppr) or 46 (ppr + __pad); the size is L0's own
``sizeof``, so an L1 built with another layout is read past or short (releases of the layout
changes not confirmed). Pass ``words`` to model those."""


def decode_pt_regs(data: bytes, *, big_endian: bool,
                   words: int = PT_REGS_WORDS) -> tuple[int, ...]:
    """``struct pt_regs`` as the array of u64 that ``byteswap_pt_regs`` treats it as. Reading
    it in L1's order gives what the kernel has after the swap: no field is treated
    specially."""
    if len(data) != 8 * words:
        raise ValueError(f"pt_regs is {8 * words} bytes here, not {len(data)}")
    return _u64s(words, big_endian).unpack(data)


def encode_pt_regs(regs: tuple[int, ...], *, big_endian: bool) -> bytes:
    """The inverse of ``decode_pt_regs``: one u64 per word, in the given byte order."""
    return _u64s(len(regs), big_endian).pack(*regs)


@functools.cache
def _u64s(words: int, big_endian: bool) -> struct.Struct:
    return struct.Struct((">" if big_endian else "<") + f"{words}Q")


def read_pt_regs(mem: bytes, *, l1_big_endian: bool,
                 words: int = PT_REGS_WORDS) -> tuple[int, ...] | None:
    """The pt_regs half of ``kvmhv_read_guest_state_and_regs`` with ``byteswap_pt_regs``: L1's
    values, or None when fewer than ``sizeof(struct pt_regs)`` bytes are readable (the hcall
    then returns H_PARAMETER)."""
    if len(mem) < 8 * words:
        return None
    return decode_pt_regs(mem[:8 * words], big_endian=l1_big_endian, words=words)


def l1_version(release: str | None) -> int:
    """The version an L1 kernel of ``release`` writes (its own ``HV_GUEST_STATE_VERSION``):
    1 before v5.12, 2 since (None: the newest). An L1 of the L0's release, as ``--kernel``
    runs both."""
    return 1 if release is not None and _before(version(release), (5, 12)) \
        else HV_GUEST_STATE_VERSION
