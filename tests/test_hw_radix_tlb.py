"""The POWER hardware nested virtualisation runs on: radix partition-scoped tables
(emu/hw/radix.py), TLB groups (emu/hw/cputhreads.py) and per-group TLBs (emu/hw/tlb.py),
checked against the values and behaviour of the kernel sources they mirror."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emu.hw.cputhreads import (
    Topology,
    cpu_first_thread_sibling,
    cpu_first_tlb_thread_sibling,
    cpu_last_tlb_thread_sibling,
    cpu_tlb_thread_sibling_step,
    tlb_siblings,
)
from emu.hw.memory import FramePool
from emu.hw.radix import (
    EFAULT,
    EINVAL,
    ENOENT,
    PAGE_ACCESSED,
    PAGE_DIRTY,
    PAGE_EXEC,
    PAGE_PRESENT,
    PAGE_PTE,
    PAGE_READ,
    PAGE_RW,
    PAGE_RWX,
    PAGE_WRITE,
    PATB_GR,
    PATB_HR,
    PMD_SHIFT,
    PUD_SHIFT,
    RADIX_PGTABLE_EADDR_SIZE,
    RTS_52,
    Leaf,
    Pate,
    RadixTree,
    TableMemory,
    WalkFault,
    decode_ptcr,
    encode_ptcr,
    make_pte,
    ptcr_entries,
    read_pate,
    walk,
    write_pate,
)
from emu.hw.tlb import IS_ALL, IS_LPID, IS_VA, RIC_ALL, RIC_PWC, RIC_TLB, Tlbs

K64, M2, G1 = 1 << 16, 1 << PMD_SHIFT, 1 << PUD_SHIFT
RO = PAGE_READ | PAGE_ACCESSED
RW = PAGE_RW | PAGE_ACCESSED | PAGE_DIRTY


def new_tree() -> tuple[RadixTree, FramePool]:
    pool = FramePool("normal")
    return RadixTree(TableMemory(pool)), pool


def live(pool: FramePool) -> list[int]:
    return [pfn for pfn in range(1, 256) if pool.get(pfn) is not None]


def own_walk(tree: RadixTree, gpa: int) -> Leaf | WalkFault:
    return walk(tree.mem.read, tree.pate_dw0, gpa)


# --- geometry and bit values -------------------------------------------------------------


def test_geometry_and_bits_are_the_kernels():
    assert RADIX_PGTABLE_EADDR_SIZE == 52 and (PMD_SHIFT, PUD_SHIFT) == (21, 30)
    assert RTS_52 == (0x5 << 5) | (0x2 << 61)  # radix__get_tree_size(), not DD1
    assert make_pte(0x12340000, PAGE_RWX | PAGE_ACCESSED) == 0xC000000012340107
    assert (PAGE_PRESENT, PAGE_PTE) == (1 << 63, 1 << 62)
    assert (PAGE_EXEC, PAGE_WRITE, PAGE_READ, PAGE_DIRTY, PAGE_ACCESSED) == (1, 2, 4, 0x80, 0x100)


# --- insert / walk / unmap ---------------------------------------------------------------


@pytest.mark.parametrize("shift", [16, 21, 30])
def test_insert_then_walk_at_each_size(shift):
    tree, _ = new_tree()
    size = 1 << shift
    base, ra = 5 * G1 + 7 * size if shift < 30 else 5 * G1, 3 * G1
    assert tree.insert(base, make_pte(ra, RW | PAGE_EXEC), shift) == []
    probe = base + size - 8
    leaf = own_walk(tree, probe)
    assert isinstance(leaf, Leaf)
    assert (leaf.gpa, leaf.shift, leaf.ra, leaf.pfn) == (base, shift, ra, ra >> 16)
    assert leaf.real_address(probe) == ra + size - 8
    assert leaf.prot == PAGE_RWX and leaf.rc == PAGE_ACCESSED | PAGE_DIRTY
    assert tree.find(probe) == leaf
    assert own_walk(tree, base + size) == WalkFault(ENOENT)
    assert own_walk(tree, base - 1) == WalkFault(ENOENT)


def test_a_smaller_insert_unmaps_the_whole_larger_leaf():
    """kvmppc_create_pte: a 1G (then 2M) leaf on the way down is unmapped, not split."""
    tree, _ = new_tree()
    big = make_pte(4 * G1, RW)
    tree.insert(G1, big, 30)
    removed = tree.insert(G1 + 3 * M2 + K64, make_pte(0x70000, RO), 16)
    assert removed == [Leaf(G1, big, 30)]
    assert own_walk(tree, G1 + 5 * M2) == WalkFault(ENOENT)  # rest of the 1G is gone
    assert own_walk(tree, G1 + 3 * M2 + K64).shift == 16

    mid = make_pte(6 * M2, RO)
    tree.insert(2 * G1, mid, 21)
    assert tree.insert(2 * G1 + K64, make_pte(0x90000, RO), 16) == [Leaf(2 * G1, mid, 21)]
    assert own_walk(tree, 2 * G1) == WalkFault(ENOENT)


def test_a_larger_insert_frees_the_table_and_every_leaf_under_it():
    """kvmppc_unmap_free_pmd_entry_table / _pud_entry_table."""
    tree, pool = new_tree()
    small = [make_pte((0x100 + i) << 16, RO) for i in range(3)]
    for i, pte in enumerate(small):
        tree.insert(G1 + 4 * M2 + i * K64, pte, 16)
    tree.insert(G1 + 9 * M2, make_pte(8 * M2, RO), 21)
    tables = len(tree.mem.pages)  # pgd, pud, pmd, one pte table
    assert tables == 4
    removed = tree.insert(G1 + 4 * M2, make_pte(2 * M2, RW), 21)
    assert removed == [Leaf(G1 + 4 * M2 + i * K64, p, 16) for i, p in enumerate(small)]
    assert len(tree.mem.pages) == 3
    removed = tree.insert(G1, make_pte(G1, RW), 30)
    assert [leaf.shift for leaf in removed] == [21, 21]
    assert len(tree.mem.pages) == 2 and len(live(pool)) == 2  # the freed tables' frames went back


def test_insert_same_is_a_noop_and_extra_bits_are_ored_in():
    tree, _ = new_tree()
    ro = make_pte(0x50000, RO)
    tree.insert(K64, ro, 16)
    assert tree.insert(K64, ro, 16) == []
    tree.insert(K64, make_pte(0x50000, PAGE_RW | PAGE_DIRTY), 16)  # write upgrade
    assert tree.find(K64).pte == make_pte(0x50000, RW)
    assert tree.mismatches == []
    tree.insert(K64, make_pte(0x60000, RO), 16)  # another page: WARN_ON_ONCE, ORed anyway
    assert tree.mismatches == [(K64, make_pte(0x50000, RW), make_pte(0x60000, RO))]
    assert tree.find(K64).pte == make_pte(0x70000, RW)


def test_unmap_removes_whole_leaves_overlapping_the_range_in_gpa_order():
    tree, _ = new_tree()
    tree.insert(0, make_pte(G1, RO), 30)
    tree.insert(G1 + M2, make_pte(0x10000, RO), 16)
    tree.insert(G1 + 2 * M2, make_pte(2 * M2, RO), 21)
    tree.insert(3 * G1, make_pte(3 * G1, RO), 30)
    removed = tree.unmap(G1 - K64, G1 + 2 * M2 + 1)
    assert [(leaf.gpa, leaf.shift) for leaf in removed] == [
        (0, 30),
        (G1 + M2, 16),
        (G1 + 2 * M2, 21),
    ]
    assert [leaf.gpa for leaf in tree.leaves()] == [3 * G1]
    assert tree.unmap(0, 3 * G1) == []


def test_clear_and_destroy_return_every_frame():
    tree, pool = new_tree()
    tree.insert(0, make_pte(G1, RO), 30)
    tree.insert(G1, make_pte(0x10000, RO), 16)
    tree.insert((1 << 52) - K64, make_pte(0x20000, RO), 16)  # the last page of the space
    assert [leaf.gpa for leaf in tree.clear()] == [0, G1, (1 << 52) - K64]
    assert list(tree.leaves()) == [] and len(tree.mem.pages) == 1
    tree.destroy()
    assert tree.mem.pages == {} and live(pool) == []


# --- walk faults, as kvmppc_mmu_walk_radix_tree reports them -------------------------------


def test_walk_fault_kinds():
    tree, _ = new_tree()
    gpa = 2 * G1 + M2
    tree.insert(gpa, make_pte(0x30000, RO), 16)
    mem, root = tree.mem, tree.pate_dw0
    assert walk(mem.read, root, gpa + M2) == WalkFault(ENOENT)

    # -EFAULT: a table page the reader cannot read, with the address it failed on.
    pud = mem.read(tree.root) & 0x0FFFFFFFFFFFFF00
    hidden = lambda a: None if (a & ~0xFFFF) == pud else mem.read(a)  # noqa: E731
    assert walk(hidden, root, gpa) == WalkFault(EFAULT, pud + 2 * 8)

    # -EINVAL: tree size, root size, misaligned base.
    rts48 = (root & ~((3 << 61) | (7 << 5))) | (((48 - 31) >> 3) << 61) | (((48 - 31) & 7) << 5)
    assert walk(mem.read, rts48, gpa) == WalkFault(EINVAL)
    assert walk(mem.read, (root & ~0x1F) | 12, gpa) == WalkFault(EINVAL)
    assert walk(mem.read, root + 0x100, gpa) == WalkFault(EINVAL)

    # -EINVAL: a leaf whose real address is not aligned to its size (a 2M leaf at 64K).
    pmd = mem.read(pud + 2 * 8) & 0x0FFFFFFFFFFFFF00
    mem.write(pmd + 8, make_pte(0x10000, RO))
    assert walk(mem.read, root, gpa) == WalkFault(EINVAL)
    # -EINVAL: the lowest level holds a pointer, not a leaf.
    mem.write(pmd + 8, PAGE_PRESENT | mem.alloc_table() | 5)
    pte_table = mem.read(pmd + 8) & 0x0FFFFFFFFFFFFF00
    mem.write(pte_table, PAGE_PRESENT | mem.alloc_table() | 5)
    assert walk(mem.read, root, gpa) == WalkFault(EINVAL)
    # -EINVAL: a 512G leaf, and a next-level size the hardware does not support.
    mem.write(tree.root + 8 * 3, make_pte(0, RO))
    assert walk(mem.read, root, 3 << 39) == WalkFault(EINVAL)
    mem.write(tree.root + 8 * 4, PAGE_PRESENT | mem.alloc_table() | 10)
    assert walk(mem.read, root, 4 << 39) == WalkFault(EINVAL)


def test_walk_accepts_a_4k_geometry_bottom_level():
    """Level 0 may have 9 bits (4K pages); the walk gives shift 12 and the nested fault
    path, not the walk, rejects it."""
    tree, _ = new_tree()
    mem = tree.mem
    tree.insert(0, make_pte(0x10000, RO), 16)  # builds pgd -> pud -> pmd -> pte(5)
    pud = mem.read(tree.root) & 0x0FFFFFFFFFFFFF00
    pmd = mem.read(pud) & 0x0FFFFFFFFFFFFF00
    pte4k = mem.alloc_table()
    mem.write(pmd + 8, PAGE_PRESENT | pte4k | 9)
    mem.write(pte4k + 3 * 8, make_pte(0, RO) | 0x7000)
    leaf = walk(mem.read, tree.pate_dw0, M2 + 3 * 4096 + 5)
    assert (leaf.gpa, leaf.shift, leaf.ra) == (M2 + 3 * 4096, 12, 0x7000)


def test_a_guests_table_is_walked_through_its_memory():
    """L1's L2->L1 table lives in L1 memory (its own frames); L0 walks it through a read
    function that knows which L1 pages it can read."""
    l1_frames = FramePool("l1-ram")
    l1_tree = RadixTree(TableMemory(l1_frames))
    l1_tree.insert(7 * M2, make_pte(3 * M2, RW), 21)
    mem = l1_tree.mem
    readable = set(mem.pages)
    l0_reads = lambda a: mem.read(a) if (a & ~0xFFFF) in readable else None  # noqa: E731
    assert walk(l0_reads, l1_tree.pate_dw0, 7 * M2 + 5).ra == 3 * M2
    pmd = mem.read(mem.read(l1_tree.root) & 0x0FFFFFFFFFFFFF00) & 0x0FFFFFFFFFFFFF00
    readable.discard(pmd)  # L1 memory under it went away (unmapped, paged out)
    assert walk(l0_reads, l1_tree.pate_dw0, 7 * M2 + 5) == WalkFault(EFAULT, pmd + 7 * 8)


def test_watched_version_follows_every_change_of_the_watched_pages_only():
    """An invariant keyed on ``watched_version`` skips only while none of the pages it read
    changed: every way the memory changes (a store, a span store in or across pages, a table
    allocated or freed, each tree operation) bumps it exactly when it touches a watched
    page."""
    tree, _ = new_tree()
    mem = tree.mem
    tree.insert(0, make_pte(K64, RW), 16)
    pte_table = max(mem.pages)  # the last table the insert allocated
    watched, block = mem.alloc_table(), mem.alloc_table()  # two pages of plain data
    mem.watch([tree.root, pte_table, watched])

    def bumps(change) -> bool:
        before = mem.watched_version
        change()
        return mem.watched_version != before

    assert not bumps(lambda: mem.write_bytes(block, bytes(range(16))))
    assert not bumps(lambda: mem.write(block + 8, 5))
    assert not bumps(lambda: mem.write_bytes(watched + 8, bytes(8)))  # unchanged: no store
    assert bumps(lambda: mem.write_bytes(watched + 8, b"\x01" * 8))
    assert bumps(lambda: mem.write(watched + 16, 7))
    assert not bumps(lambda: mem.write_bytes(block + K64 - 4, b"\x02" * 8))  # across pages
    assert bumps(lambda: mem.write_bytes(block - 4, b"\x02" * 8))  # from the watched one
    assert bumps(lambda: tree.update(0, set_bits=PAGE_EXEC))
    assert bumps(lambda: tree.insert(K64, make_pte(2 * K64, RW), 16))
    assert not bumps(lambda: tree.insert(M2, make_pte(M2, RW), 21))  # a pmd leaf elsewhere
    assert bumps(lambda: tree.unmap(0, 2 * K64))
    assert not bumps(lambda: tree.unmap(M2, 2 * M2) and tree.unmap(0, K64))
    mem.watch([block])
    assert not bumps(tree.clear)
    assert bumps(lambda: mem.free_table(block))
    assert bumps(mem.alloc_table)  # (the frame freed last comes back first)
    mem.watch([tree.root])
    assert bumps(tree.clear)


# --- R/C ----------------------------------------------------------------------------------


def test_set_rc_and_update():
    """kvmppc_hv_handle_set_rc: R on any access, R|C on a write to a writable leaf."""
    tree, _ = new_tree()
    tree.insert(0, make_pte(0x10000, PAGE_READ), 16)
    tree.insert(M2, make_pte(M2, PAGE_RW), 21)
    assert tree.set_rc(0x100, writing=True) is False
    assert tree.set_rc(0x100, writing=False) is True
    assert tree.find(0).rc == PAGE_ACCESSED
    assert tree.set_rc(M2 + K64, writing=True) is True
    assert tree.find(M2).rc == PAGE_ACCESSED | PAGE_DIRTY
    assert tree.set_rc(G1, writing=False) is False  # nothing mapped
    old = tree.update(M2 + 5, clear_bits=PAGE_DIRTY)  # kvm_radix_test_clear_dirty
    assert old & PAGE_DIRTY and tree.find(M2).rc == PAGE_ACCESSED
    assert tree.update(G1, set_bits=PAGE_ACCESSED) is None


# --- debugfs dump -------------------------------------------------------------------------


def test_debugfs_dump_format_and_order():
    tree, _ = new_tree()
    tree.insert(G1, make_pte(2 * G1, RW), 30)
    tree.insert(3 * M2, make_pte(M2, RO), 21)
    tree.insert(K64, make_pte(0x50000, RO | PAGE_EXEC), 16)
    assert "".join(tree.debugfs_lines()) == (
        f"pgdir: {tree.root:x}\n"
        " 10000: c000000000050105 16\n"
        " 600000: c000000000200104 21\n"
        " 40000000: c000000080000186 30\n"
    )


# --- partition table ----------------------------------------------------------------------


def test_ptcr_round_trip():
    """PTCR: PATB | (log2(size) - 12); entries = size / 16 (kvmhv_update_ptbl_cache)."""
    assert encode_ptcr(0x1230000, 64 << 10) == 0x1230004
    assert decode_ptcr(0x1230004) == (0x1230000, 64 << 10)
    assert ptcr_entries(0x1230004) == 4096 and ptcr_entries(0x1230000) == 256
    with pytest.raises(ValueError):
        encode_ptcr(0x1230000, 3 << 12)
    with pytest.raises(ValueError):
        encode_ptcr(0x1230800, 4096)


def test_pate_round_trip_and_read_through_the_owner():
    pate = Pate.radix(0x10000, PATB_GR | 0x20000 | 4)
    assert pate.dw0 == 0xC0000000000100AD  # HR | RTS(52) | root | RPDS 13
    assert (pate.hr, pate.tree_bits, pate.root, pate.rpds) == (True, 52, 0x10000, 13)
    assert (pate.gr, pate.process_table, pate.prts) == (True, 0x20000, 4)
    assert PATB_HR == PATB_GR == 1 << 63

    mem = TableMemory(FramePool("l1-ram"))
    base = mem.alloc_table()
    ptcr = encode_ptcr(base, 4096)  # 256 entries
    write_pate(mem, ptcr, 5, pate)
    assert (mem.read(base + 80), mem.read(base + 88)) == (pate.dw0, pate.dw1)
    assert read_pate(mem.read, ptcr, 5) == pate
    assert read_pate(mem.read, ptcr, 6) == Pate(0, 0)
    assert read_pate(mem.read, ptcr, 256) is None  # beyond the table
    assert read_pate(lambda a: None, ptcr, 5) is None  # unreadable
    with pytest.raises(ValueError):
        write_pate(mem, ptcr, 256, pate)


def test_the_tree_root_is_a_pate():
    tree, _ = new_tree()
    assert Pate(tree.pate_dw0, 0) == Pate.radix(tree.root, 0)


# --- TLB groups (cputhreads.h) ------------------------------------------------------------


def test_smt4_the_core_is_one_tlb():
    assert cpu_first_tlb_thread_sibling(5, 4) == cpu_first_thread_sibling(5, 4) == 4
    assert cpu_last_tlb_thread_sibling(5, 4) == 7 and cpu_tlb_thread_sibling_step(4) == 1
    topo = Topology.power9_smt4(cores=2)
    assert list(topo.members(5)) == [4, 5, 6, 7] and topo.groups() == [0, 4]
    assert topo.same_group(4, 7) and not topo.same_group(3, 4)


def test_smt8_big_core_groups_interleave():
    assert cpu_first_tlb_thread_sibling(5, 8) == 1 and cpu_last_tlb_thread_sibling(5, 8) == 7
    assert cpu_tlb_thread_sibling_step(8) == 2
    assert list(tlb_siblings(5, 8)) == [1, 3, 5, 7]
    assert list(tlb_siblings(6, 8)) == [0, 2, 4, 6]
    assert list(tlb_siblings(13, 8)) == [9, 11, 13, 15]
    for topo in (Topology.power9_smt8(2), Topology.power10(2), Topology.kernel_rule(2, 8)):
        assert topo.groups() == [0, 1, 8, 9]
        assert topo.group_of(5) == 1 and topo.same_group(0, 6) and not topo.same_group(0, 1)
    # POWER8 (no ISA 3.0) and the pre-fix assumption: the whole 8-thread core is one TLB.
    assert list(tlb_siblings(5, 8, arch_300=False)) == list(range(8))
    assert Topology(2, 8, split_tlb=False).same_group(0, 1)
    with pytest.raises(ValueError):
        Topology(2, 4, split_tlb=True)
    with pytest.raises(ValueError):
        Topology(2, 6, split_tlb=False)
    with pytest.raises(ValueError):
        Topology.power9_smt4(1).group_of(4)


# --- TLBs ---------------------------------------------------------------------------------


def leaf(gpa: int, ra: int, shift: int = 16, flags: int = RW) -> Leaf:
    return Leaf(gpa, make_pte(ra, flags), shift)


def test_tlbiel_is_local_to_its_group_and_tlbie_is_global():
    tlbs = Tlbs(Topology.power9_smt4(cores=2))
    for cpu in (0, 4):
        tlbs.fill(cpu, 1, leaf(K64, 0x50000))
    assert tlbs.lookup(2, 1, K64 + 8).ra == 0x50000  # the whole core shares the entry
    assert tlbs.tlbiel(1, 1, gpa=K64) == 1
    assert tlbs.lookup(0, 1, K64) is None and tlbs.lookup(4, 1, K64) is not None
    tlbs.fill(0, 1, leaf(K64, 0x50000))
    assert tlbs.tlbie(1, gpa=K64 + 100) == 2
    assert all(len(tlb) == 0 for tlb in tlbs.groups.values())


def test_a_translation_through_a_guest_page_goes_with_a_partition_scoped_invalidation():
    """An entry keyed by effective address remembers the guest real page it went through:
    the hypervisor's tlbie of that page removes it (and a later use of a copy left in a
    group the tlbiel missed is stale); the guest's own tlbiel matches the address only."""
    tlbs = Tlbs(Topology.power9_smt4(cores=2))
    ea = 0xC000_0000_0001_0000
    for cpu in (0, 4):
        tlbs.fill(cpu, 5, leaf(2 * M2, 0x7000_0000, shift=21), ea=ea, gra=2 * M2 + K64)
    assert tlbs.lookup(0, 5, ea + 8).ra == 0x7000_0000 + K64
    assert tlbs.tlbie(5, gpa=2 * M2) == 0  # another guest page: nothing derived from it
    assert tlbs.tlbiel(0, 5, gpa=2 * M2 + K64) == 1  # partition-scoped, group 0 only
    assert tlbs.lookup(4, 5, ea).ra == 0x7000_0000 + K64
    assert tlbs.stale_uses and tlbs.stale_uses[-1].cpu == 4
    tlbs.fill(0, 5, leaf(2 * M2, 0x7000_0000, shift=21), ea=ea, gra=2 * M2 + K64)
    assert tlbs.tlbiel(0, 5, gpa=2 * M2 + K64, prs=True) == 0  # by address: not the EA
    assert tlbs.tlbiel(0, 5, gpa=ea, prs=True) == 1


def test_smt8_tlbiel_reaches_only_the_interleaved_siblings():
    tlbs = Tlbs(Topology.power9_smt8(cores=1))
    tlbs.fill(0, 1, leaf(0, 0x10000))
    tlbs.fill(1, 1, leaf(0, 0x10000))
    assert tlbs.tlbiel(6, 1, gpa=0) == 1  # 6 shares 0's TLB, not 1's
    assert tlbs.lookup(0, 1, 0) is None and tlbs.lookup(1, 1, 0) is not None


def test_ric_and_is_scopes():
    tlbs = Tlbs(Topology.power9_smt4(cores=1))
    for lpid in (1, 2):
        tlbs.fill(0, lpid, leaf(0, 0x10000))
        tlbs.fill(0, lpid, leaf(M2, 2 * M2, 21))
    assert tlbs.tlbiel(0, 1, ric=RIC_PWC, is_=IS_LPID) == 0  # no PWC modelled
    assert tlbs.tlbiel(0, 1, ric=RIC_TLB, gpa=M2, shift=16) == 0  # IS=0 matches the size
    assert tlbs.tlbiel(0, 1, ric=RIC_ALL, is_=IS_LPID) == 2
    assert tlbs.lookup(0, 2, 0) is not None
    assert tlbs.tlbiel(0, 0, is_=IS_ALL) == 2
    assert len(tlbs.tlb(0)) == 0
    for ric, is_ in ((3, IS_LPID), (RIC_TLB, 1), (RIC_PWC, IS_VA), (RIC_ALL, IS_VA), (0, 4)):
        with pytest.raises(ValueError):
            tlbs.tlbie(1, ric=ric, is_=is_)


def test_flush_guest_tlb_takes_one_lpid_from_one_group():
    tlbs = Tlbs(Topology.power9_smt4(cores=2))
    for cpu, lpid in ((0, 1), (0, 2), (4, 1)):
        tlbs.fill(cpu, lpid, leaf(0, 0x10000))
    assert tlbs.flush_guest_tlb(3, 1) == 1
    assert tlbs.lookup(0, 1, 0) is None
    assert tlbs.lookup(0, 2, 0) is not None and tlbs.lookup(4, 1, 0) is not None
    assert tlbs.stale_uses == []  # housekeeping makes nothing stale elsewhere


def test_multi_hit_is_recorded():
    tlbs = Tlbs(Topology.power9_smt4(cores=1))
    tlbs.fill(0, 1, leaf(0, 0, 21))
    tlbs.fill(0, 1, leaf(K64, 0x70000, 16))
    hit = tlbs.lookup(1, 1, K64 + 4)
    assert hit.shift == 16 and [e.shift for e in tlbs.multi_hits[0][1]] == [16, 21]


def test_seed_002_stale_entry_survives_a_tlbiel_in_another_group():
    """An L2 vCPU touches a page on pCPU 0, its L1 changes the mapping, the vCPU moves to
    pCPU 1 (another TLB group on an SMT8 core) and does a local tlbiel there. Back in
    pCPU 0's group it still translates through the old entry, until that group is flushed
    (kvmppc_check_need_tlb_flush -> flush_guest_tlb)."""
    lpid, gpa = 7, 3 * M2 + 2 * K64
    tree, _ = new_tree()
    tree.insert(gpa, make_pte(0xA0000, RW), 16)
    tlbs = Tlbs(Topology.power9_smt8(cores=1))
    walker = lambda a: own_walk(tree, a)  # noqa: E731
    assert tlbs.translate(0, lpid, gpa, walker).ra == 0xA0000

    removed = tree.unmap(gpa, gpa + 1)  # the mapping changes ...
    tree.insert(gpa, make_pte(0xB0000, RW), 16)
    assert tlbs.tlbiel(1, lpid, gpa=removed[0].gpa, shift=removed[0].shift) == 0  # ... {1,3,5,7}

    stale = tlbs.translate(2, lpid, gpa, walker)  # pCPU 2 shares pCPU 0's TLB
    assert stale.ra == 0xA0000 and own_walk(tree, gpa).ra == 0xB0000
    assert [(u.cpu, u.entry) for u in tlbs.stale_uses] == [(2, stale)]
    assert tlbs.stale_entries() == [(0, stale)]

    tlbs.flush_guest_tlb(0, lpid)
    assert tlbs.translate(0, lpid, gpa, walker).ra == 0xB0000
    assert len(tlbs.stale_uses) == 1 and tlbs.stale_entries() == []


def test_entries_filled_after_an_invalidation_are_not_stale():
    tlbs = Tlbs(Topology.power9_smt4(cores=2))
    tlbs.tlbiel(4, 1, is_=IS_LPID)
    tlbs.fill(0, 1, leaf(0, 0x10000))
    assert tlbs.lookup(0, 1, 0) is not None and tlbs.stale_uses == []
    tlbs.tlbiel(4, 0, is_=IS_ALL)
    assert tlbs.lookup(0, 1, 0) is not None and len(tlbs.stale_uses) == 1


# --- properties ---------------------------------------------------------------------------

SHIFTS = st.sampled_from([16, 21, 30])


def slot(gig: int, mid: int, small: int, shift: int) -> int:
    gpa = gig * G1 + (mid * M2 if shift < 30 else 0) + (small * K64 if shift == 16 else 0)
    return gpa


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("insert"),
            st.integers(0, 2),
            st.integers(0, 3),
            st.integers(0, 3),
            SHIFTS,
            st.integers(1, 50),
            st.booleans(),
        ),
        st.tuples(st.just("unmap"), st.integers(0, 3 * G1), st.integers(1, G1 + M2)),
    ),
    max_size=40,
)


def _take_overlapping(model: dict, start: int, end: int) -> list:
    """Remove and return (sorted) the model's leaves overlapping [start, end)."""
    taken = sorted((g, p, s) for g, (p, s) in model.items() if g < end and start < g + (1 << s))
    for g, _, _ in taken:
        del model[g]
    return taken


@settings(max_examples=150, deadline=None)
@given(ops)
def test_walk_agrees_with_a_dict_model(seq):
    """After any inserts and unmaps: walk, find and leaves() agree with a model where a new
    leaf displaces every leaf it overlaps (ORing into an identical slot), and the removed
    leaves each operation reports are the ones the model drops."""
    tree, pool = new_tree()
    model: dict[int, tuple[int, int]] = {}  # gpa -> (pte, shift)
    for op in seq:
        if op[0] == "insert":
            _, gig, mid, small, shift, frame, write = op
            gpa, size = slot(gig, mid, small, shift), 1 << shift
            pte = make_pte(frame << shift, RW if write else RO)
            hit = model.get(gpa)
            if hit is not None and hit[1] == shift:
                expect_removed = []
                model[gpa] = (hit[0] | pte, shift)
            else:
                expect_removed = _take_overlapping(model, gpa, gpa + size)
                model[gpa] = (pte, shift)
            got = tree.insert(gpa, pte, shift)
        else:
            _, start, length = op
            expect_removed = _take_overlapping(model, start, start + length)
            got = tree.unmap(start, start + length)
        assert sorted((lf.gpa, lf.pte, lf.shift) for lf in got) == expect_removed
    assert [(lf.gpa, lf.pte, lf.shift) for lf in tree.leaves()] == sorted(
        (g, p, s) for g, (p, s) in model.items()
    )
    probes = {slot(g, m, k, 16) for g in range(3) for m in range(4) for k in range(4)}
    probes |= {g + d for g, (_, s) in model.items() for d in (-1, (1 << s) - 1, 1 << s)}
    for probe in sorted(p for p in probes if p >= 0):
        want = next(((g, p, s) for g, (p, s) in model.items() if g <= probe < g + (1 << s)), None)
        got = own_walk(tree, probe)
        if want is None:
            assert got == WalkFault(ENOENT) and tree.find(probe) is None
        else:
            assert (got.gpa, got.pte, got.shift) == want and tree.find(probe) == got
    tree.destroy()
    assert live(pool) == [] and tree.mem.pages == {}


tlb_ops = st.lists(
    st.tuples(
        st.sampled_from(["fill", "tlbiel", "tlbie", "flush", "lookup"]),
        st.integers(0, 15),  # cpu
        st.integers(1, 2),  # lpid
        st.integers(0, 3),  # page
        st.sampled_from([IS_VA, IS_LPID, IS_ALL]),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(tlb_ops)
def test_tlbs_agree_with_a_naive_model(seq):
    """Per-group entry sets against a list scanned in full; stale-use records against the
    definition: used after an invalidation covering it, filled before that invalidation."""
    topo = Topology.power9_smt8(cores=2)
    tlbs = Tlbs(topo)
    naive: dict[int, dict[tuple[int, int], int]] = {g: {} for g in topo.groups()}  # -> fill time
    invals: list[tuple[int, int, int | None, int]] = []  # (time, lpid|-1, page|None, is)
    now = stale = 0
    for op, cpu, lpid, page, is_ in seq:
        now += 1
        group = naive[topo.group_of(cpu)]
        if op == "fill":
            tlbs.fill(cpu, lpid, leaf(page * K64, (page + 1) * K64))
            group[(lpid, page)] = now
        elif op == "lookup":
            entry = tlbs.lookup(cpu, lpid, page * K64)
            filled = group.get((lpid, page))
            assert (entry is None) == (filled is None)
            if filled is not None and any(
                t > filled and (i == IS_ALL or (lp == lpid and (i == IS_LPID or pg == page)))
                for t, lp, pg, i in invals
            ):
                stale += 1
        elif op == "flush":
            tlbs.flush_guest_tlb(cpu, lpid)
            for key in [k for k in group if k[0] == lpid]:
                del group[key]
        else:
            targets = [group] if op == "tlbiel" else list(naive.values())
            if op == "tlbiel":
                tlbs.tlbiel(cpu, lpid, is_=is_, gpa=page * K64)
            else:
                tlbs.tlbie(lpid, is_=is_, gpa=page * K64)
            invals.append((now, lpid, page, is_))
            for g in targets:
                for key in [
                    k
                    for k in g
                    if is_ == IS_ALL or (k[0] == lpid and (is_ == IS_LPID or k[1] == page))
                ]:
                    del g[key]
        assert {g: len(t) for g, t in tlbs.groups.items()} == {g: len(t) for g, t in naive.items()}
    assert len(tlbs.stale_uses) == stale
