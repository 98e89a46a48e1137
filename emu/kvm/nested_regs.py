"""What L0 lets an L2 run with: the hypervisor-register sanitiser and the TM-state gate of
H_ENTER_NESTED.

Mirrors ``load_l2_hv_regs`` (``sanitise_hv_regs`` before v5.15) and the TM checks of
``kvmhv_enter_nested_guest`` in ``arch/powerpc/kvm/book3s_hv_nested.c``, and
``kvmppc_filter_lpcr_hv`` in ``arch/powerpc/kvm/book3s_hv.c``; bit values from
``arch/powerpc/include/asm/reg.h``.

Release differences (mainline tags; stable backports are not modelled):

- LPCR: L1 may change DPFD, ILE, TC, AIL, LD, LPES, MER; from v5.19 (2852ebfa10af "L2 LPCR
  should inherit L1 LPES setting") no longer LPES. From v5.13 (67145ef4960f "Add a function
  to filter guest LPCR bits", with bcc92a0d6d6e and 72c15287210f) the result also passes
  ``kvmppc_filter_lpcr_hv``; before, it did not.
- HFSCR: before v5.15 masked with L1's current HFSCR (``vcpu->arch.hfscr`` read before
  ``restore_hv_regs`` overwrote it); from v5.15 (8b210a880b35 "Make nested HFSCR state
  accessible") with ``hfscr_permitted``. Before v5.15 the sanitised values were also written
  into the block L1 gets back (7487cabc7ed2 "Sanitise vcpu registers" stopped that).
- DAWRX1 exists from v5.12 (bd1de1a0e6ef "Add infrastructure to support 2nd DAWR"); before,
  L2 has no second DAWR and ``dawrx1`` comes out 0.
- The TM check of B9 is from v5.14 (d9c57d3ed52a "Sanitise H_ENTER_NESTED TM state").
"""

from __future__ import annotations

import attrs

from .hvcall import H_BAD_MODE

# asm/reg.h: LPCR
LPCR_DPFD = 7 << 52
LPCR_ILE = 0x0000_0000_0200_0000
LPCR_AIL = 0x0000_0000_0180_0000
LPCR_AIL_3 = 0x0000_0000_0180_0000
LPCR_LD = 0x0000_0000_0002_0000
LPCR_MER = 0x0000_0000_0000_0800
LPCR_TC = 0x0000_0000_0000_0200
LPCR_LPES = 0x0000_0000_0000_000C
# HFSCR (bit numbers as FSCR's) and its interrupt-cause byte
HFSCR_INTR_CAUSE = 0xFF << 56
HFSCR_FP = 1 << 0
HFSCR_VECVSX = 1 << 1
HFSCR_DSCR = 1 << 2
HFSCR_PM = 1 << 3
HFSCR_BHRB = 1 << 4
HFSCR_TM = 1 << 5
HFSCR_EBB = 1 << 7
HFSCR_TAR = 1 << 8
HFSCR_MSGP = 1 << 10
# DAWRX / CIABR
DAWRX_USER = 1 << 0
DAWRX_KERNEL = 1 << 1
DAWRX_HYP = 1 << 2
CIABR_PRIV = 0x3
CIABR_PRIV_USER = 1
CIABR_PRIV_SUPER = 2
CIABR_PRIV_HYPER = 3
# MSR transaction state
MSR_TS_S = 1 << 33
MSR_TS_T = 1 << 34
MSR_TS_MASK = MSR_TS_T | MSR_TS_S


def _before(release: tuple[int, ...] | None, tag: tuple[int, ...]) -> bool:
    return release is not None and release < tag


@attrs.frozen
class HvRegs:
    """The registers of the hv_guest_state the sanitiser rewrites: as L1 asks for them, or as
    L2 runs with them."""

    lpcr: int = 0
    hfscr: int = 0
    dawrx0: int = 0
    dawrx1: int = 0
    ciabr: int = 0


def lpcr_l1_mask(release: tuple[int, ...] | None = None) -> int:
    """The LPCR bits L1 may choose for L2; every other bit comes from the vcore's LPCR (L0's
    LPCR for L1). DPFD | ILE | TC | AIL | LD | MER, plus LPES before v5.19."""
    mask = LPCR_DPFD | LPCR_ILE | LPCR_TC | LPCR_AIL | LPCR_LD | LPCR_MER
    return mask | LPCR_LPES if _before(release, (5, 19)) else mask


def filter_lpcr_hv(lpcr: int, *, radix_prefetch_bug: bool = False) -> int:
    """``kvmppc_filter_lpcr_hv`` for the L1 of a nested guest (v5.13+). L1 is a radix guest
    (nesting is radix-only), so TC is cleared; AIL survives only as AIL_3 (AIL 1 and 2 are
    disallowed) and not at all on a POWER9 with the radix prefetch bug (DD2.1 and earlier,
    ``radix_prefetch_bug``). Left out: the ARCH_207S test clearing AIL and the ARCH_300 test
    clearing LD, both always passed on the POWER9+ hosts that run nested guests."""
    lpcr &= ~LPCR_TC
    if lpcr & LPCR_AIL != LPCR_AIL_3 or radix_prefetch_bug:
        lpcr &= ~LPCR_AIL
    return lpcr


def load_l2_hv_regs(requested: HvRegs, *, vcore_lpcr: int, hfscr_permitted: int,
                    l1_hfscr: int, release: tuple[int, ...] | None = None,
                    radix_prefetch_bug: bool = False) -> HvRegs:
    """``load_l2_hv_regs`` (``sanitise_hv_regs`` plus the LPCR lines of
    ``kvmhv_enter_nested_guest`` before v5.15): the registers L2 runs with when L1 asks for
    ``requested``.

    - LPCR = (vcore_lpcr & ~mask) | (requested & mask), ``mask = lpcr_l1_mask(release)``,
      then ``filter_lpcr_hv`` from v5.13;
    - HFSCR = requested & (HFSCR_INTR_CAUSE | limit), limit ``hfscr_permitted`` from v5.15,
      ``l1_hfscr`` (L1's HFSCR at the hcall) before;
    - DAWRX0, DAWRX1 with DAWRX_HYP cleared (DAWRX1 is 0 before v5.12);
    - CIABR with its PRIV field cleared if it is HYPER, else unchanged.

    Every other hv_guest_state register goes to L2 as L1 gave it (``restore_hv_regs``), pcr
    with its reserved bits set."""
    mask = lpcr_l1_mask(release)
    lpcr = (vcore_lpcr & ~mask) | (requested.lpcr & mask)
    if not _before(release, (5, 13)):
        lpcr = filter_lpcr_hv(lpcr, radix_prefetch_bug=radix_prefetch_bug)
    limit = l1_hfscr if _before(release, (5, 15)) else hfscr_permitted
    ciabr = requested.ciabr
    if ciabr & CIABR_PRIV == CIABR_PRIV_HYPER:
        ciabr &= ~CIABR_PRIV
    return HvRegs(
        lpcr=lpcr,
        hfscr=requested.hfscr & (HFSCR_INTR_CAUSE | limit),
        dawrx0=requested.dawrx0 & ~DAWRX_HYP,
        dawrx1=0 if _before(release, (5, 12)) else requested.dawrx1 & ~DAWRX_HYP,
        ciabr=ciabr,
    )


def l2_regs_violations(regs: HvRegs, *, vcore_lpcr: int, hfscr_limit: int,
                       release: tuple[int, ...] | None = None) -> tuple[str, ...]:
    """The sanitisation invariant: why L2 must not run with ``regs`` (empty: it may).
    ``hfscr_limit`` is the facility set L1 may have (``hfscr_permitted``, or L1's HFSCR
    before v5.15).

    - an LPCR bit outside ``lpcr_l1_mask(release)`` differing from the vcore's;
    - from v5.13 (the filter): LPCR[TC] set, or LPCR[AIL] 1 or 2;
    - an HFSCR facility bit (outside the cause byte) not in ``hfscr_limit``;
    - DAWRX_HYP in DAWRX0 or DAWRX1 (a data watchpoint matching in hypervisor state);
    - CIABR[PRIV] = HYPER (an instruction breakpoint matching in hypervisor state)."""
    out = []
    fixed = ~lpcr_l1_mask(release)
    if (regs.lpcr ^ vcore_lpcr) & fixed:
        out.append(f"LPCR bits {(regs.lpcr ^ vcore_lpcr) & fixed:#x} differ from the vcore's")
    if not _before(release, (5, 13)):
        if regs.lpcr & LPCR_TC:
            out.append("LPCR[TC] set for a radix L1")
        if regs.lpcr & LPCR_AIL not in (0, LPCR_AIL_3):
            out.append("LPCR[AIL] is 1 or 2")
    extra = regs.hfscr & ~HFSCR_INTR_CAUSE & ~hfscr_limit
    if extra:
        out.append(f"HFSCR facilities {extra:#x} not permitted to L1")
    for name in ("dawrx0", "dawrx1"):
        if getattr(regs, name) & DAWRX_HYP:
            out.append(f"{name.upper()} matches in hypervisor state")
    if regs.ciabr & CIABR_PRIV == CIABR_PRIV_HYPER:
        out.append("CIABR matches in hypervisor state")
    return tuple(out)


def l2_regs_allowed(regs: HvRegs, *, vcore_lpcr: int, hfscr_limit: int,
                    release: tuple[int, ...] | None = None) -> bool:
    """True when ``l2_regs_violations`` finds nothing."""
    return not l2_regs_violations(regs, vcore_lpcr=vcore_lpcr, hfscr_limit=hfscr_limit,
                                  release=release)


def check_l1_not_transactional(l1_msr: int) -> int | None:
    """The first gate of ``kvmhv_enter_nested_guest`` (before anything is read from L1
    memory): H_BAD_MODE if L1's MSR is transactional (TS = 0b10), else None. It came with
    d9c57d3ed52a (v5.14, B9), as its stable backport shows; before that nothing looked at
    L1's TM state (``no-tm-sanitise`` switches both checks off)."""
    return H_BAD_MODE if l1_msr & MSR_TS_MASK == MSR_TS_T else None


def check_tm_state(l1_msr: int, l2_msr: int, *,
                   release: tuple[int, ...] | None = None) -> int | None:
    """B9, d9c57d3ed52a (v5.14): after the blocks are read, H_BAD_MODE unless L2 enters
    transactional exactly when L1 has set up a suspended state, else None. Before v5.14
    always None (L1 could hand L0 an L2 MSR it cannot recheckpoint: a TM Bad Thing on hrfid).

    - L1 suspended (TS = 0b01): L2's MSR must be TM-active, i.e. TS != 0. MSR_TM_ACTIVE is
      ``TS != 0``, so the reserved TS = 0b11 passes;
    - otherwise L2's TS must be 0, and L1's TS must be 0 too (a WARN_ON_ONCE case: L1
      transactional is stopped earlier by ``check_l1_not_transactional``, which leaves L1's
      reserved TS = 0b11)."""
    if _before(release, (5, 14)):
        return None
    if l1_msr & MSR_TS_MASK == MSR_TS_S:
        return None if l2_msr & MSR_TS_MASK else H_BAD_MODE
    if l2_msr & MSR_TS_MASK or l1_msr & MSR_TS_MASK:
        return H_BAD_MODE
    return None
