"""Radix partition-scoped page tables and the partition table, in real-address terms.

Geometry (asm/book3s/64/radix-64k.h, 64 KiB base pages, a 52-bit space):

| level | kernel name | index bits | one entry maps | leaf allowed         |
|-------|-------------|------------|----------------|----------------------|
| 3     | PGD (root)  | 13         | 512 GiB        | no (-EINVAL)         |
| 2     | PUD         | 9          | 1 GiB          | yes, shift 30        |
| 1     | PMD         | 9          | 2 MiB          | yes, shift 21        |
| 0     | PTE         | 5          | 64 KiB         | yes, shift 16        |

Entries are 64-bit integers with the kernel's bit values (asm/book3s/64/pgtable.h, radix.h,
mmu.h), so a dump shows real-looking PTEs. A directory entry is ``PRESENT | next table's
real address | NLS`` (NLS = the next table's index bits: RADIX_{PGD,PUD,PMD}_VAL_BITS); a
leaf is ``PRESENT | PTE | RPN | R/C | R/W/X``.

Tables live in a ``TableMemory``: one page frame per table page (any table fits in 64 KiB
and a frame's address meets every alignment check the walk makes), each a sparse sorted
map from entry index to nonzero entry. The *owner* of a tree (L0 for its own and its
shadow tables, L1 for its L2->L1 tables) changes it through ``RadixTree``; anyone may walk
it through a read function (``walk``), which is how L0 reads a table that lives in L1's
memory and may find it unreadable (kvmppc_mmu_walk_radix_tree over kvm_read_guest).

Accesses (``sim.accesses``): each doubleword of a ``TableMemory`` is an object named
``radix:<space>:<address>``, ``space`` ``host`` for tables in host real memory (a
``FramePool``) and ``guest`` for tables in a guest's own memory; a table freed with its
entries writes every entry it held.
"""

from __future__ import annotations

import errno
import functools
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import attrs
from sortedcontainers import SortedDict

from ..sim import accesses
from .memory import PAGE_SHIFT, PAGE_SIZE, FramePool

# Leaf PTE bits (asm/book3s/64/pgtable.h; the kernel spells them _PAGE_*).
PAGE_EXEC = 0x00001
PAGE_WRITE = 0x00002
PAGE_READ = 0x00004
PAGE_RW = PAGE_READ | PAGE_WRITE
PAGE_RWX = PAGE_RW | PAGE_EXEC
PAGE_DIRTY = 0x00080
"""C: the page was changed."""
PAGE_ACCESSED = 0x00100
"""R: the page was referenced."""
PAGE_PTE = 0x4000000000000000
"""Distinguishes a leaf from a pointer to the next table."""
PAGE_PRESENT = 0x8000000000000000
PTE_RPN_MASK = ((1 << 53) - 1) & ~(PAGE_SIZE - 1)
"""The real address in a PTE as the host reads it (``_PAGE_PA_MAX`` 53, above PAGE_SHIFT)."""
RADIX_RPN_MASK = 0x01FFFFFFFFFFF000
"""The real address kvmppc_mmu_walk_radix_tree takes from a leaf."""
PTE_BITS_MUST_MATCH = ~(PAGE_WRITE | PAGE_DIRTY | PAGE_ACCESSED)
"""Bits two faults on one entry may not disagree on (book3s_64_mmu_radix.c)."""

# Partition-table entry, doubleword 0 (asm/book3s/64/mmu.h).
PATB_HR = 1 << 63
"""Host radix: this partition's tables are radix."""
RPDB_MASK = 0x0FFFFFFFFFFFFF00
"""Root (or next-level) page directory base."""
RTS1_SHIFT = 61
RTS1_MASK = 3 << RTS1_SHIFT
RTS2_SHIFT = 5
RTS2_MASK = 7 << RTS2_SHIFT
RPDS_MASK = 0x1F
"""Root page directory size: log2 of its entries (also NLS in a directory entry)."""
# Doubleword 1, which has the PTCR's layout.
PATB_GR = 1 << 63
"""Guest radix: must match HR."""
PRTB_MASK = 0x0FFFFFFFFFFFF000
PRTS_MASK = 0x1F
"""log2(table size) - 12."""

RADIX_PTE_INDEX_SIZE = 5
RADIX_PMD_INDEX_SIZE = 9
RADIX_PUD_INDEX_SIZE = 9
RADIX_PGD_INDEX_SIZE = 13
PMD_SHIFT = PAGE_SHIFT + RADIX_PTE_INDEX_SIZE  # 21: 2 MiB
PUD_SHIFT = PMD_SHIFT + RADIX_PMD_INDEX_SIZE  # 30: 1 GiB
PGDIR_SHIFT = PUD_SHIFT + RADIX_PUD_INDEX_SIZE  # 39: 512 GiB
RADIX_PGTABLE_EADDR_SIZE = PGDIR_SHIFT + RADIX_PGD_INDEX_SIZE  # 52
RADIX_PGTABLE_RANGE = 1 << RADIX_PGTABLE_EADDR_SIZE

RTS_52 = (((52 - 31) >> 3) << RTS1_SHIFT) | (((52 - 31) & 7) << RTS2_SHIFT)
"""radix__get_tree_size(): a 52-bit tree, RTS = 52 - 31 = 0b10101 split over two fields."""

P9_SUPPORTED_RADIX_BITS = (5, 9, 9, 13)
"""Index bits per level, lowest first; level 0 may also be 9 (4 KiB pages)."""
_BITS = (RADIX_PTE_INDEX_SIZE, RADIX_PMD_INDEX_SIZE, RADIX_PUD_INDEX_SIZE, RADIX_PGD_INDEX_SIZE)
_SHIFT = (PAGE_SHIFT, PMD_SHIFT, PUD_SHIFT, PGDIR_SHIFT)
"""log2 of what one entry of each level maps."""
LEAF_SHIFTS = (PAGE_SHIFT, PMD_SHIFT, PUD_SHIFT)
_LEAF_LEVEL = {PAGE_SHIFT: 0, PMD_SHIFT: 1, PUD_SHIFT: 2}
"""kvmppc_create_pte's ``level`` for a leaf size."""

ENOENT = -errno.ENOENT
"""No entry on the way (a non-present entry)."""
EINVAL = -errno.EINVAL
"""Malformed or unsupported: tree size, level sizes, alignment, no leaf, a 512 GiB leaf."""
EFAULT = -errno.EFAULT
"""A table doubleword could not be read (kvm_read_guest failed)."""

ReadFn = Callable[[int], int | None]
"""Reads the doubleword at a real address of the table's owner; None = unreadable."""


@attrs.frozen
class Leaf:
    """A present leaf: the first address it maps, its PTE and its size."""

    gpa: int
    pte: int
    shift: int

    @property
    def size(self) -> int:
        return 1 << self.shift

    @property
    def ra(self) -> int:
        """The real address of the first byte mapped."""
        return self.pte & RADIX_RPN_MASK & ~(self.size - 1)

    @property
    def pfn(self) -> int:
        return self.ra >> PAGE_SHIFT

    @property
    def prot(self) -> int:
        return self.pte & PAGE_RWX

    @property
    def rc(self) -> int:
        return self.pte & (PAGE_ACCESSED | PAGE_DIRTY)

    def covers(self, gpa: int) -> bool:
        return self.gpa <= gpa < self.gpa + self.size

    def real_address(self, gpa: int) -> int:
        return self.ra | (gpa & (self.size - 1))


@attrs.frozen
class WalkFault:
    """Why a walk found no translation: ``err`` is ENOENT, EINVAL or EFAULT (negative, as
    the kernel returns them); ``addr`` is the unreadable table address for EFAULT (what
    kvmppc_mmu_walk_radix_tree stores through pte_ret_p, and the nested fault reports to
    L1 as fault_gpa with DSISR_PRTABLE_FAULT)."""

    err: int
    addr: int | None = None


def make_pte(ra: int, flags: int) -> int:
    """A present leaf mapping real address ``ra`` with PAGE_* ``flags``."""
    return PAGE_PRESENT | PAGE_PTE | (ra & PTE_RPN_MASK) | flags


def tree_bits(dw0: int) -> int:
    """The address-space size a PATE's RTS fields encode: RTS + 31."""
    return ((dw0 & RTS1_MASK) >> (RTS1_SHIFT - 3) | (dw0 & RTS2_MASK) >> RTS2_SHIFT) + 31


def walk(read: ReadFn, root: int, gpa: int) -> Leaf | WalkFault:
    """kvmppc_mmu_walk_radix_tree: translate ``gpa`` through the tree whose root is
    described by ``root`` (a PATE's first doubleword: RTS | RPDB | RPDS), reading table
    doublewords with ``read``. Checks in the kernel's order: tree size 52, each level's
    size, table base alignment, readability, presence; then a leaf at PGD level, no leaf
    at the bottom, or a leaf whose real address is not aligned to its size are -EINVAL."""
    bits = root & RPDS_MASK
    base = root & RPDB_MASK
    offset = tree_bits(root)
    if offset != RADIX_PGTABLE_EADDR_SIZE:
        return WalkFault(EINVAL)
    for level in (3, 2, 1, 0):
        if level and bits != P9_SUPPORTED_RADIX_BITS[level]:
            return WalkFault(EINVAL)
        if level == 0 and bits not in (5, 9):
            return WalkFault(EINVAL)
        offset -= bits
        if base & ((1 << (bits + 3)) - 1):
            return WalkFault(EINVAL)
        addr = base + ((gpa >> offset) & ((1 << bits) - 1)) * 8
        pte = read(addr)
        if pte is None:
            return WalkFault(EFAULT, addr)
        if not pte & PAGE_PRESENT:
            return WalkFault(ENOENT)
        if pte & PAGE_PTE:
            break
        base, bits = pte & RPDB_MASK, pte & RPDS_MASK
    else:
        return WalkFault(EINVAL)  # the lowest level held a pointer, not a leaf
    if level == 3 or pte & RADIX_RPN_MASK & ((1 << offset) - 1):
        return WalkFault(EINVAL)
    return Leaf(gpa & ~((1 << offset) - 1), pte, offset)


class FrameAllocator(Protocol):
    """Where table pages come from (a FramePool, or a guest's own allocator)."""

    def alloc(self) -> int: ...

    def free(self, pfn: int) -> None: ...


class TableMemory:
    """The doublewords of memory that hold radix tables and partition tables, one
    owner's real (or guest-real) address space. Untouched doublewords read as 0."""

    def __init__(self, frames: FrameAllocator) -> None:
        self.frames = frames
        self.space = "host" if isinstance(frames, FramePool) else "guest"
        """The address space the access names say: ``radix:<space>:<address>``."""
        self.pages: dict[int, SortedDict] = {}
        """Page-aligned address -> {doubleword index: nonzero value}."""
        self.version = 0
        """Bumped by every change of the memory (by this class or a RadixTree over it): an
        invariant that reads the memory is unchanged while this is."""
        self.watched: frozenset[int] = frozenset()
        """The pages (page-aligned addresses) ``watched_version`` follows (``watch``)."""
        self.watched_version = 0
        """Bumped by every change of a watched page: an invariant that read only those pages
        is unchanged while this is, whatever else of the memory changes."""

    def watch(self, pages: Iterable[int]) -> None:
        """Follow ``pages`` (page-aligned addresses) in ``watched_version`` from now on,
        instead of the pages followed so far (one reader: the last set it read)."""
        self.watched = frozenset(pages)

    def touch(self, addr: int, write: bool = False) -> None:
        """The step reads (or writes) the doubleword at ``addr`` (called only when accesses
        are recorded: ``accesses.current.on``)."""
        accesses.current.touch(f"radix:{self.space}:{addr:#x}", write)

    def touch_span(self, addr: int, n: int, write: bool) -> None:
        """``touch`` every doubleword of the ``n`` bytes at ``addr``."""
        for dw in range(addr & ~7, addr + n, 8):
            self.touch(dw, write)

    def changed(self, page: int) -> None:
        """Record a change of the page at ``page`` (its page-aligned address)."""
        self.version += 1
        if page in self.watched:
            self.watched_version += 1

    def alloc_table(self) -> int:
        """A zeroed page frame for one table; its real address."""
        addr = self.frames.alloc() << PAGE_SHIFT
        self.pages[addr] = SortedDict()
        self.changed(addr)
        return addr

    def free_table(self, addr: int) -> None:
        if accesses.current.on:
            for index in self.pages[addr]:
                self.touch(addr + index * 8, True)
        del self.pages[addr]
        self.changed(addr)
        self.frames.free(addr >> PAGE_SHIFT)

    def read(self, addr: int) -> int:
        if accesses.current.on:
            self.touch(addr & ~7)
        page = self.pages.get(addr & ~(PAGE_SIZE - 1))
        return page.get((addr & (PAGE_SIZE - 1)) >> 3, 0) if page is not None else 0

    def write(self, addr: int, value: int) -> None:
        """Store a doubleword (a guest writing its partition table, or a hostile guest
        scribbling on its own tables)."""
        if accesses.current.on:
            self.touch(addr & ~7, True)
        base = addr & ~(PAGE_SIZE - 1)
        index = (addr & (PAGE_SIZE - 1)) >> 3
        page = self.pages.get(base)
        if page is None:
            if not value:
                return
            page = self.pages[base] = SortedDict()
        if page.get(index, 0) == value:
            return  # (most of a register block is stored unchanged at every entry)
        if value:
            page[index] = value
        else:
            del page[index]
        self.changed(base)

    def read_bytes(self, addr: int, n: int) -> bytes:
        """``n`` bytes at ``addr`` (any alignment): ``read_span`` of this memory, which is
        always readable, a page at a time."""
        if accesses.current.on:
            self.touch_span(addr, n, False)
        first = addr & ~7
        if (first ^ (addr + n - 1)) & ~(PAGE_SIZE - 1):  # crosses a page: per doubleword
            return read_span(self.read, addr, n) or b""  # (this memory is always readable)
        page = self.pages.get(first & ~(PAGE_SIZE - 1), {})
        index = (first & (PAGE_SIZE - 1)) >> 3
        words = (addr + n - first + 7) >> 3
        get = page.get
        data = _words(words).pack(*[get(i, 0) for i in range(index, index + words)])
        return data[addr - first:addr - first + n]

    def write_bytes(self, addr: int, data: bytes) -> None:
        """``write_span`` of this memory, which is always writable."""
        if accesses.current.on:
            self.touch_span(addr, len(data), True)
        if addr & 7 or len(data) & 7 or (addr ^ (addr + len(data) - 1)) & ~(PAGE_SIZE - 1):
            write_span(self.read, self._store, addr, data)
            return
        # Whole doublewords in one page (a register block): the common case, done in place.
        base = addr & ~(PAGE_SIZE - 1)
        page = self.pages.get(base)
        if page is None:
            page = self.pages[base] = SortedDict()
        get = page.get
        changed = False
        for i, value in enumerate(_words(len(data) >> 3).unpack(data),
                                  (addr & (PAGE_SIZE - 1)) >> 3):
            if get(i, 0) != value:  # (most of a register block is stored unchanged)
                changed = True
                if value:
                    page[i] = value
                else:
                    del page[i]
        if changed:
            self.changed(base)

    def _store(self, addr: int, value: int) -> bool:
        self.write(addr, value)
        return True


@functools.cache
def _words(n: int) -> struct.Struct:
    """``n`` doublewords, each big-endian (its bytes as memory holds them)."""
    return struct.Struct(f">{n}Q")


def read_span(read: ReadFn, addr: int, n: int) -> bytes | None:
    """``n`` bytes at ``addr`` (any alignment) of a doubleword memory whose doublewords hold
    their bytes big-endian first, as memory does; None if a doubleword is unreadable."""
    first = addr & ~7
    words = []
    for dw in range(first, addr + n, 8):
        value = read(dw)
        if value is None:
            return None
        words.append(value.to_bytes(8, "big"))
    return b"".join(words)[addr - first:addr - first + n]


def write_span(read: ReadFn, write: Callable[[int, int], bool], addr: int,
               data: bytes) -> bool:
    """Store ``data`` at ``addr``; a partial doubleword keeps its other bytes. False at the
    first doubleword that cannot be read or written (the ones before it are written)."""
    end = addr + len(data)
    for dw in range(addr & ~7, end, 8):
        if dw < addr or dw + 8 > end:  # a partial doubleword keeps its other bytes
            old = read(dw)
            if old is None:
                return False
            lo, hi = max(addr, dw), min(end, dw + 8)
            word = bytearray(old.to_bytes(8, "big"))
            word[lo - dw:hi - dw] = data[lo - addr:hi - addr]
            value = int.from_bytes(word, "big")
        else:
            value = int.from_bytes(data[dw - addr:dw - addr + 8], "big")
        if not write(dw, value):
            return False
    return True


def _index(gpa: int, level: int) -> int:
    return (gpa >> _SHIFT[level]) & ((1 << _BITS[level]) - 1)


class RadixTree:
    """One partition-scoped tree, changed by its owner (kvmppc_create_pte,
    kvmppc_unmap_pte, kvmppc_radix_update_pte, kvmppc_free_pgtable_radix). It does no TLB
    invalidation: every operation that removes a translation returns the leaves it
    removed, for the caller to tlbie (and to fix rmaps and dirty logs) as the kernel does
    inside kvmppc_unmap_pte. Empty tables stay, as in the kernel."""

    def __init__(self, mem: TableMemory) -> None:
        self.mem = mem
        self.root = mem.alloc_table()
        self.mismatches: list[tuple[int, int, int]] = []
        """(gpa, old, new) where an insert met a present leaf differing outside
        W/R/C (the kernel's WARN_ON_ONCE; it ORs the bits in anyway)."""

    @property
    def pate_dw0(self) -> int:
        """The root as a PATE's first doubleword (kvmhv_set_nested_ptbl): what walk takes."""
        return PATB_HR | RTS_52 | self.root | RADIX_PGD_INDEX_SIZE

    def _locate(self, gpa: int) -> tuple[int, SortedDict, int, Leaf] | None:
        """__find_linux_pte: the table (address and page), index and leaf mapping ``gpa``."""
        table = self.root
        for level in (3, 2, 1, 0):
            page = self.mem.pages[table]
            index = _index(gpa, level)
            entry = page.get(index, 0)
            if accesses.current.on:
                self.mem.touch(table + index * 8)
            if not entry & PAGE_PRESENT:
                return None
            if entry & PAGE_PTE:
                shift = _SHIFT[level]
                return table, page, index, Leaf(gpa & ~((1 << shift) - 1), entry, shift)
            table = entry & RPDB_MASK
        return None

    def find(self, gpa: int) -> Leaf | None:
        """The present leaf mapping ``gpa`` (find_kvm_secondary_pte)."""
        found = self._locate(gpa)
        return found[3] if found else None

    def insert(self, gpa: int, pte: int, shift: int) -> list[Leaf]:
        """kvmppc_create_pte at the level of ``shift`` (16, 21 or 30), returning the leaves
        it removed. On the way down a larger leaf is unmapped whole (the rest of its range
        becomes unmapped: nothing is split) and a missing table is allocated. At the target
        level: the same PTE already there is a no-op; a present leaf gets the new bits ORed
        in (recorded in ``mismatches`` if they differ outside W/R/C); a table there (a
        smaller mapping) is freed with every leaf under it."""
        level = _LEAF_LEVEL[shift]
        if pte & (PAGE_PRESENT | PAGE_PTE) != PAGE_PRESENT | PAGE_PTE:
            raise ValueError(f"{pte:#x} is not a present leaf")
        if pte & RADIX_RPN_MASK & ((1 << shift) - 1):
            raise ValueError(f"{pte:#x}: real address not aligned to 1 << {shift}")
        removed: list[Leaf] = []
        table = self.root
        for lvl in range(3, level, -1):
            page = self.mem.pages[table]
            index = _index(gpa, lvl)
            entry = page.get(index, 0)
            if accesses.current.on:  # read, and written if it is replaced below
                self.mem.touch(table + index * 8, not entry & PAGE_PRESENT or
                               bool(entry & PAGE_PTE))
            if entry & PAGE_PRESENT and entry & PAGE_PTE:
                removed.append(Leaf(gpa & ~((1 << _SHIFT[lvl]) - 1), entry, _SHIFT[lvl]))
                entry = 0
            if not entry:
                entry = PAGE_PRESENT | self.mem.alloc_table() | _BITS[lvl - 1]
                page[index] = entry
                self.mem.changed(table)
            table = entry & RPDB_MASK
        page = self.mem.pages[table]
        index = _index(gpa, level)
        entry = page.get(index, 0)
        if accesses.current.on:
            self.mem.touch(table + index * 8, entry != pte)
        if entry & PAGE_PRESENT and entry & PAGE_PTE:
            if entry != pte:
                if (entry ^ pte) & PTE_BITS_MUST_MATCH:
                    self.mismatches.append((gpa & ~((1 << shift) - 1), entry, pte))
                page[index] = entry | pte
                self.mem.changed(table)
            return removed
        if entry:  # a smaller mapping's table: kvmppc_unmap_free_p?d_entry_table
            removed += self._free_subtree(entry & RPDB_MASK, level - 1, gpa & ~((1 << shift) - 1))
        page[index] = pte
        self.mem.changed(table)
        return removed

    def _free_subtree(self, table: int, level: int, base: int) -> list[Leaf]:
        """Free a table and everything under it; the leaves it held, in GPA order."""
        leaves: list[Leaf] = []
        for index, entry in self.mem.pages[table].items():
            gpa = base + (index << _SHIFT[level])
            if entry & PAGE_PTE:
                leaves.append(Leaf(gpa, entry, _SHIFT[level]))
            elif level:
                leaves += self._free_subtree(entry & RPDB_MASK, level - 1, gpa)
        self.mem.free_table(table)
        return leaves

    def _leaf_slots(
        self, table: int, level: int, base: int, start: int, end: int
    ) -> Iterator[tuple[int, SortedDict, int, Leaf]]:
        """(table address, table page, index, leaf) of each present leaf under ``table``
        overlapping [start, end), in GPA order."""
        page = self.mem.pages[table]
        shift = _SHIFT[level]
        lo = max(start - base, 0) >> shift
        hi = min((end - 1 - base) >> shift, (1 << _BITS[level]) - 1)
        for index in page.irange(lo, hi):
            entry = page[index]
            if accesses.current.on:
                self.mem.touch(table + index * 8)
            if not entry & PAGE_PRESENT:
                continue
            gpa = base + (index << shift)
            if entry & PAGE_PTE:
                yield table, page, index, Leaf(gpa, entry, shift)
            else:
                yield from self._leaf_slots(entry & RPDB_MASK, level - 1, gpa, start, end)

    def leaves(self, start: int = 0, end: int = RADIX_PGTABLE_RANGE) -> Iterator[Leaf]:
        """Present leaves overlapping [start, end), in GPA order, touching only present
        entries. Do not change the tree while iterating."""
        if start < end:
            for _, _, _, leaf in self._leaf_slots(self.root, 3, 0, start, end):
                yield leaf

    def unmap(self, start: int, end: int) -> list[Leaf]:
        """Clear every leaf overlapping [start, end) (kvm_unmap_radix per GFN: a large
        leaf partly in the range goes whole), returning them with their last PTE value."""
        slots = list(self._leaf_slots(self.root, 3, 0, start, end)) if start < end else []
        for table, page, index, _ in slots:
            del page[index]
            self.mem.changed(table)
            if accesses.current.on:
                self.mem.touch(table + index * 8, True)
        return [leaf for _, _, _, leaf in slots]

    def update(self, gpa: int, clear_bits: int = 0, set_bits: int = 0) -> int | None:
        """__radix_pte_update on the leaf mapping ``gpa``, in one step: the old PTE, or
        None if no leaf maps it."""
        found = self._locate(gpa)
        if found is None:
            return None
        table, page, index, leaf = found
        if accesses.current.on:
            self.mem.touch(table + index * 8, True)
        new = (leaf.pte | set_bits) & ~clear_bits
        if new:
            page[index] = new
        else:
            del page[index]
        self.mem.changed(table)
        return leaf.pte

    def set_rc(self, gpa: int, writing: bool) -> bool:
        """kvmppc_hv_handle_set_rc: set R (and C when writing) in the leaf mapping ``gpa``
        if it is present and, for a write, writable."""
        leaf = self.find(gpa)
        if leaf is None or (writing and not leaf.pte & PAGE_WRITE):
            return False
        self.update(gpa, set_bits=PAGE_ACCESSED | (PAGE_DIRTY if writing else 0))
        return True

    def clear(self) -> list[Leaf]:
        """kvmppc_free_pgtable_radix: free every table under the root and empty it; the
        leaves that were mapped. The caller flushes the whole LPID."""
        pgd = self.mem.pages[self.root]
        leaves: list[Leaf] = []
        for index, entry in list(pgd.items()):
            if accesses.current.on:
                self.mem.touch(self.root + index * 8, True)
            leaves += self._free_subtree(entry & RPDB_MASK, 2, index << PGDIR_SHIFT)
        pgd.clear()
        self.mem.changed(self.root)
        return leaves

    def destroy(self) -> list[Leaf]:
        """kvmppc_free_radix: ``clear`` and free the root too."""
        leaves = self.clear()
        self.mem.free_table(self.root)
        return leaves

    def debugfs_lines(self) -> Iterator[str]:
        """This table's part of the debugfs ``radix`` file (debugfs_radix_read): the
        ``pgdir:`` header, then one `` <gpa>: <pte> <shift>`` line per present leaf in
        GPA order (the caller prefixes ``Nested LPID n: `` for a nested guest)."""
        yield f"pgdir: {self.root:x}\n"
        for leaf in self.leaves():
            yield f" {leaf.gpa:x}: {leaf.pte:x} {leaf.shift}\n"


# The partition table: the PTCR (or L1's H_SET_PARTITION_TABLE value) names it.


def encode_ptcr(base: int, size: int) -> int:
    """PTCR = PATB (the table's real address) | PATS (log2(size) - 12)."""
    if size < 4096 or size & (size - 1):
        raise ValueError(f"partition table size {size:#x} is not a power of two >= 4K")
    if base & ~PRTB_MASK:
        raise ValueError(f"partition table base {base:#x} is not 4K-aligned")
    return base | (size.bit_length() - 1 - 12)


def decode_ptcr(ptcr: int) -> tuple[int, int]:
    """(base, size in bytes)."""
    return ptcr & PRTB_MASK, 1 << ((ptcr & PRTS_MASK) + 12)


def ptcr_entries(ptcr: int) -> int:
    """How many 16-byte entries the table holds: the bound on an lpid
    (kvmhv_update_ptbl_cache, kvmhv_get_nested: 1 << (PATS + 12 - 4))."""
    return 1 << ((ptcr & PRTS_MASK) + 12 - 4)


@attrs.frozen
class Pate:
    """A partition-table entry: two doublewords (struct patb_entry)."""

    dw0: int
    dw1: int

    @classmethod
    def radix(cls, root: int, process_table: int) -> Pate:
        """dw0 = PATB_HR | RTS | root | RPDS, as kvmppc_setup_partition_table and
        kvmhv_set_nested_ptbl build it; dw1 is the process table word as given (a radix
        guest's includes PATB_GR)."""
        if root & ~RPDB_MASK:
            raise ValueError(f"root {root:#x} does not fit RPDB")
        return cls(PATB_HR | RTS_52 | root | RADIX_PGD_INDEX_SIZE, process_table)

    @property
    def hr(self) -> bool:
        return bool(self.dw0 & PATB_HR)

    @property
    def tree_bits(self) -> int:
        return tree_bits(self.dw0)

    @property
    def root(self) -> int:
        return self.dw0 & RPDB_MASK

    @property
    def rpds(self) -> int:
        return self.dw0 & RPDS_MASK

    @property
    def gr(self) -> bool:
        return bool(self.dw1 & PATB_GR)

    @property
    def process_table(self) -> int:
        return self.dw1 & PRTB_MASK

    @property
    def prts(self) -> int:
        return self.dw1 & PRTS_MASK


def pate_address(ptcr: int, lpid: int) -> int:
    return (ptcr & PRTB_MASK) + (lpid << 4)


def read_pate(read: ReadFn, ptcr: int, lpid: int) -> Pate | None:
    """kvmhv_update_ptbl_cache: entry ``lpid`` of the table at ``ptcr``, read through the
    table owner's ``read``; None if lpid is beyond the table or a doubleword is unreadable
    (the kernel then caches both words as 0)."""
    if lpid >= ptcr_entries(ptcr):
        return None
    addr = pate_address(ptcr, lpid)
    dw0, dw1 = read(addr), read(addr + 8)
    if dw0 is None or dw1 is None:
        return None
    return Pate(dw0, dw1)


def write_pate(mem: TableMemory, ptcr: int, lpid: int, pate: Pate) -> None:
    """The owner sets entry ``lpid`` (both doublewords; the caller then invalidates with
    RIC=2, or H_TLB_INVALIDATE when it is a guest)."""
    if lpid >= ptcr_entries(ptcr):
        raise ValueError(f"lpid {lpid} is beyond a {ptcr_entries(ptcr)}-entry table")
    addr = pate_address(ptcr, lpid)
    mem.write(addr, pate.dw0)
    mem.write(addr + 8, pate.dw1)
