"""The shadow PTE L0 inserts for a nested (L2) page fault: its size, RPN, permissions and R/C
bits, from L0's PTE for the L1 page and L1's PTE for the L2 page.

Mirrors step 3 of ``__kvmhv_nested_page_fault`` ("Compute the pte we need to insert for
nest_gpa -> host r_addr") with ``kvmppc_radix_level_to_shift`` /
``kvmppc_radix_shift_to_level`` (``arch/powerpc/kvm/book3s_hv_nested.c``; unchanged from v4.20
to the newest sources read), the test ``kvmhv_remove_nest_rmap`` applies before unmapping a
shadow PTE, and the radix PTE bits of ``arch/powerpc/include/asm/book3s/64/pgtable.h``, shared
with a hardware radix model. Sizes are those of a 64K-page radix host: PAGE_SHIFT 16,
PMD_SHIFT 21, PUD_SHIFT 30.
"""

from __future__ import annotations

import attrs

from ..hw.memory import PAGE_SHIFT

PMD_SHIFT = 21
PUD_SHIFT = 30

# book3s/64/pgtable.h: bits common to hash and radix
_PAGE_EXEC = 0x00001
_PAGE_WRITE = 0x00002
_PAGE_READ = 0x00004
_PAGE_RW = _PAGE_READ | _PAGE_WRITE
_PAGE_RWX = _PAGE_READ | _PAGE_WRITE | _PAGE_EXEC
_PAGE_PRIVILEGED = 0x00008
_PAGE_DIRTY = 0x00080
"""C: page changed."""
_PAGE_ACCESSED = 0x00100
"""R: page referenced."""
_PAGE_INVALID = 0x2000_0000_0000_0000
"""_RPAGE_SW0: present but being updated (only meaningful with _PAGE_PRESENT clear)."""
_PAGE_PTE = 0x4000_0000_0000_0000
"""A leaf, not a pointer to a lower table."""
_PAGE_PRESENT = 0x8000_0000_0000_0000
_PAGE_PA_MAX = 53
PTE_RPN_MASK = ((1 << _PAGE_PA_MAX) - 1) & ~((1 << PAGE_SHIFT) - 1)
"""The real page number field (bits 52..16 with 64K pages); older kernels had 57 bits."""


def level_to_shift(level: int) -> int:
    """``kvmppc_radix_level_to_shift``: 2 -> PUD_SHIFT (1G), 1 -> PMD_SHIFT (2M), else
    PAGE_SHIFT (64K)."""
    return {2: PUD_SHIFT, 1: PMD_SHIFT}.get(level, PAGE_SHIFT)


def shift_to_level(shift: int) -> int:
    """``kvmppc_radix_shift_to_level``: the inverse; any other shift WARNs and gives 0."""
    return {PUD_SHIFT: 2, PMD_SHIFT: 1}.get(shift, 0)


def shadow_shift(l0_shift: int, l1_shift: int) -> int:
    """The size of the shadow PTE, exactly as the kernel picks it: L0's page size when it is
    no larger than L1's; otherwise 2M if ``PMD_SHIFT < l1_shift`` (strictly), else 64K.

    With the radix sizes (64K, 2M, 1G for both) that means: L0 <= L1 gives L0's size, so a
    1G shadow PTE exists when both are 1G; L0 > L1 always gives 64K, including L0 = 1G with
    L1 = 2M (the 2M branch needs an L1 size strictly between 2M and 1G, which radix does not
    have). It is not min(L0, L1)."""
    if l0_shift <= l1_shift:
        return l0_shift
    return PMD_SHIFT if PMD_SHIFT < l1_shift else PAGE_SHIFT


def shadow_perm_mask(l1_pte: int, *, writing: bool) -> int:
    """The ``perm`` bits the kernel clears from L0's PTE: R, W or X that L1's PTE lacks
    (``gpte.may_read/may_write/may_execute``), A unless L1's PTE has A, and D unless L1's PTE
    has D and the access is a write (``gpte.rc``). A or D absent from L0's PTE stays absent:
    bits are only ever taken away."""
    perm = 0
    for bit in (_PAGE_READ, _PAGE_WRITE, _PAGE_EXEC, _PAGE_ACCESSED):
        if not l1_pte & bit:
            perm |= bit
    if not (l1_pte & _PAGE_DIRTY and writing):
        perm |= _PAGE_DIRTY
    return perm


@attrs.frozen
class ShadowPte:
    """What ``__kvmhv_nested_page_fault`` hands ``kvmppc_create_pte``."""

    pte: int
    shift: int
    level: int
    n_gpa: int
    """The L2 GPA aligned down to ``shift``: where the PTE goes, and the rmap entry's GPA."""
    rmap_gfn: int
    """The L1 GFN whose rmap word gets the entry: L1's GPA aligned down to *L0's* page size
    (before any size reduction), so every shadow PTE cut from one large L0 page is recorded
    on that page's first GFN."""


def compose_shadow_pte(l0_pte: int, *, l0_shift: int, l1_pte: int, l1_shift: int, gpa: int,
                       n_gpa: int, writing: bool) -> ShadowPte:
    """The shadow PTE for L2 GPA ``n_gpa`` (L1 GPA ``gpa`` = ``gpte.raddr``, in-page offset
    included) from L0's PTE ``l0_pte`` for ``gpa`` (size ``l0_shift``, from the table walk or
    the level ``kvmppc_book3s_instantiate_page`` returned) and L1's PTE bits ``l1_pte`` (size
    ``l1_shift``): ``l0_pte & ~shadow_perm_mask(...)``; when ``l0_shift > l1_shift`` the size
    drops to ``shadow_shift`` and the bits of ``gpa`` between the two sizes are OR'd into the
    RPN (``mask = (1UL << shift) - (1UL << actual_shift)``).

    The kernel refuses ``l1_shift < PAGE_SHIFT`` ("L1 guest page shift less than our own",
    -EINVAL) before this point; so does this function (ValueError)."""
    if l1_shift < PAGE_SHIFT:
        raise ValueError(f"L1 page shift {l1_shift} is below PAGE_SHIFT ({PAGE_SHIFT})")
    rmap_gfn = (gpa & ~((1 << l0_shift) - 1)) >> PAGE_SHIFT
    pte = l0_pte & ~shadow_perm_mask(l1_pte, writing=writing)
    shift = l0_shift
    if l0_shift > l1_shift:
        shift = shadow_shift(l0_shift, l1_shift)
        pte |= gpa & ((1 << l0_shift) - (1 << shift))
    return ShadowPte(pte=pte, shift=shift, level=shift_to_level(shift),
                     n_gpa=n_gpa & ~((1 << shift) - 1), rmap_gfn=rmap_gfn)


def pte_present(pte: int) -> bool:
    """``pte_present``: a valid leaf (PRESENT | PTE), or one marked INVALID | PTE while being
    updated."""
    return (pte & (_PAGE_PRESENT | _PAGE_PTE) == _PAGE_PRESENT | _PAGE_PTE
            or pte & (_PAGE_INVALID | _PAGE_PTE) == _PAGE_INVALID | _PAGE_PTE)


def shadow_pte_maps(pte: int, hpa: int, nbytes: int) -> bool:
    """The test of ``kvmhv_remove_nest_rmap`` (and ``kvmhv_update_nest_rmap_rc``) before it
    touches the shadow PTE an rmap entry names, when L0 drops ``nbytes`` of host memory at
    ``hpa``: the PTE is present and its RPN, masked to that size
    (``PTE_RPN_MASK & ~(nbytes - 1)``), is ``hpa`` so masked. Otherwise the entry is stale
    (the L2 GPA now maps elsewhere) and the PTE is left alone."""
    mask = PTE_RPN_MASK & ~(nbytes - 1)
    return pte_present(pte) and pte & mask == hpa & mask
