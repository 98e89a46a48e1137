"""pKVM's physical-page bookkeeping at EL2: page states, ``struct hyp_page`` in the
``hyp_vmemmap``, and the ``hyp_pool`` buddy allocator (nvhe/memory.h, nvhe/gfp.h,
nvhe/page_alloc.c, as of v6.16).

Page states (enum pkvm_page_state, v6.16 encodings), from one component's point of view:

| state                     | value | meaning                                               |
|---------------------------|-------|-------------------------------------------------------|
| PKVM_PAGE_OWNED           | 0b00  | owned, and only this component can access it          |
| PKVM_PAGE_SHARED_OWNED    | 0b01  | owned, and another component can access it too        |
| PKVM_PAGE_SHARED_BORROWED | 0b10  | accessible, owned by another component                |
| PKVM_NOPAGE               | 0b11  | a meta-state: not accessible at all                   |

The host's and the hypervisor's states live in ``struct hyp_page`` (the host state under
the host stage-2 lock, the hyp state under the hyp stage-1 lock); the hyp state is stored
complemented, so the zeroed vmemmap of boot reads host OWNED / hyp NOPAGE. Guest states
live in the guest stage-2 PTE software bits SW0-SW1 (``pkvm_mkstate`` / ``pkvm_getstate``).

``hyp_vmemmap`` is kept as parallel lists indexed by pfn (one list per field of struct
hyp_page: refcount, order, host_state, hyp_state_comp, host_share_guest_count), not one
object per page. Pages are named by pfn where the kernel passes a page's hyp VA (refcount
and allocator calls); the state accessors take a physical address, as the kernel's do.
Every change goes through a method, which bumps ``version`` (the key of invariants that read
the vmemmap). Each ``struct hyp_page`` is one object of the access relation
(``sim.accesses``), ``vmemmap:<pfn>``, read by the getters and written by the setters; a
pool's free lists are another, ``hyp_pool:<range_start>``, written by allocation and free.

The buddy allocator: a pool covers [range_start, range_end); a free block of 2**order pages
has refcount 0 and ``order`` set on its head, its tail pages HYP_NO_ORDER; a free block is
zeroed when it is attached (__hyp_attach_page), so allocated pages are zero. An allocated
block has refcount 1 on its head only: its tail pages keep refcount 0 and HYP_NO_ORDER until
``hyp_split_page`` makes each a refcounted order-0 page. hyp_pool::lock is not modelled: no
critical section of the pool contains a scheduling point, so each call is atomic here.
Reconstructed: a put that frees a page still marked HYP_NO_ORDER (a tail page of an unsplit
block, bug B11) is undefined in C (a shift by HYP_NO_ORDER); the model attaches it as one
free order-0 page, zeroed: the page goes back to the allocator while still in use.
"""

from __future__ import annotations

from collections.abc import Callable

from ..hw.arm64_stage2 import PAGE_SHIFT, SW0, SW1, SW_SHIFT, TableMemory
from ..sim import accesses
from ..sim.explain import numbered
from ..sim.sequential import Finding

PKVM_PAGE_OWNED = 0
PKVM_PAGE_SHARED_OWNED = 1
PKVM_PAGE_SHARED_BORROWED = 2
PKVM_NOPAGE = 3
PKVM_PAGE_STATE_MASK = 3
PKVM_PAGE_STATE_NAMES = ("OWNED", "SHARED_OWNED", "SHARED_BORROWED", "NOPAGE")
"""A state's name, by its value."""

PKVM_PAGE_STATE_PROT_MASK = SW0 | SW1
"""Where a guest stage-2 leaf keeps its state (KVM_PGTABLE_PROT_SW0 | _SW1)."""


def pkvm_mkstate(prot: int, state: int) -> int:
    """``prot`` (a kvm_pgtable_prot) carrying ``state`` in its software bits."""
    return (prot & ~PKVM_PAGE_STATE_PROT_MASK) | (state << SW_SHIFT)


def pkvm_getstate(prot: int) -> int:
    return (prot & PKVM_PAGE_STATE_PROT_MASK) >> SW_SHIFT


HYP_NO_ORDER = 0xFF
"""The order of a page that is not the head of a block (gfp.h: (u8)(~0))."""
MAX_PAGE_ORDER = 10
"""The largest buddy order (include/linux/mmzone.h, v6.16)."""
USHRT_MAX = 0xFFFF


def _default_fail(kind: str, message: str) -> None:
    raise Finding(kind, message)


numbered("vmemmap", "pfn")  # "pfn 0x200" in a message numbers vmemmap:0x200


class HypVmemmap:
    """``hyp_vmemmap``: one struct hyp_page per pfn in [0, nr_pages), field by field."""

    __slots__ = (
        "fail",
        "host_share_guest_count",
        "host_state",
        "hyp_state_comp",
        "order",
        "refcount",
        "version",
    )

    def __init__(self, nr_pages: int) -> None:
        # zeroed, as at boot: host OWNED, hyp NOPAGE, no references
        self.refcount = [0] * nr_pages
        self.order = [0] * nr_pages
        self.host_state = [0] * nr_pages
        self.hyp_state_comp = [0] * nr_pages
        self.host_share_guest_count = [0] * nr_pages
        self.version = 0
        self.fail: Callable[[str, str], None] = _default_fail
        """Where a BUG_ON goes: raised as a ``Finding`` unless a machine sets its own
        ``fail`` here."""

    @staticmethod
    def touch(pfn: int, write: bool = False) -> None:
        """The step reads (or writes) page ``pfn``'s struct hyp_page (called only when
        accesses are recorded: ``accesses.current.on``)."""
        accesses.current.touch(f"vmemmap:{pfn:#x}", write)

    # page states (memory.h; by physical address)
    def get_host_state(self, phys: int) -> int:
        if accesses.current.on:
            self.touch(phys >> PAGE_SHIFT)
        return self.host_state[phys >> PAGE_SHIFT]

    def set_host_state(self, phys: int, state: int) -> None:
        if accesses.current.on:
            self.touch(phys >> PAGE_SHIFT, True)
        self.host_state[phys >> PAGE_SHIFT] = state
        self.version += 1

    def get_hyp_state(self, phys: int) -> int:
        if accesses.current.on:
            self.touch(phys >> PAGE_SHIFT)
        return self.hyp_state_comp[phys >> PAGE_SHIFT] ^ PKVM_PAGE_STATE_MASK

    def set_hyp_state(self, phys: int, state: int) -> None:
        if accesses.current.on:
            self.touch(phys >> PAGE_SHIFT, True)
        self.hyp_state_comp[phys >> PAGE_SHIFT] = state ^ PKVM_PAGE_STATE_MASK
        self.version += 1

    def set_host_share_guest_count(self, phys: int, count: int) -> None:
        if accesses.current.on:
            self.touch(phys >> PAGE_SHIFT, True)
        self.host_share_guest_count[phys >> PAGE_SHIFT] = count
        self.version += 1

    # refcounts (memory.h; by pfn)
    def hyp_page_count(self, pfn: int) -> int:
        if accesses.current.on:
            self.touch(pfn)
        return self.refcount[pfn]

    def hyp_page_ref_inc(self, pfn: int) -> None:
        if accesses.current.on:
            self.touch(pfn, True)
        if self.refcount[pfn] == USHRT_MAX:
            self.fail("bug-on", f"BUG_ON: hyp_page_ref_inc: refcount of pfn {pfn:#x} overflows")
            return
        self.refcount[pfn] += 1
        self.version += 1

    def hyp_page_ref_dec(self, pfn: int) -> None:
        if accesses.current.on:
            self.touch(pfn, True)
        if not self.refcount[pfn]:
            self.fail("bug-on", f"BUG_ON: hyp_page_ref_dec: refcount of pfn {pfn:#x} is already 0")
            return
        self.refcount[pfn] -= 1
        self.version += 1

    def hyp_page_ref_dec_and_test(self, pfn: int) -> bool:
        self.hyp_page_ref_dec(pfn)
        return self.refcount[pfn] == 0

    def hyp_set_page_refcounted(self, pfn: int) -> None:
        if accesses.current.on:
            self.touch(pfn, True)
        if self.refcount[pfn]:
            self.fail("bug-on", f"BUG_ON: hyp_set_page_refcounted: pfn {pfn:#x} is referenced")
            return
        self.refcount[pfn] = 1
        self.version += 1

    def hyp_split_page(self, pfn: int) -> None:
        """Make each page of the block headed by ``pfn`` an order-0 page with its own
        reference (page_alloc.c)."""
        order = self.order[pfn]
        if accesses.current.on:
            self.touch(pfn, True)
        self.order[pfn] = 0
        for tail in range(pfn + 1, pfn + (1 << order)):
            self.order[tail] = 0
            self.hyp_set_page_refcounted(tail)
        self.version += 1


def get_order(size: int) -> int:
    """The order of the smallest block of pages holding ``size`` bytes."""
    pages = (size + (1 << PAGE_SHIFT) - 1) >> PAGE_SHIFT
    return (max(pages, 1) - 1).bit_length()


class HypPool:
    """struct hyp_pool: a buddy allocator over the pages [range_start, range_end) (pfns)."""

    __slots__ = ("free_area", "max_order", "mem", "range_end", "range_start", "vmemmap")

    def __init__(self, vmemmap: HypVmemmap, mem: TableMemory) -> None:
        self.vmemmap = vmemmap
        self.mem = mem
        """The memory its pages are zeroed in when freed."""
        self.free_area: list[list[int]] = []
        """Per order, the free blocks' head pfns, oldest first (list_add_tail)."""
        self.max_order = 0
        self.range_start = 0
        self.range_end = 0

    def free_pages(self) -> int:
        return sum(len(heads) << order for order, heads in enumerate(self.free_area))


def hyp_pool_init(pool: HypPool, pfn: int, nr_pages: int, reserved_pages: int) -> int:
    """Give ``pool`` the pages [pfn, pfn + nr_pages); the first ``reserved_pages`` stay
    allocated (refcount 1), the others go to the free lists."""
    vm = pool.vmemmap
    pool.max_order = min(MAX_PAGE_ORDER + 1, get_order((nr_pages + 1) << PAGE_SHIFT))
    pool.free_area = [[] for _ in range(pool.max_order)]
    pool.range_start = pfn
    pool.range_end = pfn + nr_pages
    for p in range(pfn, pfn + nr_pages):
        vm.order[p] = 0
        vm.hyp_set_page_refcounted(p)
    for p in range(pfn + reserved_pages, pfn + nr_pages):
        _hyp_put_page(pool, p)
    return 0


def _find_buddy_nocheck(pool: HypPool, pfn: int, order: int) -> int | None:
    buddy = pfn ^ (1 << order)
    if buddy < pool.range_start or buddy >= pool.range_end:
        return None
    return buddy


def _find_buddy_avail(pool: HypPool, pfn: int, order: int) -> int | None:
    buddy = _find_buddy_nocheck(pool, pfn, order)
    if buddy is not None and accesses.current.on:
        pool.vmemmap.touch(buddy)
    if buddy is None or pool.vmemmap.order[buddy] != order or pool.vmemmap.refcount[buddy]:
        return None
    return buddy


def _touch_pool(pool: HypPool, pfns: tuple[int, ...]) -> None:
    """The step changes the pool's free lists and the struct hyp_page of ``pfns``
    (accesses recorded only)."""
    accesses.current.touch(f"hyp_pool:{pool.range_start:#x}", True)
    for pfn in pfns:
        pool.vmemmap.touch(pfn, True)


def _hyp_attach_page(pool: HypPool, pfn: int) -> None:
    vm = pool.vmemmap
    if accesses.current.on:
        _touch_pool(pool, (pfn,))
    order = vm.order[pfn]
    if order == HYP_NO_ORDER:
        order = 0  # undefined in C (see the module docstring): freed as one page
    pool.mem.zero(pfn, 1 << order)
    vm.order[pfn] = HYP_NO_ORDER
    while order + 1 < pool.max_order:
        buddy = _find_buddy_avail(pool, pfn, order)
        if buddy is None:
            break
        pool.free_area[order].remove(buddy)
        if accesses.current.on:
            _touch_pool(pool, (buddy,))
        vm.order[buddy] = HYP_NO_ORDER
        pfn = min(pfn, buddy)
        order += 1
    vm.order[pfn] = order
    pool.free_area[order].append(pfn)
    vm.version += 1


def _hyp_extract_page(pool: HypPool, pfn: int, order: int) -> int:
    vm = pool.vmemmap
    if accesses.current.on:
        _touch_pool(pool, (pfn,))
    pool.free_area[vm.order[pfn]].remove(pfn)
    while vm.order[pfn] > order:
        vm.order[pfn] -= 1
        buddy = pfn ^ (1 << vm.order[pfn])
        if accesses.current.on:
            vm.touch(buddy, True)
        vm.order[buddy] = vm.order[pfn]
        pool.free_area[vm.order[buddy]].append(buddy)
    return pfn


def _hyp_put_page(pool: HypPool, pfn: int) -> None:
    if pool.vmemmap.hyp_page_ref_dec_and_test(pfn):
        _hyp_attach_page(pool, pfn)


def hyp_put_page(pool: HypPool, pfn: int) -> None:
    """Drop a reference; the last one frees the page (zeroed, back on a free list)."""
    _hyp_put_page(pool, pfn)


def hyp_get_page(pool: HypPool, pfn: int) -> None:
    pool.vmemmap.hyp_page_ref_inc(pfn)


def hyp_split_page(pool: HypPool, pfn: int) -> None:
    pool.vmemmap.hyp_split_page(pfn)


def hyp_page_count(pool: HypPool, pfn: int) -> int:
    return pool.vmemmap.refcount[pfn]


def hyp_alloc_pages(pool: HypPool, order: int) -> int | None:
    """The head pfn of a zeroed block of 2**order pages with refcount 1, or None."""
    if accesses.current.on:  # (found or not, the free lists were read)
        accesses.current.touch(f"hyp_pool:{pool.range_start:#x}")
    i = order
    while i < pool.max_order and not pool.free_area[i]:
        i += 1
    if i >= pool.max_order:
        return None
    pfn = _hyp_extract_page(pool, pool.free_area[i][0], order)
    pool.vmemmap.hyp_set_page_refcounted(pfn)
    return pfn
