"""The debugfs ``radix`` file of a radix guest (book3s_64_mmu_radix.c, ``debugfs_radix_read``,
with the nested guests' shadow tables the v4.20 nested series added): L1's partition-scoped
table in L0 first (LPID 0), then each nested guest's shadow table in ascending L1 lpid,
holding a nested reference while it is walked.

Format, per table: a header, then one line per present leaf in GPA order::

    pgdir: <root>                          (LPID 0)
    \\nNested LPID <n>: pgdir: <root>      (each nested guest: note the leading newline)
     <gpa>: <pte> <shift>                  (shift 30, 21 or 16; numbers in lower-case hex)

``<root>`` is the root table's real address, as ``RadixTree.debugfs_lines`` prints it (the
kernel prints the pgd's linear-map address, PAGE_OFFSET 0xc000000000000000 above it).

The walk restarts from the root for every leaf and reads each level with READ_ONCE; the
table pages it passes through can be freed meanwhile (kvmppc_free_pgtable_radix under an
H_TLB_INVALIDATE RIC=0 or 2, or kvmppc_create_pte replacing a table by a larger leaf), both
under mmu_lock and without an RCU delay. Holding the nested reference keeps the guest and
its root, not the tables under the root.

- quirk ``radix-dump-lockless`` (C3, a candidate read from the code, not confirmed
  upstream): as the kernel does it, no mmu_lock. Reading a table page after it was freed is
  reported as a use-after-free.
- fixed: mmu_lock held over each descent from the root to the leaf, and dropped before the
  line is formatted and copied to the user (copy_to_user may fault: not under a spinlock).
  The frees all happen under mmu_lock, and find_kvm_secondary_pte and
  find_kvm_nested_guest_pte already demand it for the same walk elsewhere, so this is the
  fix that matches the rest of the file.

Choices the kernel source does not settle: one ``read()`` with a buffer large enough for the
whole file (the kernel drops and retakes the nested reference between ``read()`` calls);
a run of absent entries within one table page is skipped in one step (the kernel reads them
one by one, each from the root).

End-of-run views (``offer_views``; ``emu run --view radix``, ``RunResult.views``): once a
schedule has ended nothing runs, so ``radix_snapshot`` formats the same file in one go,
without locks or scheduling points; ``rmap_snapshot`` shows the nested rmap beside it, which
no kernel file does (``memslot->arch.rmap``: per L1 page, every entry its word holds, in
list order: newest first, the tagged single entry last, with its tag)::

    memslot <id>: base gfn <base>, <npages> pages
     gfn <gfn>: <entry> (lpid <n>, gpa <n_gpa>)[; <entry> ...]   (entry: the u64, hex)
"""

from __future__ import annotations

from sortedcontainers import SortedDict

from ..hw.memory import PAGE_SHIFT, FramePool
from ..hw.radix import (
    PAGE_PRESENT,
    PAGE_PTE,
    PGDIR_SHIFT,
    PMD_SHIFT,
    PUD_SHIFT,
    RADIX_PGD_INDEX_SIZE,
    RADIX_PGTABLE_RANGE,
    RADIX_PMD_INDEX_SIZE,
    RADIX_PTE_INDEX_SIZE,
    RADIX_PUD_INDEX_SIZE,
    RPDB_MASK,
    FrameAllocator,
    RadixTree,
)
from ..sim import Machine, accesses
from ..sim.violations import About
from .nested import (
    _find_nested,
    _idr_get_next,
    kvmhv_get_nested,
    kvmhv_nested_next_lpid,
    kvmhv_put_nested,
)
from .nested_rmap import RMAP_NESTED_IS_SINGLE_ENTRY, n_rmap_gpa, n_rmap_lpid
from .radix_mmu import RadixMmu

_LEVELS = (("pgd", PGDIR_SHIFT, RADIX_PGD_INDEX_SIZE), ("pud", PUD_SHIFT, RADIX_PUD_INDEX_SIZE),
           ("pmd", PMD_SHIFT, RADIX_PMD_INDEX_SIZE), ("pte", PAGE_SHIFT, RADIX_PTE_INDEX_SIZE))


def _header(lpid: int, tree: RadixTree) -> str:
    nested = f"\nNested LPID {lpid}: " if lpid else ""
    return f"{nested}pgdir: {tree.root:x}\n"


def _leaf_line(gpa: int, pte: int, shift: int) -> str:
    return f" {gpa:x}: {pte:x} {shift}\n"


def _table_frame(frames: FrameAllocator, table: int) -> tuple[str, ...]:
    """The access name of the frame holding the table page at ``table`` (L0's tables come
    from a ``FramePool``, which names its frames; () for any other allocator)."""
    return (frames.name(table >> PAGE_SHIFT),) if isinstance(frames, FramePool) else ()


async def _next_line(mmu: RadixMmu, tree: RadixTree, root: SortedDict, gpa: int, what: str,
                     locked: bool) -> tuple[int, str]:
    """One turn of the kernel's loop: descend from the root for ``gpa``; (the next gpa, the
    leaf's line or "")."""
    m = mmu.kvm.m
    pages, frames = tree.mem.pages, tree.mem.frames
    table, page = tree.root, root
    line = ""
    if locked:
        await mmu.kvm.mmu_lock.lock()
    for name, shift, bits in _LEVELS:
        await m.point(f"debugfs_radix_read: READ_ONCE the {name} entry of {gpa:#x} in {what}")
        if accesses.current.on:  # the READ_ONCE reads the page a teardown frees under it
            for held in _table_frame(frames, table):
                accesses.current.touch(held)
        if pages.get(table) is not page:
            m.fail("use-after-free", About(f"debugfs_radix_read reads the {name} table page "
                                           f"{table:#x} of {what}, freed under it (no "
                                           "mmu_lock)", *_table_frame(frames, table)))
        index = (gpa >> shift) & ((1 << bits) - 1)
        entry = page.get(index, 0)
        if not entry & PAGE_PRESENT:
            base = gpa & ~((1 << (shift + bits)) - 1)
            following = next(page.irange(index + 1), None)
            gpa = base + (following << shift if following is not None else 1 << (shift + bits))
            break
        if entry & PAGE_PTE:
            line = _leaf_line(gpa, entry, shift)
            gpa += 1 << shift
            break
        table = entry & RPDB_MASK
        page = pages.get(table)
    if locked:
        mmu.kvm.mmu_lock.unlock()
    return gpa, line


async def _dump_table(mmu: RadixMmu, tree: RadixTree, lpid: int, locked: bool) -> str:
    what = "L1's table" if lpid == 0 else f"nested LPID {lpid}'s shadow table"
    out = [_header(lpid, tree)]
    root = tree.mem.pages[tree.root]
    gpa = 0
    while gpa < RADIX_PGTABLE_RANGE:
        gpa, line = await _next_line(mmu, tree, root, gpa, what, locked)
        out.append(line)
    return "".join(out)


async def debugfs_radix_read(mmu: RadixMmu) -> str:
    """The whole ``radix`` file of the guest ``mmu`` belongs to (see the module notes)."""
    l1 = mmu.l1
    locked = l1 is None or "radix-dump-lockless" not in l1.quirks
    out = [await _dump_table(mmu, mmu.pgtable, 0, locked)]
    lpid = 0
    while l1 is not None and (lpid := await kvmhv_nested_next_lpid(l1, lpid)) >= 0:
        nested = await kvmhv_get_nested(l1, lpid, False)
        if nested is None:  # removed since: the kernel skips it
            continue
        out.append(await _dump_table(mmu, nested.shadow_pgtable, lpid, locked))
        await kvmhv_put_nested(nested)
    return "".join(out)


def _nested_tables(mmu: RadixMmu) -> list[tuple[int, RadixTree]]:
    """(lpid, table) for L1's own table (lpid 0), then each nested guest in ascending lpid."""
    tables = [(0, mmu.pgtable)]
    lpid = 0
    while mmu.l1 is not None and (lpid := _idr_get_next(mmu.l1, lpid)) >= 0:
        tables.append((lpid, _find_nested(mmu.l1, lpid).shadow_pgtable))
    return tables


def radix_snapshot(mmu: RadixMmu) -> str:
    """The ``radix`` file as ``debugfs_radix_read`` writes it, read at once (nothing else
    runs: the end of a schedule)."""
    return "".join(_header(lpid, tree) + "".join(
        _leaf_line(leaf.gpa, leaf.pte, leaf.shift) for leaf in tree.leaves())
        for lpid, tree in _nested_tables(mmu))


def _rmap_entry(entry: int) -> str:
    return f"{entry:016x} (lpid {n_rmap_lpid(entry)}, gpa {n_rmap_gpa(entry):#x})"


def rmap_snapshot(mmu: RadixMmu) -> str:
    """The nested rmap of every memslot, one line per L1 page that has entries (see the
    module notes); "no nested rmap entries" when there are none."""
    out = []
    for slot, words in sorted(mmu.rmap.items(), key=lambda item: item[0].id):
        lines = [f" gfn {slot.base_gfn + offset:#x}: " + "; ".join(
            _rmap_entry(entry) for entry in (
                *word.nodes, word.single | RMAP_NESTED_IS_SINGLE_ENTRY))
            for offset, word in sorted(words.items()) if word.single is not None]
        if lines:
            out += [f"memslot {slot.id}: base gfn {slot.base_gfn:#x}, {slot.npages} pages",
                    *lines]
    return "\n".join(out) + "\n" if out else "no nested rmap entries\n"


def offer_views(m: Machine, mmu: RadixMmu) -> None:
    """Offer ``radix`` (the debugfs file) and ``rmap`` as end-of-run views of ``mmu``'s
    guest."""
    m.view("radix", lambda: radix_snapshot(mmu))
    m.view("rmap", lambda: rmap_snapshot(mmu))
