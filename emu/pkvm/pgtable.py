"""The EL2 page-table code of arm64 KVM (arch/arm64/kvm/hyp/pgtable.c, kvm_pgtable.h), as
pKVM runs it on the host stage-2, the guests' stage-2 and its own stage-1, v6.16.

Function by function with the kernel's names: ``kvm_pgtable_walk`` visits the entries of a
range depth first, calling a walker's visitor on leaves (``KVM_PGTABLE_WALK_LEAF``, invalid
entries included) and on table entries before (``_TABLE_PRE``) and after (``_TABLE_POST``)
their children; the walkers map (blocks where ``force_pte_cb`` allows, tables allocated on
the way), annotate invalid entries with an owner (``kvm_pgtable_stage2_set_owner``: always
pages), unmap (freeing a table that empties, in TABLE_POST), and change leaf attributes.
Return codes are the kernel's: -EINVAL, -ENOMEM, -EAGAIN, -E2BIG (internal: "no block
here"), -ERANGE, -EPERM.

Refcounts (through ``mm_ops``, a ``hyp_pool``): a table page's refcount is 1 + its counted
entries, where a stage-2 entry is counted when nonzero (``stage2_pte_is_counted``: valid
entries and owner annotations), a hyp stage-1 entry when valid. Installing a counted entry
gets the page, removing one puts it; a table emptied to refcount 1 is unlinked and freed.
The PGD may be several concatenated pages, each with its own refcount (hyp_split_page);
``table_refcounts_ok`` checks all of it.

Break-before-make (``stage2_try_break_pte`` / ``stage2_make_pte``): a live stage-2 entry is
replaced by storing KVM_INVALID_PTE_LOCKED, invalidating the old translation (TLBI by IPA,
broadcast, for a leaf; the whole VMID for a table: no FEAT_TLBIRANGE is modelled) and only
then storing the new entry.

Concurrency. Every function that stores to a live entry is ``async`` and awaits
``ctx.point`` before each store other CPUs' walkers can observe and before each TLBI;
reads done under the caller's lock need no point (``kvm_pgtable_get_leaf`` is plain). A
refcount change is done in the same step as the store it accounts for (only the lock holder
reads refcounts, so the kernel's order inside that step is not observable), which keeps
``table_refcounts_ok`` true at every scheduling point of a correct model. A WARN_ON of
pgtable.c is reported as a finding (``ctx.fail("WARN_ON", ...)``).

Owner annotations. ``annotation_layout`` is the bit field of an invalid entry holding the
owner id: "9:2" (v5.15 on; with KVM_INVALID_PTE_LOCKED = BIT(10) as the break value) or
"63:56" (v5.13-v5.14). Those older releases had neither the LOCKED marker nor the
software-bits-only store (an owner in 63:56 overlaps SW1-SW3, which that store would take
for software bits): with "63:56" the break stores 0 and every update breaks, which is what
their stage2_put_pte did (clear, TLBI if valid, put). KVM_MAX_OWNER_ID is 1 (read in
mainline pgtable.c of about v6.5; reconstructed for v6.16, whose set_owner callers use only
the host's 0 and the hyp's 1; Android trees widen it to the field's maximum).

Quirks (``ctx.quirk``): ``set-owner-no-tlbi`` walks set_owner with
KVM_PGTABLE_WALK_SKIP_BBM_TLBI, so a valid entry is annotated without the TLBI and a CPU's
TLB keeps the old translation; ``pgd-refcount`` (B11, fixed by 1d58a17ef545, v5.16) makes
``host_s2_mm_ops`` allocate the PGD as one block without hyp_split_page: its tail pages have
refcount 0, so the put of their last counted entry frees a page that is still the PGD.

Not modelled: cache maintenance (CMOs), FWB (memory attributes are the non-FWB encodings),
shared (RCU) walks (at EL2 ``kvm_pgtable_walk_begin`` refuses them with -EPERM, as here),
LPA2 (levels 0-3, 48-bit output addresses). Relaxing permissions invalidates with the
broadcast form (the kernel's local ``_nsh`` form is for this CPU only; a stale entry it
leaves elsewhere is stricter than the page table, so the difference is unobservable by
the ownership invariants).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ..hw import arm64_stage2 as hw
from ..hw.arm64_stage2 import (
    ATTR_HI,
    ATTR_LO,
    DESC_OA_MASK,
    LAST_LEVEL,
    MAX_LEVELS,
    PAGE_SHIFT,
    PAGE_SIZE,
    PTRS_PER_PTE,
    TableMemory,
    granule_shift,
    granule_size,
)
from ..hw.arm64_tlb import Arm64Tlbs
from ..sim import accesses
from .errno_base import E2BIG, EAGAIN, EINVAL, ENOMEM, EPERM, ERANGE
from .memory import (
    HypPool,
    get_order,
    hyp_alloc_pages,
    hyp_get_page,
    hyp_page_count,
    hyp_put_page,
    hyp_split_page,
)

# --- kvm_pgtable.h --------------------------------------------------------------------

KVM_PGTABLE_MAX_LEVELS = MAX_LEVELS
KVM_PGTABLE_LAST_LEVEL = LAST_LEVEL
KVM_PGTABLE_MIN_BLOCK_LEVEL = hw.MIN_BLOCK_LEVEL

KVM_PTE_VALID = hw.DESC_VALID
KVM_PTE_TYPE = hw.DESC_TYPE
KVM_PTE_ADDR_MASK = DESC_OA_MASK
KVM_PHYS_INVALID = (1 << 64) - 1
KVM_PHYS_BITS = 48
"""Output addresses the model's PARange allows (kvm_phys_is_valid)."""

KVM_PTE_LEAF_ATTR_LO = ATTR_LO
KVM_PTE_LEAF_ATTR_HI = ATTR_HI
KVM_PTE_LEAF_ATTR_HI_SW = hw.SW_MASK
KVM_PTE_LEAF_ATTR_LO_S2_MEMATTR = hw.S2_MEMATTR
KVM_PTE_LEAF_ATTR_LO_S2_S2AP_R = hw.S2AP_R
KVM_PTE_LEAF_ATTR_LO_S2_S2AP_W = hw.S2AP_W
KVM_PTE_LEAF_ATTR_LO_S2_SH_IS = hw.SH_IS << 8
KVM_PTE_LEAF_ATTR_LO_S2_AF = hw.AF
KVM_PTE_LEAF_ATTR_HI_S2_XN = hw.S2_XN
KVM_PTE_LEAF_ATTR_HI_S2_XN_PXN = 1
KVM_PTE_LEAF_ATTR_HI_S2_XN_XN = 2
KVM_PTE_LEAF_ATTR_HI_S2_XN_UXN = 3
KVM_PTE_LEAF_ATTR_S2_PERMS = hw.S2AP_R | hw.S2AP_W | hw.S2_XN
KVM_PTE_LEAF_ATTR_LO_S1_AP_RO = hw.S1_AP_RO
KVM_PTE_LEAF_ATTR_LO_S1_AP_RW = hw.S1_AP_RW
KVM_PTE_LEAF_ATTR_LO_S1_SH_IS = hw.SH_IS << 8
KVM_PTE_LEAF_ATTR_LO_S1_AF = hw.AF
KVM_PTE_LEAF_ATTR_HI_S1_XN = hw.S1_XN

KVM_INVALID_PTE_LOCKED = 1 << 10
"""The break value: an entry whose break-before-make is in progress (9:2 layout)."""
KVM_MAX_OWNER_ID = 1
ANNOTATION_LAYOUTS = ("63:56", "9:2")

# Memory types: stage-2 MemAttr without FWB (PAGE_S2_MEMATTR), and the hyp's MAIR indexes.
MT_S2_NORMAL = 0xF
MT_S2_NORMAL_NC = 0x5
MT_S2_DEVICE_nGnRE = 0x1
MT_NORMAL = 0
MT_NORMAL_NC = 2
MT_DEVICE_nGnRE = 4

# enum kvm_pgtable_prot
KVM_PGTABLE_PROT_X = 1 << 0
KVM_PGTABLE_PROT_W = 1 << 1
KVM_PGTABLE_PROT_R = 1 << 2
KVM_PGTABLE_PROT_DEVICE = 1 << 3
KVM_PGTABLE_PROT_NORMAL_NC = 1 << 4
KVM_PGTABLE_PROT_PXN = 1 << 5
KVM_PGTABLE_PROT_UXN = 1 << 6
KVM_PGTABLE_PROT_SW0 = hw.SW0
KVM_PGTABLE_PROT_SW1 = hw.SW1
KVM_PGTABLE_PROT_SW2 = hw.SW2
KVM_PGTABLE_PROT_SW3 = hw.SW3
KVM_PGTABLE_PROT_RW = KVM_PGTABLE_PROT_R | KVM_PGTABLE_PROT_W
KVM_PGTABLE_PROT_RWX = KVM_PGTABLE_PROT_RW | KVM_PGTABLE_PROT_X
PKVM_HOST_MEM_PROT = KVM_PGTABLE_PROT_RWX
PKVM_HOST_MMIO_PROT = KVM_PGTABLE_PROT_RW
PAGE_HYP = KVM_PGTABLE_PROT_RW
PAGE_HYP_EXEC = KVM_PGTABLE_PROT_R | KVM_PGTABLE_PROT_X
PAGE_HYP_RO = KVM_PGTABLE_PROT_R
PAGE_HYP_DEVICE = PAGE_HYP | KVM_PGTABLE_PROT_DEVICE

# enum kvm_pgtable_stage2_flags
KVM_PGTABLE_S2_NOFWB = 1 << 0
KVM_PGTABLE_S2_IDMAP = 1 << 1

# enum kvm_pgtable_walk_flags
KVM_PGTABLE_WALK_LEAF = 1 << 0
KVM_PGTABLE_WALK_TABLE_PRE = 1 << 1
KVM_PGTABLE_WALK_TABLE_POST = 1 << 2
KVM_PGTABLE_WALK_SHARED = 1 << 3
KVM_PGTABLE_WALK_HANDLE_FAULT = 1 << 4
KVM_PGTABLE_WALK_SKIP_BBM_TLBI = 1 << 5


# scheduling-point labels
_OP_S2_STORE = "stage-2 pte store"
_OP_S1_STORE = "hyp stage-1 pte store"
_OP_TLBI_IPA = "tlbi ipas2e1is"
_OP_TLBI_VMID = "tlbi vmalls12e1is"
_OP_TLBI_VA = "tlbi vae2is"


class ModelCtx(Protocol):
    """What pgtable code uses of a ``Machine`` or ``Sequential``."""

    def point(self, op: str) -> Awaitable[None]: ...

    def quirk(self, name: str) -> bool: ...

    def fail(self, kind: str, message: str, details: str = "") -> None: ...


def kvm_pte_valid(pte: int) -> bool:
    return bool(pte & KVM_PTE_VALID)


kvm_pte_table = hw.desc_is_table


def kvm_pte_to_phys(pte: int) -> int:
    return pte & KVM_PTE_ADDR_MASK


def kvm_pte_to_pfn(pte: int) -> int:
    return (pte & KVM_PTE_ADDR_MASK) >> PAGE_SHIFT


def kvm_granule_shift(level: int) -> int:
    return granule_shift(level)


def kvm_granule_size(level: int) -> int:
    return granule_size(level)


def kvm_level_supports_block_mapping(level: int) -> bool:
    return level >= KVM_PGTABLE_MIN_BLOCK_LEVEL


def kvm_phys_is_valid(phys: int) -> bool:
    return phys < (1 << KVM_PHYS_BITS)


def stage2_pte_is_counted(pte: int) -> bool:
    """Valid entries and owner annotations count in their table page's refcount."""
    return pte != 0


# --- mm_ops ----------------------------------------------------------------------------

class KvmPgtableMmOps:
    """struct kvm_pgtable_mm_ops over a hyp_pool, as mem_protect.c builds them for the host
    stage-2 (host_s2_*) and the hyp's own allocator uses them. Pages are named by pfn (the
    kernel passes their hyp VA). ``split_pgd``: zalloc_pages_exact gives each page of the
    block its own refcount (hyp_split_page), as since 1d58a17ef545."""

    __slots__ = ("pool", "split_pgd")

    def __init__(self, pool: HypPool, *, split_pgd: bool = True) -> None:
        self.pool = pool
        self.split_pgd = split_pgd

    def zalloc_page(self, mc: Any) -> int | None:
        """One zeroed page with refcount 1 (host_s2_zalloc_page: from the pool ``mc``
        names; the model has one pool per mm_ops)."""
        return hyp_alloc_pages(self.pool, 0)

    def zalloc_pages_exact(self, size: int) -> int | None:
        pfn = hyp_alloc_pages(self.pool, get_order(size))
        if pfn is not None and self.split_pgd:
            hyp_split_page(self.pool, pfn)
        return pfn

    def free_pages_exact(self, pfn: int, size: int) -> None:
        for p in range(pfn, pfn + (1 << get_order(size))):
            hyp_put_page(self.pool, p)

    def free_unlinked_table(self, pfn: int, level: int) -> None:
        kvm_pgtable_stage2_free_unlinked(self, pfn, level)

    def get_page(self, pfn: int) -> None:
        hyp_get_page(self.pool, pfn)

    def put_page(self, pfn: int) -> None:
        hyp_put_page(self.pool, pfn)

    def page_count(self, pfn: int) -> int:
        return hyp_page_count(self.pool, pfn)


def host_s2_mm_ops(pool: HypPool, ctx: ModelCtx) -> KvmPgtableMmOps:
    """The host stage-2's mm_ops (prepare_s2_pool); the ``pgd-refcount`` quirk (B11) drops
    hyp_split_page from host_s2_zalloc_pages_exact."""
    return KvmPgtableMmOps(pool, split_pgd=not ctx.quirk("pgd-refcount"))


# --- struct kvm_pgtable ------------------------------------------------------------------

class KvmPgtable:
    """struct kvm_pgtable, with what the model needs beside it: the table memory, the TLBs
    and VMID its invalidations go to (struct kvm_s2_mmu), and the ``ctx`` it runs on."""

    __slots__ = (
        "annotation_layout",
        "break_pte",
        "ctx",
        "flags",
        "force_pte_cb",
        "ia_bits",
        "mem",
        "mm_ops",
        "owner_mask",
        "owner_shift",
        "pgd",
        "start_level",
        "sw_bits_store",
        "tlbs",
        "vmid",
    )

    def __init__(self, mem: TableMemory, tlbs: Arm64Tlbs, ctx: ModelCtx, *, vmid: int = 0,
                 annotation_layout: str = "9:2") -> None:
        if annotation_layout not in ANNOTATION_LAYOUTS:
            raise ValueError(f"annotation layout {annotation_layout!r}: one of "
                             f"{', '.join(ANNOTATION_LAYOUTS)}")
        self.ia_bits = 0
        self.start_level = 0
        self.pgd: int | None = None
        """The pfn of the first (concatenated) PGD page; None before init."""
        self.mm_ops: KvmPgtableMmOps | None = None
        self.flags = 0
        self.force_pte_cb: Callable[[int, int, int], bool] | None = None
        self.mem = mem
        self.tlbs = tlbs
        self.vmid = vmid
        self.ctx = ctx
        self.annotation_layout = annotation_layout
        self.owner_shift, self.owner_mask = hw.bitfield(annotation_layout)
        newer = annotation_layout == "9:2"
        self.break_pte = KVM_INVALID_PTE_LOCKED if newer else 0
        self.sw_bits_store = newer

    def pgd_pages(self) -> int:
        return kvm_pgd_pages(self.ia_bits, self.start_level)


def kvm_pgd_page_idx(pgt: KvmPgtable, addr: int) -> int:
    return (addr & ((1 << pgt.ia_bits) - 1)) >> granule_shift(pgt.start_level - 1)


def kvm_pgd_pages(ia_bits: int, start_level: int) -> int:
    return hw.pgd_pages(ia_bits, start_level)


def kvm_init_table_pte(childp: int) -> int:
    return hw.make_table_desc(childp)


def kvm_init_valid_leaf_pte(pa: int, attr: int, level: int) -> int:
    return hw.make_leaf_desc(pa, attr, level)


def kvm_init_invalid_leaf_owner(pgt: KvmPgtable, owner_id: int) -> int:
    return (owner_id & pgt.owner_mask) << pgt.owner_shift


def kvm_invalid_pte_owner(pgt: KvmPgtable, pte: int) -> int:
    """The owner id an invalid entry carries (FIELD_GET(KVM_INVALID_PTE_OWNER_MASK)); 0 for
    a valid entry."""
    return 0 if pte & KVM_PTE_VALID else (pte >> pgt.owner_shift) & pgt.owner_mask


def stage2_pte_is_locked(pgt: KvmPgtable, pte: int) -> bool:
    lk = pgt.break_pte
    return lk != 0 and not pte & KVM_PTE_VALID and bool(pte & lk)


def _warn(pgt: KvmPgtable, what: str) -> None:
    pgt.ctx.fail("warn-on", f"WARN_ON: pgtable.c: {what}")


def __kvm_pgtable_stage2_init(pgt: KvmPgtable, mm_ops: KvmPgtableMmOps, ia_bits: int,
                              start_level: int | None = None, flags: int = 0,
                              force_pte_cb: Callable[[int, int, int], bool] | None = None,
                              ) -> int:
    """A stage-2 over an input space of ``ia_bits`` (VTCR_EL2.T0SZ), starting at
    ``start_level`` (VTCR_EL2.SL0; by default what kvm_get_vtcr() picks), its PGD zeroed
    and concatenated as needed."""
    if start_level is None:
        start_level = hw.start_level_for(ia_bits)
    pgd_sz = kvm_pgd_pages(ia_bits, start_level) * PAGE_SIZE
    pgd = mm_ops.zalloc_pages_exact(pgd_sz)
    if pgd is None:
        return -ENOMEM
    pgt.pgd = pgd
    pgt.ia_bits = ia_bits
    pgt.start_level = start_level
    pgt.mm_ops = mm_ops
    pgt.flags = flags
    pgt.force_pte_cb = force_pte_cb
    return 0


def kvm_pgtable_hyp_init(pgt: KvmPgtable, va_bits: int, mm_ops: KvmPgtableMmOps) -> int:
    """The hypervisor's stage-1 over ``va_bits`` (one PGD page)."""
    levels = (va_bits - 4) // (PAGE_SHIFT - 3)
    pgd = mm_ops.zalloc_page(None)
    if pgd is None:
        return -ENOMEM
    pgt.pgd = pgd
    pgt.ia_bits = va_bits
    pgt.start_level = KVM_PGTABLE_MAX_LEVELS - levels
    pgt.mm_ops = mm_ops
    pgt.force_pte_cb = None
    return 0


# --- the walker ------------------------------------------------------------------------

Visitor = Callable[["KvmPgtableVisitCtx", int], Awaitable[int]]


class KvmPgtableWalker:
    """struct kvm_pgtable_walker: ``cb(ctx, visit) -> int`` (async), its ``arg``, and the
    KVM_PGTABLE_WALK_* ``flags`` naming what it visits."""

    __slots__ = ("arg", "cb", "flags")

    def __init__(self, cb: Visitor, arg: Any = None, flags: int = KVM_PGTABLE_WALK_LEAF,
                 ) -> None:
        self.cb, self.arg, self.flags = cb, arg, flags


class KvmPgtableVisitCtx:
    """struct kvm_pgtable_visit_ctx: the entry ``ptep`` = (``pfn``, ``idx``) of table page
    ``pfn``, its value ``old`` when visited, the walk's ``start``/``addr``/``end``,
    ``level``, ``flags``, ``arg`` and ``mm_ops``; and ``pgt`` (the model's way to the table
    memory, TLBs and ctx that the kernel reaches through globals)."""

    __slots__ = (
        "addr",
        "arg",
        "end",
        "flags",
        "idx",
        "level",
        "mm_ops",
        "old",
        "pfn",
        "pgt",
        "start",
    )

    def __init__(self, pgt: KvmPgtable, pfn: int, idx: int, old: int, arg: Any,
                 start: int, addr: int, end: int, level: int, flags: int) -> None:
        self.pgt, self.pfn, self.idx, self.old, self.arg = pgt, pfn, idx, old, arg
        self.mm_ops: KvmPgtableMmOps = pgt.mm_ops  # type: ignore[assignment]
        self.start, self.addr, self.end, self.level, self.flags = start, addr, end, level, flags


class _WalkData:
    __slots__ = ("addr", "end", "start", "walker")

    def __init__(self, walker: KvmPgtableWalker, start: int, end: int) -> None:
        self.walker, self.start, self.addr, self.end = walker, start, start, end


def kvm_pgtable_walk_continue(walker: KvmPgtableWalker, r: int) -> bool:
    """-EAGAIN ends a walk only in a fault handler; any other error always ends it."""
    if r == -EAGAIN:
        return not walker.flags & KVM_PGTABLE_WALK_HANDLE_FAULT
    return not r


async def __kvm_pgtable_visit(data: _WalkData, pgt: KvmPgtable, pfn: int, table: list[int],
                              idx: int, level: int) -> int:
    walker = data.walker
    flags = walker.flags
    if accesses.current.on:
        pgt.mem.touch(pfn, idx)
    ctx = KvmPgtableVisitCtx(pgt, pfn, idx, table[idx], walker.arg, data.start, data.addr,
                             data.end, level, flags)
    ret = 0
    reload = False
    is_table = kvm_pte_table(ctx.old, level)
    if is_table and flags & KVM_PGTABLE_WALK_TABLE_PRE:
        ret = await walker.cb(ctx, KVM_PGTABLE_WALK_TABLE_PRE)
        reload = True
    if not is_table and flags & KVM_PGTABLE_WALK_LEAF:
        ret = await walker.cb(ctx, KVM_PGTABLE_WALK_LEAF)
        reload = True
    # reload: the visitor may have installed or replaced a table to descend into
    if reload:
        ctx.old = table[idx]
        is_table = kvm_pte_table(ctx.old, level)
    if kvm_pgtable_walk_continue(walker, ret):
        if not is_table:
            size = granule_size(level)
            data.addr = (data.addr & ~(size - 1)) + size
        else:
            ret = await __kvm_pgtable_walk(data, pgt, kvm_pte_to_pfn(ctx.old), level + 1)
            if kvm_pgtable_walk_continue(walker, ret) and flags & KVM_PGTABLE_WALK_TABLE_POST:
                ret = await walker.cb(ctx, KVM_PGTABLE_WALK_TABLE_POST)
    return 0 if kvm_pgtable_walk_continue(walker, ret) else ret


async def __kvm_pgtable_walk(data: _WalkData, pgt: KvmPgtable, pfn: int, level: int) -> int:
    if level >= KVM_PGTABLE_MAX_LEVELS:
        _warn(pgt, f"walk below the last level at pfn {pfn:#x}")
        return -EINVAL
    table = pgt.mem.table(pfn)
    shift = granule_shift(level)
    ret = 0
    for idx in range((data.addr >> shift) & (PTRS_PER_PTE - 1), PTRS_PER_PTE):
        if data.addr >= data.end:
            break
        ret = await __kvm_pgtable_visit(data, pgt, pfn, table, idx, level)
        if ret:
            break
    return ret


async def _kvm_pgtable_walk(pgt: KvmPgtable, data: _WalkData) -> int:
    limit = 1 << pgt.ia_bits
    if data.addr > limit or data.end > limit:
        return -ERANGE
    if pgt.pgd is None:
        return -EINVAL
    idx = kvm_pgd_page_idx(pgt, data.addr)
    ret = 0
    while data.addr < data.end:
        ret = await __kvm_pgtable_walk(data, pgt, pgt.pgd + idx, pgt.start_level)
        if ret:
            break
        idx += 1
    return ret


async def kvm_pgtable_walk(pgt: KvmPgtable, addr: int, size: int,
                           walker: KvmPgtableWalker) -> int:
    """Visit [addr, addr + size) rounded out to pages. Shared walks are refused at EL2
    (kvm_pgtable_walk_begin: -EPERM)."""
    if walker.flags & KVM_PGTABLE_WALK_SHARED:
        return -EPERM
    start = addr & ~(PAGE_SIZE - 1)
    end = (start + size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
    return await _kvm_pgtable_walk(pgt, _WalkData(walker, start, end))


def kvm_pgtable_get_leaf(pgt: KvmPgtable, addr: int) -> tuple[int, int, int]:
    """(ret, pte, level) of the leaf (valid or not) mapping ``addr``: the walk with
    leaf_walker over one page, read under the caller's lock, so without a point."""
    addr &= ~(PAGE_SIZE - 1)
    limit = 1 << pgt.ia_bits
    if addr + PAGE_SIZE > limit:
        return -ERANGE, 0, 0
    if pgt.pgd is None:
        return -EINVAL, 0, 0
    level = pgt.start_level
    idx = (addr >> granule_shift(level)) & (PTRS_PER_PTE - 1)
    pte = pgt.mem.read(pgt.pgd + kvm_pgd_page_idx(pgt, addr), idx)
    while kvm_pte_table(pte, level):
        level += 1
        pte = pgt.mem.read(kvm_pte_to_pfn(pte), (addr >> granule_shift(level)) & 511)
    return 0, pte, level


# --- hyp stage-1 -----------------------------------------------------------------------

def hyp_set_prot_attr(prot: int) -> tuple[int, int]:
    """(ret, attr): the EL2 stage-1 leaf attributes for ``prot``."""
    device = bool(prot & KVM_PGTABLE_PROT_DEVICE)
    nc = bool(prot & KVM_PGTABLE_PROT_NORMAL_NC)
    if (not prot & KVM_PGTABLE_PROT_R or (device and nc)
            or prot & (KVM_PGTABLE_PROT_PXN | KVM_PGTABLE_PROT_UXN)):
        return -EINVAL, 0
    mtype = MT_DEVICE_nGnRE if device else MT_NORMAL_NC if nc else MT_NORMAL
    attr = mtype << 2
    if prot & KVM_PGTABLE_PROT_X:
        if prot & KVM_PGTABLE_PROT_W or device:
            return -EINVAL, 0
    else:
        attr |= KVM_PTE_LEAF_ATTR_HI_S1_XN
    ap = KVM_PTE_LEAF_ATTR_LO_S1_AP_RW if prot & KVM_PGTABLE_PROT_W else \
        KVM_PTE_LEAF_ATTR_LO_S1_AP_RO
    attr |= ap << hw.S1_AP_SHIFT
    attr |= KVM_PTE_LEAF_ATTR_LO_S1_SH_IS | KVM_PTE_LEAF_ATTR_LO_S1_AF
    attr |= prot & KVM_PTE_LEAF_ATTR_HI_SW
    return 0, attr


def kvm_pgtable_hyp_pte_prot(pte: int) -> int:
    prot = pte & KVM_PTE_LEAF_ATTR_HI_SW
    if not pte & KVM_PTE_VALID:
        return prot
    if not pte & KVM_PTE_LEAF_ATTR_HI_S1_XN:
        prot |= KVM_PGTABLE_PROT_X
    ap = (pte & hw.S1_AP) >> hw.S1_AP_SHIFT
    if ap == KVM_PTE_LEAF_ATTR_LO_S1_AP_RO:
        prot |= KVM_PGTABLE_PROT_R
    elif ap == KVM_PTE_LEAF_ATTR_LO_S1_AP_RW:
        prot |= KVM_PGTABLE_PROT_RW
    return prot


def kvm_block_mapping_supported(ctx: KvmPgtableVisitCtx, phys: int) -> bool:
    granule = granule_size(ctx.level)
    if not kvm_level_supports_block_mapping(ctx.level):
        return False
    if granule > ctx.end - ctx.addr:
        return False
    if kvm_phys_is_valid(phys) and phys & (granule - 1):
        return False
    return not ctx.addr & (granule - 1)


class _HypMapData:
    __slots__ = ("attr", "phys")

    def __init__(self, phys: int, attr: int) -> None:
        self.phys, self.attr = phys, attr


async def hyp_map_walker_try_leaf(ctx: KvmPgtableVisitCtx, data: _HypMapData) -> bool:
    phys = data.phys + (ctx.addr - ctx.start)
    if not kvm_block_mapping_supported(ctx, phys):
        return False
    new = kvm_init_valid_leaf_pte(phys, data.attr, ctx.level)
    if ctx.old == new:
        return True
    if ctx.old & KVM_PTE_VALID and (ctx.old ^ new) & ~KVM_PTE_LEAF_ATTR_HI_SW:
        _warn(ctx.pgt, f"hyp map over a different mapping at {ctx.addr:#x}")
        return False
    pgt = ctx.pgt
    await pgt.ctx.point(_OP_S1_STORE)
    if not ctx.old & KVM_PTE_VALID:
        ctx.mm_ops.get_page(ctx.pfn)
    pgt.mem.write(ctx.pfn, ctx.idx, new)
    return True


async def hyp_map_walker(ctx: KvmPgtableVisitCtx, visit: int) -> int:
    if await hyp_map_walker_try_leaf(ctx, ctx.arg):
        return 0
    if ctx.level == LAST_LEVEL:
        _warn(ctx.pgt, f"hyp map: no leaf at the last level at {ctx.addr:#x}")
        return -EINVAL
    childp = ctx.mm_ops.zalloc_page(None)
    if childp is None:
        return -ENOMEM
    pgt = ctx.pgt
    await pgt.ctx.point(_OP_S1_STORE)
    ctx.mm_ops.get_page(ctx.pfn)
    pgt.mem.write(ctx.pfn, ctx.idx, kvm_init_table_pte(childp))
    return 0


async def kvm_pgtable_hyp_map(pgt: KvmPgtable, addr: int, size: int, phys: int,
                              prot: int) -> int:
    """Map [addr, addr + size) at EL2 to ``phys`` with ``prot``: 0 or an error (-EINVAL
    for a bad prot, -ENOMEM)."""
    ret, attr = hyp_set_prot_attr(prot)
    if ret:
        return ret
    walker = KvmPgtableWalker(hyp_map_walker, _HypMapData(phys & ~(PAGE_SIZE - 1), attr),
                              KVM_PGTABLE_WALK_LEAF)
    return await kvm_pgtable_walk(pgt, addr, size, walker)


class _HypUnmapData:
    __slots__ = ("unmapped",)

    def __init__(self) -> None:
        self.unmapped = 0


async def hyp_unmap_walker(ctx: KvmPgtableVisitCtx, visit: int) -> int:
    pgt = ctx.pgt
    mm_ops = ctx.mm_ops
    granule = granule_size(ctx.level)
    childp = None
    if not ctx.old & KVM_PTE_VALID:
        return -EINVAL
    if kvm_pte_table(ctx.old, ctx.level):
        childp = kvm_pte_to_pfn(ctx.old)
        if mm_ops.page_count(childp) != 1:
            return 0
    elif ctx.end - ctx.addr < granule:
        return -EINVAL
    await pgt.ctx.point(_OP_S1_STORE)
    pgt.mem.write(ctx.pfn, ctx.idx, 0)
    mm_ops.put_page(ctx.pfn)
    await pgt.ctx.point(_OP_TLBI_VA)
    if childp is None:
        pgt.tlbs.tlbi_vale2is(ctx.addr)
        ctx.arg.unmapped += granule
    else:
        pgt.tlbs.tlbi_vae2is(ctx.addr)
        mm_ops.put_page(childp)
    return 0


async def kvm_pgtable_hyp_unmap(pgt: KvmPgtable, addr: int, size: int) -> int:
    """Unmap [addr, addr + size) at EL2; returns the bytes unmapped (it stops at an invalid
    entry or a block reaching beyond the range)."""
    data = _HypUnmapData()
    walker = KvmPgtableWalker(hyp_unmap_walker, data,
                              KVM_PGTABLE_WALK_LEAF | KVM_PGTABLE_WALK_TABLE_POST)
    await kvm_pgtable_walk(pgt, addr, size, walker)
    return data.unmapped


# --- stage-2 ---------------------------------------------------------------------------

def stage2_set_prot_attr(pgt: KvmPgtable, prot: int) -> tuple[int, int]:
    """(ret, attr): the stage-2 leaf attributes for ``prot``."""
    if prot & KVM_PGTABLE_PROT_DEVICE:
        attr = MT_S2_DEVICE_nGnRE << 2
    elif prot & KVM_PGTABLE_PROT_NORMAL_NC:
        attr = MT_S2_NORMAL_NC << 2
    else:
        attr = MT_S2_NORMAL << 2
    exec_prot = prot & (KVM_PGTABLE_PROT_X | KVM_PGTABLE_PROT_PXN | KVM_PGTABLE_PROT_UXN)
    if exec_prot != KVM_PGTABLE_PROT_X:
        if exec_prot == KVM_PGTABLE_PROT_PXN:
            xn = KVM_PTE_LEAF_ATTR_HI_S2_XN_PXN
        elif exec_prot == KVM_PGTABLE_PROT_UXN:
            xn = KVM_PTE_LEAF_ATTR_HI_S2_XN_UXN
        elif exec_prot:
            return -EINVAL, 0
        else:
            xn = KVM_PTE_LEAF_ATTR_HI_S2_XN_XN
        attr |= xn << hw.S2_XN_SHIFT
    if prot & KVM_PGTABLE_PROT_R:
        attr |= KVM_PTE_LEAF_ATTR_LO_S2_S2AP_R
    if prot & KVM_PGTABLE_PROT_W:
        attr |= KVM_PTE_LEAF_ATTR_LO_S2_S2AP_W
    attr |= KVM_PTE_LEAF_ATTR_LO_S2_SH_IS | KVM_PTE_LEAF_ATTR_LO_S2_AF
    attr |= prot & KVM_PTE_LEAF_ATTR_HI_SW
    return 0, attr


def kvm_pgtable_stage2_pte_prot(pte: int) -> int:
    prot = pte & KVM_PTE_LEAF_ATTR_HI_SW
    if not pte & KVM_PTE_VALID:
        return prot
    if pte & KVM_PTE_LEAF_ATTR_LO_S2_S2AP_R:
        prot |= KVM_PGTABLE_PROT_R
    if pte & KVM_PTE_LEAF_ATTR_LO_S2_S2AP_W:
        prot |= KVM_PGTABLE_PROT_W
    xn = (pte & KVM_PTE_LEAF_ATTR_HI_S2_XN) >> hw.S2_XN_SHIFT
    if xn == 0:
        prot |= KVM_PGTABLE_PROT_X
    elif xn == KVM_PTE_LEAF_ATTR_HI_S2_XN_PXN:
        prot |= KVM_PGTABLE_PROT_PXN
    elif xn == KVM_PTE_LEAF_ATTR_HI_S2_XN_UXN:
        prot |= KVM_PGTABLE_PROT_UXN
    return prot


def stage2_pte_needs_update(old: int, new: int) -> bool:
    if not old & KVM_PTE_VALID or not new & KVM_PTE_VALID:
        return True
    return bool((old ^ new) & ~KVM_PTE_LEAF_ATTR_S2_PERMS)


async def __kvm_tlb_flush_vmid_ipa(pgt: KvmPgtable, ipa: int, level: int) -> None:
    """TLBI IPAS2E1IS for ``ipa`` in the pgtable's VMID, on every CPU (the level hint is
    not used: see arm64_tlb)."""
    await pgt.ctx.point(_OP_TLBI_IPA)
    pgt.tlbs.tlbi_ipas2e1is(pgt.vmid, ipa)


async def __kvm_tlb_flush_vmid(pgt: KvmPgtable) -> None:
    await pgt.ctx.point(_OP_TLBI_VMID)
    pgt.tlbs.tlbi_vmalls12e1is(pgt.vmid)


async def stage2_try_break_pte(ctx: KvmPgtableVisitCtx) -> bool:
    """Replace a live entry by the break value, invalidate what it translated, drop its
    reference: True once broken. Stores of other walkers are excluded by the lock (an entry
    found locked is a WARN: only shared walkers may meet one)."""
    pgt = ctx.pgt
    if stage2_pte_is_locked(pgt, ctx.old):
        _warn(pgt, f"exclusive walker found a locked pte at {ctx.addr:#x}")
        return False
    await pgt.ctx.point(_OP_S2_STORE)
    pgt.mem.write(ctx.pfn, ctx.idx, pgt.break_pte)
    if stage2_pte_is_counted(ctx.old):
        ctx.mm_ops.put_page(ctx.pfn)
    if not ctx.flags & KVM_PGTABLE_WALK_SKIP_BBM_TLBI:
        if kvm_pte_table(ctx.old, ctx.level):
            await __kvm_tlb_flush_vmid(pgt)
        elif ctx.old & KVM_PTE_VALID:
            await __kvm_tlb_flush_vmid_ipa(pgt, ctx.addr, ctx.level)
    return True


async def stage2_make_pte(ctx: KvmPgtableVisitCtx, new: int) -> None:
    pgt = ctx.pgt
    if pgt.break_pte and not stage2_pte_is_locked(pgt, pgt.mem.read(ctx.pfn, ctx.idx)):
        _warn(pgt, f"make of a pte that is not locked at {ctx.addr:#x}")
    await pgt.ctx.point(_OP_S2_STORE)
    if stage2_pte_is_counted(new):
        ctx.mm_ops.get_page(ctx.pfn)
    pgt.mem.write(ctx.pfn, ctx.idx, new)


class _Stage2MapData:
    __slots__ = ("attr", "force_pte", "memcache", "owner_id", "phys")

    def __init__(self, phys: int, attr: int, owner_id: int, memcache: Any,
                 force_pte: bool) -> None:
        self.phys, self.attr, self.owner_id = phys, attr, owner_id
        self.memcache, self.force_pte = memcache, force_pte


def stage2_map_walker_phys_addr(ctx: KvmPgtableVisitCtx, data: _Stage2MapData) -> int:
    # an invalid PA (an annotation) is not offset: it could overflow into a valid one
    if not kvm_phys_is_valid(data.phys):
        return data.phys
    return data.phys + (ctx.addr - ctx.start)


def stage2_leaf_mapping_allowed(ctx: KvmPgtableVisitCtx, data: _Stage2MapData) -> bool:
    if data.force_pte and ctx.level < LAST_LEVEL:
        return False
    return kvm_block_mapping_supported(ctx, stage2_map_walker_phys_addr(ctx, data))


async def stage2_map_walker_try_leaf(ctx: KvmPgtableVisitCtx, data: _Stage2MapData) -> int:
    pgt = ctx.pgt
    if not stage2_leaf_mapping_allowed(ctx, data):
        return -E2BIG
    phys = stage2_map_walker_phys_addr(ctx, data)
    if kvm_phys_is_valid(phys):
        new = kvm_init_valid_leaf_pte(phys, data.attr, ctx.level)
    else:
        new = kvm_init_invalid_leaf_owner(pgt, data.owner_id)
    # the same mapping, or only its permissions: the vCPU faults again and relaxes them
    if not stage2_pte_needs_update(ctx.old, new):
        return -EAGAIN
    if pgt.sw_bits_store and not (ctx.old ^ new) & ~KVM_PTE_LEAF_ATTR_HI_SW:
        await pgt.ctx.point(_OP_S2_STORE)
        pgt.mem.write(ctx.pfn, ctx.idx, new)
        return 0
    if not await stage2_try_break_pte(ctx):
        return -EAGAIN
    await stage2_make_pte(ctx, new)
    return 0


async def stage2_map_walk_table_pre(ctx: KvmPgtableVisitCtx, data: _Stage2MapData) -> int:
    """A table where a block can go: replace it by the block and free the old subtree."""
    childp = kvm_pte_to_pfn(ctx.old)
    if not stage2_leaf_mapping_allowed(ctx, data):
        return 0
    ret = await stage2_map_walker_try_leaf(ctx, data)
    if ret:
        return ret
    ctx.mm_ops.free_unlinked_table(childp, ctx.level)
    return 0


async def stage2_map_walk_leaf(ctx: KvmPgtableVisitCtx, data: _Stage2MapData) -> int:
    ret = await stage2_map_walker_try_leaf(ctx, data)
    if ret != -E2BIG:
        return ret
    if ctx.level == LAST_LEVEL:
        _warn(ctx.pgt, f"stage-2 map: no leaf at the last level at {ctx.addr:#x}")
        return -EINVAL
    if data.memcache is None:
        return -ENOMEM
    mm_ops = ctx.mm_ops
    childp = mm_ops.zalloc_page(data.memcache)
    if childp is None:
        return -ENOMEM
    if not await stage2_try_break_pte(ctx):
        mm_ops.put_page(childp)
        return -EAGAIN
    # a block met on the way becomes a table; the rest of its range is refaulted lazily
    await stage2_make_pte(ctx, kvm_init_table_pte(childp))
    return 0


async def stage2_map_walker(ctx: KvmPgtableVisitCtx, visit: int) -> int:
    if visit == KVM_PGTABLE_WALK_TABLE_PRE:
        return await stage2_map_walk_table_pre(ctx, ctx.arg)
    if visit == KVM_PGTABLE_WALK_LEAF:
        return await stage2_map_walk_leaf(ctx, ctx.arg)
    return -EINVAL


async def kvm_pgtable_stage2_map(pgt: KvmPgtable, addr: int, size: int, phys: int,
                                 prot: int, mc: Any, flags: int = 0) -> int:
    """Map [addr, addr + size) to ``phys`` with ``prot``, as blocks where the range,
    alignment and ``force_pte_cb`` allow; ``mc`` is the memcache new tables come from
    (None: -ENOMEM when one is needed)."""
    force_pte = pgt.force_pte_cb is not None and pgt.force_pte_cb(addr, addr + size, prot)
    if pgt.flags & KVM_PGTABLE_S2_IDMAP and addr != phys:
        _warn(pgt, f"identity map of {addr:#x} to {phys:#x}")
        return -EINVAL
    ret, attr = stage2_set_prot_attr(pgt, prot)
    if ret:
        return ret
    data = _Stage2MapData(phys & ~(PAGE_SIZE - 1), attr, 0, mc, force_pte)
    walker = KvmPgtableWalker(stage2_map_walker, data,
                              flags | KVM_PGTABLE_WALK_TABLE_PRE | KVM_PGTABLE_WALK_LEAF)
    return await kvm_pgtable_walk(pgt, addr, size, walker)


async def kvm_pgtable_stage2_set_owner(pgt: KvmPgtable, addr: int, size: int, mc: Any,
                                       owner_id: int) -> int:
    """Unmap [addr, addr + size) and annotate its entries, page by page, with ``owner_id``
    (0, the page-table owner's, leaves them empty). -EINVAL above KVM_MAX_OWNER_ID."""
    if owner_id > KVM_MAX_OWNER_ID or owner_id < 0:
        return -EINVAL
    flags = KVM_PGTABLE_WALK_TABLE_PRE | KVM_PGTABLE_WALK_LEAF
    if pgt.ctx.quirk("set-owner-no-tlbi"):
        flags |= KVM_PGTABLE_WALK_SKIP_BBM_TLBI
    data = _Stage2MapData(KVM_PHYS_INVALID, 0, owner_id, mc, True)
    return await kvm_pgtable_walk(pgt, addr, size,
                                  KvmPgtableWalker(stage2_map_walker, data, flags))


async def stage2_unmap_walker(ctx: KvmPgtableVisitCtx, visit: int) -> int:
    pgt = ctx.pgt
    mm_ops = ctx.mm_ops
    old = ctx.old
    if not old & KVM_PTE_VALID:
        if stage2_pte_is_counted(old):
            await pgt.ctx.point(_OP_S2_STORE)
            pgt.mem.write(ctx.pfn, ctx.idx, 0)
            mm_ops.put_page(ctx.pfn)
        return 0
    childp = None
    if kvm_pte_table(old, ctx.level):
        childp = kvm_pte_to_pfn(old)
        if mm_ops.page_count(childp) != 1:
            return 0
    # stage2_unmap_put_pte: clear, invalidate (a table with a level hint of 0), put
    await pgt.ctx.point(_OP_S2_STORE)
    pgt.mem.write(ctx.pfn, ctx.idx, 0)
    mm_ops.put_page(ctx.pfn)
    await __kvm_tlb_flush_vmid_ipa(pgt, ctx.addr, 0 if childp is not None else ctx.level)
    if childp is not None:
        mm_ops.put_page(childp)
    return 0


async def kvm_pgtable_stage2_unmap(pgt: KvmPgtable, addr: int, size: int) -> int:
    """Clear every entry in [addr, addr + size), annotations included (a block reaching
    outside is cleared whole: the rest is refaulted), freeing tables that empty."""
    walker = KvmPgtableWalker(stage2_unmap_walker, None,
                              KVM_PGTABLE_WALK_LEAF | KVM_PGTABLE_WALK_TABLE_POST)
    return await kvm_pgtable_walk(pgt, addr, size, walker)


def kvm_pgtable_stage2_free_unlinked(mm_ops: KvmPgtableMmOps, pfn: int, level: int) -> None:
    """Drop every reference a subtree no longer linked from the stage-2 holds, then the
    table page itself (stage2_free_walker): nothing walks it any more, so no points."""
    mem = mm_ops.pool.mem
    table = mem.table(pfn)
    for pte in table:
        if not stage2_pte_is_counted(pte):
            continue
        mm_ops.put_page(pfn)
        if kvm_pte_table(pte, level + 1):
            kvm_pgtable_stage2_free_unlinked(mm_ops, kvm_pte_to_pfn(pte), level + 1)
    mm_ops.put_page(pfn)


class _Stage2AttrData:
    __slots__ = ("attr_clr", "attr_set", "level", "pte")

    def __init__(self, attr_set: int, attr_clr: int) -> None:
        self.attr_set, self.attr_clr = attr_set, attr_clr
        self.pte = 0
        self.level = 0


async def stage2_attr_walker(ctx: KvmPgtableVisitCtx, visit: int) -> int:
    data: _Stage2AttrData = ctx.arg
    if not ctx.old & KVM_PTE_VALID:
        return -EAGAIN
    data.level = ctx.level
    data.pte = ctx.old
    pte = (ctx.old & ~data.attr_clr) | data.attr_set
    if pte != ctx.old:
        await ctx.pgt.ctx.point(_OP_S2_STORE)
        ctx.pgt.mem.write(ctx.pfn, ctx.idx, pte)
    return 0


async def stage2_update_leaf_attrs(pgt: KvmPgtable, addr: int, size: int, attr_set: int,
                                   attr_clr: int, flags: int) -> tuple[int, int, int]:
    """(ret, the last leaf's pte before the update, its level)."""
    mask = KVM_PTE_LEAF_ATTR_LO | KVM_PTE_LEAF_ATTR_HI
    data = _Stage2AttrData(attr_set & mask, attr_clr & mask)
    ret = await kvm_pgtable_walk(pgt, addr, size, KvmPgtableWalker(
        stage2_attr_walker, data, flags | KVM_PGTABLE_WALK_LEAF))
    if ret:
        return ret, 0, 0
    return 0, data.pte, data.level


async def kvm_pgtable_stage2_wrprotect(pgt: KvmPgtable, addr: int, size: int) -> int:
    ret, _, _ = await stage2_update_leaf_attrs(pgt, addr, size, 0,
                                               KVM_PTE_LEAF_ATTR_LO_S2_S2AP_W, 0)
    return ret


async def kvm_pgtable_stage2_mkyoung(pgt: KvmPgtable, addr: int, flags: int = 0) -> int:
    """Set the access flag of the leaf at ``addr``; returns the pte before (0 if none)."""
    ret, pte, _ = await stage2_update_leaf_attrs(
        pgt, addr, 1, KVM_PTE_LEAF_ATTR_LO_S2_AF, 0, flags | KVM_PGTABLE_WALK_HANDLE_FAULT)
    return pte if not ret else 0


class _Stage2AgeData:
    __slots__ = ("mkold", "young")

    def __init__(self, mkold: bool) -> None:
        self.mkold, self.young = mkold, False


async def stage2_age_walker(ctx: KvmPgtableVisitCtx, visit: int) -> int:
    new = ctx.old & ~KVM_PTE_LEAF_ATTR_LO_S2_AF
    data: _Stage2AgeData = ctx.arg
    if not ctx.old & KVM_PTE_VALID or new == ctx.old:
        return 0
    data.young = True
    # no TLBI here: the core code's clear_flush_young does it
    if data.mkold:
        await ctx.pgt.ctx.point(_OP_S2_STORE)
        ctx.pgt.mem.write(ctx.pfn, ctx.idx, new)
    return 0


async def kvm_pgtable_stage2_test_clear_young(pgt: KvmPgtable, addr: int, size: int,
                                              mkold: bool) -> bool:
    data = _Stage2AgeData(mkold)
    await kvm_pgtable_walk(pgt, addr, size,
                           KvmPgtableWalker(stage2_age_walker, data, KVM_PGTABLE_WALK_LEAF))
    return data.young


async def kvm_pgtable_stage2_relax_perms(pgt: KvmPgtable, addr: int, prot: int,
                                         flags: int = 0) -> int:
    """Add the permissions of ``prot`` to the leaf at ``addr`` (never software bits)."""
    if prot & KVM_PTE_LEAF_ATTR_HI_SW:
        return -EINVAL
    attr_set = attr_clr = 0
    if prot & KVM_PGTABLE_PROT_R:
        attr_set |= KVM_PTE_LEAF_ATTR_LO_S2_S2AP_R
    if prot & KVM_PGTABLE_PROT_W:
        attr_set |= KVM_PTE_LEAF_ATTR_LO_S2_S2AP_W
    if prot & KVM_PGTABLE_PROT_X:
        attr_clr |= KVM_PTE_LEAF_ATTR_HI_S2_XN
    ret, _, level = await stage2_update_leaf_attrs(
        pgt, addr, 1, attr_set, attr_clr, flags | KVM_PGTABLE_WALK_HANDLE_FAULT)
    if not ret or ret == -EAGAIN:
        await __kvm_tlb_flush_vmid_ipa(pgt, addr, level)
    return ret


# --- checks and views ------------------------------------------------------------------

def table_refcounts_ok(pgt: KvmPgtable) -> str | None:
    """None, or the first table page (PGD pages included) whose refcount is not 1 + its
    counted entries (nonzero, except a break in progress), or that is reachable twice."""
    if pgt.pgd is None or pgt.mm_ops is None:
        return None
    refcount = pgt.mm_ops.pool.vmemmap.refcount
    lk = pgt.break_pte
    seen: set[int] = set()
    todo = [(pgt.pgd + i, pgt.start_level) for i in range(pgt.pgd_pages())]
    while todo:
        pfn, level = todo.pop()
        if pfn in seen:
            return f"table page {pfn:#x} is linked twice"
        seen.add(pfn)
        table = pgt.mem.pages.get(pfn)
        counted = 0
        if table is not None:
            counted = PTRS_PER_PTE - table.count(0) - (table.count(lk) if lk else 0)
            if level < LAST_LEVEL:
                todo.extend(((pte & DESC_OA_MASK) >> PAGE_SHIFT, level + 1)
                            for pte in table if pte & 3 == 3)
        if refcount[pfn] != 1 + counted:
            return (f"table page {pfn:#x} (level {level}) has refcount {refcount[pfn]}, "
                    f"but 1 + {counted} counted entries")
    return None


def kvm_pgtable_leaves(pgt: KvmPgtable) -> list[tuple[int, int, int]]:
    """(address, level, pte) of every nonzero leaf entry (valid leaves and annotations),
    in address order."""
    out: list[tuple[int, int, int]] = []
    if pgt.pgd is None:
        return out

    def visit(pfn: int, level: int, base: int) -> None:
        table = pgt.mem.pages.get(pfn)
        if table is None:
            return
        shift = granule_shift(level)
        for idx, pte in enumerate(table):
            if not pte:
                continue
            addr = base + (idx << shift)
            if kvm_pte_table(pte, level):
                visit(kvm_pte_to_pfn(pte), level + 1, addr)
            else:
                out.append((addr, level, pte))

    span = 1 << (granule_shift(pgt.start_level) + 9)
    for i in range(pgt.pgd_pages()):
        visit(pgt.pgd + i, pgt.start_level, i * span)
    return out
