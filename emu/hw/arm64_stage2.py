"""arm64 VMSAv8-64 translation tables, 4 KiB granule: descriptors, table memory, and the
walk a CPU's MMU does through them (stage-2 IPA -> PA, and the EL2 stage-1 regime).

| level | input bits | one entry maps | valid descriptor may be   |
|-------|------------|----------------|---------------------------|
| 0     | 47:39      | 512 GiB        | a table                   |
| 1     | 38:30      | 1 GiB          | a table or a block        |
| 2     | 29:21      | 2 MiB          | a table or a block        |
| 3     | 20:12      | 4 KiB          | a page                    |

A descriptor is a 64-bit integer (bit values as the kernel spells them in kvm_pgtable.h
and pgtable.c): bit 0 valid, bit 1 type (table or page = 1, block = 0), output address in
bits 47:12, lower attributes 11:2 (stage-2 MemAttr 5:2, S2AP R 6 / W 7, SH 9:8, AF 10;
EL2 stage-1 AttrIndx 4:2, AP 7:6, SH 9:8, AF 10), upper attributes 63:50 (XN: stage-2
54:53, EL2 stage-1 54) with the software bits 58:55 that the MMU ignores. An *invalid*
descriptor (bit 0 clear) ends the walk with a translation fault at its level; the MMU
ignores its other 63 bits, so software may keep anything there (``bitfield`` names a field
of them, for whoever keeps one: the hardware gives it no meaning).

A stage-2 walk may start at level 0, 1 or 2 (VTCR_EL2.SL0) with up to 16 *concatenated*
tables at the start level: an input space of ``ia_bits`` that the start level would cover
with more than 512 entries uses ``2 ** (ia_bits - start level's top bit)`` adjacent table
pages, indexed as one. Tables live in ``TableMemory`` by page frame number, 512 entries a
page, zero until written. The walk is lockless: it reads the entries as they are at that
moment (``walk``; ``walk_stepwise`` takes a scheduling point before each read, so other
CPUs' stores interleave with the walk's steps). Every store bumps ``TableMemory.version``,
the key of invariants that read the tables. Every entry is an object of the access
relation (``sim.accesses``) named ``s2:<pfn>:<index>`` (whatever regime its table is in):
``read`` reads it, ``write`` writes it, ``zero`` writes each entry it clears.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ..sim import accesses

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PTRS_PER_PTE = 512
"""Entries in one table page (PAGE_SIZE / 8)."""
MAX_LEVELS = 4
LAST_LEVEL = 3
MIN_BLOCK_LEVEL = 1
"""The first level a block descriptor is allowed at (4 KiB granule: 1 GiB blocks)."""


def genmask(hi: int, lo: int) -> int:
    return ((1 << (hi + 1)) - 1) & ~((1 << lo) - 1)


DESC_VALID = 1 << 0
DESC_TYPE = 1 << 1
"""Set: a table (levels 0-2) or a page (level 3); clear: a block."""
DESC_OA_MASK = genmask(47, PAGE_SHIFT)
"""The next table's or the output's physical address."""
ATTR_LO = genmask(11, 2)
ATTR_HI = genmask(63, 50)
AF = 1 << 10
SH_IS = 3
"""Inner Shareable, in SH (bits 9:8)."""
# stage-2 leaf attributes
S2_MEMATTR = genmask(5, 2)
S2AP_R = 1 << 6
S2AP_W = 1 << 7
S2_XN = genmask(54, 53)
"""Stage-2 XN[1:0] (FEAT_XNX): 0 executable, 1 PXN, 2 XN, 3 UXN."""
S2_XN_SHIFT = 53
# EL2 stage-1 leaf attributes (the nVHE hypervisor's own regime)
S1_AP = genmask(7, 6)
S1_AP_SHIFT = 6
S1_AP_RW = 1
S1_AP_RO = 3
S1_XN = 1 << 54
# software bits, ignored by the MMU
SW_SHIFT = 55
SW0, SW1, SW2, SW3 = (1 << 55), (1 << 56), (1 << 57), (1 << 58)
SW_MASK = genmask(58, 55)


def granule_shift(level: int) -> int:
    """log2 of what one entry at ``level`` maps (ARM64_HW_PGTABLE_LEVEL_SHIFT)."""
    return PAGE_SHIFT + 9 * (LAST_LEVEL - level)


def granule_size(level: int) -> int:
    return 1 << (PAGE_SHIFT + 9 * (LAST_LEVEL - level))


def desc_valid(desc: int) -> bool:
    return bool(desc & DESC_VALID)


def desc_is_table(desc: int, level: int) -> bool:
    """A valid table descriptor (kvm_pte_table)."""
    return level != LAST_LEVEL and desc & (DESC_VALID | DESC_TYPE) == DESC_VALID | DESC_TYPE


def make_table_desc(pfn: int) -> int:
    return (pfn << PAGE_SHIFT) | DESC_TYPE | DESC_VALID


def make_leaf_desc(pa: int, attr: int, level: int) -> int:
    """A block (levels 1-2) or page (level 3) descriptor (kvm_init_valid_leaf_pte)."""
    desc = (pa & DESC_OA_MASK) | (attr & (ATTR_LO | ATTR_HI)) | DESC_VALID
    return desc | DESC_TYPE if level == LAST_LEVEL else desc


def bitfield(layout: str) -> tuple[int, int]:
    """``"hi:lo"`` -> (shift, mask of the field's width): a field software keeps in bits
    hi..lo of a descriptor (GENMASK(hi, lo) with FIELD_PREP / FIELD_GET)."""
    hi, lo = (int(x) for x in layout.split(":"))
    if not 0 <= lo <= hi <= 63:
        raise ValueError(f"bad bit field {layout!r}")
    return lo, (1 << (hi - lo + 1)) - 1


def start_level_for(ia_bits: int) -> int:
    """The stage-2 start level for an input size (stage2_pgtable_levels(), at least two
    levels, as kvm_get_vtcr() programs VTCR_EL2.SL0)."""
    return MAX_LEVELS - max(2, (ia_bits - 8) // (PAGE_SHIFT - 3))


def pgd_pages(ia_bits: int, start_level: int) -> int:
    """Concatenated table pages at the start level (kvm_pgd_pages)."""
    return ((((1 << ia_bits) - 1) >> granule_shift(start_level)) >> 9) + 1


class TableMemory:
    """Physical pages holding translation tables, 512 entries each, zero until written."""

    __slots__ = ("pages", "version")

    def __init__(self) -> None:
        self.pages: dict[int, list[int]] = {}
        self.version = 0
        """Bumped on every store: the key of invariants that read tables."""

    def table(self, pfn: int) -> list[int]:
        """The entries of page ``pfn`` (read them; store through ``write``)."""
        page = self.pages.get(pfn)
        if page is None:
            page = self.pages[pfn] = [0] * PTRS_PER_PTE
        return page

    @staticmethod
    def touch(pfn: int, idx: int, write: bool = False) -> None:
        """The step reads (or writes) entry ``idx`` of page ``pfn`` (called only when
        accesses are recorded: ``accesses.current.on``; a reader that takes entries from
        ``table`` reports itself through this)."""
        accesses.current.touch(f"s2:{pfn:#x}:{idx}", write)

    def read(self, pfn: int, idx: int) -> int:
        if accesses.current.on:
            self.touch(pfn, idx)
        page = self.pages.get(pfn)
        return 0 if page is None else page[idx]

    def write(self, pfn: int, idx: int, desc: int) -> None:
        if accesses.current.on:
            self.touch(pfn, idx, True)
        self.table(pfn)[idx] = desc
        self.version += 1

    def zero(self, pfn: int, nr_pages: int = 1) -> None:
        """memset the pages to 0 (in place: a walk holding the page sees the zeros)."""
        for p in range(pfn, pfn + nr_pages):
            page = self.pages.get(p)
            if page is not None:
                if accesses.current.on:  # (an entry that was 0 stays 0: no write)
                    for idx, desc in enumerate(page):
                        if desc:
                            self.touch(p, idx, True)
                page[:] = _ZEROS
        self.version += 1

    def nonzero(self, pfn: int) -> int:
        """How many entries of page ``pfn`` are nonzero."""
        page = self.pages.get(pfn)
        return 0 if page is None else PTRS_PER_PTE - page.count(0)


_ZEROS = [0] * PTRS_PER_PTE

ADDRESS_SIZE_FAULT = -1
"""The level ``walk`` reports for an input address beyond the regime's ``ia_bits``."""


def walk(mem: TableMemory, pgd: int, start_level: int, ia_bits: int,
         addr: int) -> tuple[int, int]:
    """The MMU's walk for input address ``addr``: ``(descriptor, level)`` where it ends. A
    valid descriptor is the leaf (block or page) that translates ``addr``; an invalid one
    is a translation fault at that level (its other bits as software left them); level
    ``ADDRESS_SIZE_FAULT`` (with descriptor 0): ``addr`` is beyond ``ia_bits``."""
    if addr >> ia_bits:
        return 0, ADDRESS_SIZE_FAULT
    level = start_level
    idx = addr >> granule_shift(level)
    desc = mem.read(pgd + (idx >> 9), idx & 511)
    while desc & (DESC_VALID | DESC_TYPE) == DESC_VALID | DESC_TYPE and level != LAST_LEVEL:
        level += 1
        desc = mem.read((desc & DESC_OA_MASK) >> PAGE_SHIFT,
                        (addr >> granule_shift(level)) & 511)
    return desc, level


async def walk_stepwise(mem: TableMemory, pgd: int, start_level: int, ia_bits: int,
                        addr: int, point: Callable[[str], Awaitable[None]],
                        op: str = "mmu walk") -> tuple[int, int]:
    """``walk`` with ``await point(op)`` before each descriptor read: a walk whose steps
    other CPUs' stores (and frees) interleave with, as on hardware."""
    if addr >> ia_bits:
        return 0, ADDRESS_SIZE_FAULT
    level = start_level
    idx = addr >> granule_shift(level)
    await point(op)
    desc = mem.read(pgd + (idx >> 9), idx & 511)
    while desc & (DESC_VALID | DESC_TYPE) == DESC_VALID | DESC_TYPE and level != LAST_LEVEL:
        level += 1
        await point(op)
        desc = mem.read((desc & DESC_OA_MASK) >> PAGE_SHIFT,
                        (addr >> granule_shift(level)) & 511)
    return desc, level


def output_address(desc: int, level: int, addr: int) -> int:
    """The physical address a valid leaf translates ``addr`` to."""
    return (desc & DESC_OA_MASK & ~(granule_size(level) - 1)) | (addr & (granule_size(level) - 1))
