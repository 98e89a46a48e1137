"""The operands of H_TLB_INVALIDATE: decoding, the validity check, and the inverse encoder.

Mirrors ``get_ric``/``get_prs``/``get_r``/``get_lpid``/``get_is``/``get_ap``/``get_epn``, the
check at the top of ``kvmhv_emulate_priv_tlbie`` and the AP test of
``kvmhv_emulate_tlbie_tlb_addr`` (``arch/powerpc/kvm/book3s_hv_nested.c``), ``ap_to_shift``
(``asm/book3s/64/mmu-hash.h``) over the radix ``mmu_psize_defs`` (4K AP 0, 64K AP 5, 2M AP 1,
1G AP 2: ``radix__early_init_mmu`` and the ``ibm,processor-radix-AP-encodings`` the firmware
gives), and ``H_TLBIE_P1_ENC`` (``asm/kvm_book3s_64.h``). Unchanged from v4.20 to the
newest sources read.

The hcall's registers: r4 = the tlbie instruction image (only RIC, PRS and R are used),
r5 = RS (the lpid in its low 32 bits), r6 = RB (IS, AP, EPN).
"""

from __future__ import annotations

import attrs

from .hvcall import H_PARAMETER, MASK64

RIC_FLUSH_TLB = 0
RIC_FLUSH_PWC = 1
RIC_FLUSH_ALL = 2
# IS values in RB (the kernel's TLBIEL_INVAL_PAGE/SET_PID/SET_LPID/SET, shifted down by 10):
# one address, one PID (process-scoped: refused here), one LPID, every LPID.
IS_ADDR = 0
IS_PID = 1
IS_LPID = 2
IS_ALL = 3

AP_SHIFTS = {0: 12, 5: 16, 1: 21, 2: 30}
"""Radix actual-page-size encodings: AP -> page shift (4K, 64K, 2M, 1G)."""


def ap_to_shift(ap: int) -> int | None:
    """``ap_to_shift``: the page shift of a radix AP encoding, None for an encoding no page
    size has (the kernel's -1, which makes the IS=0 path return H_PARAMETER)."""
    return AP_SHIFTS.get(ap)


@attrs.frozen
class TlbieOperands:
    """The decoded fields (names as the kernel's getters, ``is_`` for IS)."""

    ric: int
    prs: int
    r: int
    lpid: int
    """``rs & 0xffffffff``. The kernel holds it in an int, so values >= 2**31 are negative
    there; ``kvmhv_get_nested`` compares in unsigned long, so either way such an lpid finds no
    guest."""
    is_: int
    ap: int
    epn: int
    """``rb >> 12``."""

    @property
    def page_shift(self) -> int | None:
        """``ap_to_shift(ap)``: the size of the page an IS=0 invalidation names."""
        return ap_to_shift(self.ap)

    @property
    def addr(self) -> int | None:
        """The IS=0 target: ``(epn << 12)`` aligned down to the page size, as
        ``kvmhv_emulate_tlbie_tlb_addr`` computes it (None for a bad AP). For a 4K AP the
        kernel's ``npages = 1UL << (shift - PAGE_SHIFT)`` shifts by a negative amount
        (undefined in C; 0 on ppc64), so its loop runs once: the one shadow PTE containing
        ``addr``."""
        shift = self.page_shift
        if shift is None:
            return None
        return (self.epn << 12) & MASK64 & ~((1 << shift) - 1)


def decode_tlbie(instr: int, rs: int, rb: int) -> TlbieOperands:
    """The getters: RIC = instr[18:20], PRS = instr[17], R = instr[16] (of the low 32 bits,
    the kernel's ``unsigned int``), lpid = rs[0:32], IS = rb[10:12], AP = rb[5:8],
    EPN = rb >> 12."""
    instr &= 0xFFFF_FFFF
    rb &= MASK64
    return TlbieOperands(ric=(instr >> 18) & 0x3, prs=(instr >> 17) & 0x1,
                         r=(instr >> 16) & 0x1, lpid=rs & 0xFFFF_FFFF,
                         is_=(rb >> 10) & 0x3, ap=(rb >> 5) & 0x7, epn=rb >> 12)


def check_tlbie(ops: TlbieOperands) -> int | None:
    """H_PARAMETER or None, in the kernel's order: first ``kvmhv_emulate_priv_tlbie``'s
    ``(!r) || prs || ric == 3 || is == 1 || (!is && (ric == 1 || ric == 2))`` (not radix;
    process-scoped; no "cluster bombs"; PID scope; PWC or ALL for one address is not in the
    ISA), then for IS=0 the AP test of ``kvmhv_emulate_tlbie_tlb_addr``, which comes before
    the guest lookup: a bad AP fails even for an lpid with no nested guest. The switch's
    ``default: -EINVAL`` is unreachable (IS is 2 bits and IS=1 is already refused)."""
    if (not ops.r or ops.prs or ops.ric == 3 or ops.is_ == IS_PID
            or (ops.is_ == IS_ADDR and ops.ric in (RIC_FLUSH_PWC, RIC_FLUSH_ALL))):
        return H_PARAMETER
    if ops.is_ == IS_ADDR and ops.page_shift is None:
        return H_PARAMETER
    return None


def h_tlbie_p1_enc(ric: int, prs: int, r: int) -> int:
    """``H_TLBIE_P1_ENC``: the instruction-image bits an L1 passes in r4."""
    return ((ric & 0x3) << 18) | ((prs & 0x1) << 17) | ((r & 0x1) << 16)


def encode_tlbie(*, ric: int, prs: int = 0, r: int = 1, lpid: int = 0, is_: int,
                 ap: int = 0, epn: int = 0) -> tuple[int, int, int]:
    """The inverse of ``decode_tlbie``: (r4, r5, r6) for the given fields, for building calls
    in tests and scenarios (``decode_tlbie(*encode_tlbie(...))`` gives the fields back).
    ``addr_to_epn`` turns an address into ``epn``."""
    rb = ((epn << 12) | ((is_ & 0x3) << 10) | ((ap & 0x7) << 5)) & MASK64
    return h_tlbie_p1_enc(ric, prs, r), lpid & 0xFFFF_FFFF, rb


def addr_to_epn(addr: int) -> int:
    """The EPN field for an effective address: ``addr >> 12``."""
    return addr >> 12
