"""emu.pkvm.pgtable, emu.pkvm.memory and the arm64 hardware under them (emu.hw.arm64_stage2,
emu.hw.arm64_tlb), driven sequentially: maps, annotations, unmaps and their return codes,
refcounts at every scheduling point, break-before-make against a CPU's TLB, and the two
substrate quirks (pgd-refcount, set-owner-no-tlbi)."""

from __future__ import annotations

import functools
import random

import pytest

import emu
from emu.hw import arm64_stage2 as hw
from emu.hw.arm64_tlb import Arm64Tlbs, translate, translate_el2, translate_stepwise
from emu.pkvm import memory as M
from emu.pkvm import pgtable as P
from emu.sim.scenario import Scenario
from emu.sim.sequential import Finding, Sequential

POOL_PFN = 0x1000
"""Table pages come from a pool far above the identity-mapped memory the tests use."""
SZ_2M = 2 << 20
SZ_1G = 1 << 30


class CheckingCtx(Sequential):
    """A sequential ctx that checks every table's refcounts at every scheduling point (where
    a schedule could switch to another actor and run the invariants)."""

    def __init__(self, quirks: tuple[str, ...] = ()) -> None:
        super().__init__(quirks=quirks)
        self.pgts: list[P.KvmPgtable] = []
        self.points = 0

    def point(self, op: str):
        self.points += 1
        for pgt in self.pgts:
            bad = P.table_refcounts_ok(pgt)
            assert bad is None, f"before {op}: {bad}"
        return super().point(op)


def host_stage2(ctx: Sequential, *, pool_pages: int = 64, layout: str = "9:2", ia_bits: int = 40,
                force_pte_cb=None, ncpus: int = 2) -> tuple[P.KvmPgtable, M.HypPool]:
    """The host stage-2 as kvm_host_prepare_stage2 builds it (identity map, no FWB)."""
    mem = hw.TableMemory()
    vmemmap = M.HypVmemmap(POOL_PFN + pool_pages)
    pool = M.HypPool(vmemmap, mem)
    assert M.hyp_pool_init(pool, POOL_PFN, pool_pages, 0) == 0
    pgt = P.KvmPgtable(mem, Arm64Tlbs(ncpus), ctx, vmid=0, annotation_layout=layout)
    ret = P.__kvm_pgtable_stage2_init(
        pgt, P.host_s2_mm_ops(pool, ctx), ia_bits,
        flags=P.KVM_PGTABLE_S2_IDMAP | P.KVM_PGTABLE_S2_NOFWB, force_pte_cb=force_pte_cb)
    assert ret == 0
    if isinstance(ctx, CheckingCtx):
        ctx.pgts.append(pgt)
    return pgt, pool


def host_force_pte_cb(addr: int, end: int, prot: int) -> bool:
    """host_stage2_force_pte_cb with all of the test's low memory being memory."""
    return prot != P.PKVM_HOST_MEM_PROT


def leaf(pgt: P.KvmPgtable, addr: int) -> tuple[int, int]:
    ret, pte, level = P.kvm_pgtable_get_leaf(pgt, addr)
    assert ret == 0
    return pte, level


def idmap(ctx, pgt, pool, addr, size, prot=P.PKVM_HOST_MEM_PROT) -> int:
    return ctx.call(P.kvm_pgtable_stage2_map(pgt, addr, size, addr, prot, pool))


# --- hardware ---------------------------------------------------------------------------

def test_geometry_and_concatenated_pgds():
    assert [hw.granule_size(level) for level in range(4)] == [1 << 39, SZ_1G, SZ_2M, 4096]
    assert hw.start_level_for(40) == 1 and hw.pgd_pages(40, 1) == 2
    assert hw.start_level_for(32) == 2 and hw.pgd_pages(32, 2) == 4
    assert hw.start_level_for(48) == 0 and hw.pgd_pages(48, 0) == 1
    assert hw.bitfield("9:2") == (2, 0xFF) and hw.bitfield("63:56") == (56, 0xFF)
    with pytest.raises(ValueError):
        hw.bitfield("2:9")


def test_the_walk_follows_tables_to_a_leaf_or_a_fault():
    mem = hw.TableMemory()
    pgd, l2, l3 = 10, 11, 12  # ia_bits 40, start level 1, PGD pages 10 and 11
    mem.write(pgd, 0, hw.make_table_desc(l3 + 1))
    mem.write(l3 + 1, 1, hw.make_table_desc(l3))
    mem.write(l3, 5, hw.make_leaf_desc(0x777000, hw.AF | hw.S2AP_R, 3))
    mem.write(l3 + 1, 2, hw.make_leaf_desc(0x40000000, hw.AF, 2))
    addr = (1 << 21) + (5 << 12) + 0x34
    desc, level = hw.walk(mem, pgd, 1, 40, addr)
    assert level == 3 and hw.output_address(desc, level, addr) == 0x777034
    desc, level = hw.walk(mem, pgd, 1, 40, (2 << 21) + 0x1234)
    assert level == 2 and hw.output_address(desc, level, (2 << 21) + 0x1234) == 0x40001234
    mem.write(l3, 6, 0x4)  # an invalid entry: its other bits mean nothing to the MMU
    assert hw.walk(mem, pgd, 1, 40, (1 << 21) + (6 << 12)) == (0x4, 3)
    # the second concatenated PGD page serves the upper half of the input space
    assert hw.walk(mem, pgd, 1, 40, 1 << 39) == (0, 1)
    mem.write(l2, 0, hw.make_leaf_desc(SZ_1G, hw.AF, 1))
    assert hw.walk(mem, pgd, 1, 40, 1 << 39)[1] == 1
    assert hw.walk(mem, pgd, 1, 40, 1 << 40) == (0, hw.ADDRESS_SIZE_FAULT)


def test_walk_stepwise_takes_a_point_before_each_read_and_agrees_with_walk():
    ctx = Sequential()
    pgt, pool = host_stage2(ctx)
    idmap(ctx, pgt, pool, 0x5000, 0x1000)
    ops: list[str] = []

    async def point(op: str) -> None:
        ops.append(op)

    got = ctx.call(hw.walk_stepwise(pgt.mem, pgt.pgd, pgt.start_level, pgt.ia_bits, 0x5000,
                                    point))
    assert got == hw.walk(pgt.mem, pgt.pgd, pgt.start_level, pgt.ia_bits, 0x5000)
    assert len(ops) == 3  # levels 1, 2, 3
    regime = (pgt.pgd, pgt.start_level, pgt.ia_bits)
    assert ctx.call(translate_stepwise(pgt.tlbs, pgt.mem, 1, 0, *regime, 0x5000, point)) \
        == (*got, False)
    assert len(ops) == 6 and pgt.tlbs.lookup_s2(1, 0, 0x5000) == got  # filled
    assert ctx.call(translate_stepwise(pgt.tlbs, pgt.mem, 1, 0, *regime, 0x5000, point)) \
        == (*got, True)
    assert len(ops) == 6  # a hit walks nothing


def test_tlbs_are_per_cpu_tagged_by_vmid_and_invalidated_by_broadcast():
    tlbs = Arm64Tlbs(3)
    page = hw.make_leaf_desc(0x5000, hw.AF, 3)
    block = hw.make_leaf_desc(0x200000, hw.AF, 2)
    tlbs.fill_s2(0, 0, 0x5000, page, 3)
    tlbs.fill_s2(1, 0, 0x5000, page, 3)
    tlbs.fill_s2(1, 7, 0x200000, block, 2)
    tlbs.fill_s2(2, 7, 0x200000, block, 2)
    assert tlbs.lookup_s2(2, 0, 0x5000) is None  # per CPU
    assert tlbs.lookup_s2(1, 7, 0x3FF000) == (block, 2)  # a block covers its range
    assert tlbs.lookup_s2(0, 7, 0x5000) is None  # per VMID
    v = tlbs.version
    tlbs.tlbi_ipas2e1is(7, 0x201000)  # any address the block covers removes it everywhere
    assert tlbs.s2_entries(7, 0x200000) == [] and tlbs.version > v
    assert [c for c, _, _ in tlbs.s2_entries(0, 0x5000)] == [0, 1]
    tlbs.fill_s2(2, 7, 0x200000, block, 2)
    tlbs.tlbi_vmalls12e1is(0)
    assert tlbs.s2_entries(0, 0x5000) == [] and tlbs.s2_entries(7, 0x200000) != []
    tlbs.fill_el2(1, 0x9000, page, 3)
    assert tlbs.lookup_el2(1, 0x9000) == (page, 3) and tlbs.lookup_s2(1, 0, 0x9000) is None
    tlbs.tlbi_vae2is(0x9000)
    assert tlbs.lookup_el2(1, 0x9000) is None


# --- memory.py ---------------------------------------------------------------------------

def test_page_states_and_the_complemented_hyp_state():
    vm = M.HypVmemmap(16)
    # zeroed vmemmap: the host owns everything, the hyp has nothing
    assert vm.get_host_state(0x3000) == M.PKVM_PAGE_OWNED
    assert vm.get_hyp_state(0x3000) == M.PKVM_NOPAGE
    vm.set_hyp_state(0x3000, M.PKVM_PAGE_SHARED_BORROWED)
    assert vm.hyp_state_comp[3] == 0b01 and vm.get_hyp_state(0x3000) == 2
    assert [M.PKVM_PAGE_STATE_NAMES[s] for s in range(4)] == [
        "OWNED", "SHARED_OWNED", "SHARED_BORROWED", "NOPAGE"]
    prot = M.pkvm_mkstate(P.PAGE_HYP | P.KVM_PGTABLE_PROT_SW1, M.PKVM_PAGE_SHARED_OWNED)
    assert prot == P.PAGE_HYP | P.KVM_PGTABLE_PROT_SW0
    assert M.pkvm_getstate(prot) == M.PKVM_PAGE_SHARED_OWNED
    with pytest.raises(Finding, match="already 0"):
        vm.hyp_page_ref_dec(5)


def test_buddy_allocator_splits_coalesces_and_zeroes():
    mem = hw.TableMemory()
    vm = M.HypVmemmap(64)
    pool = M.HypPool(vm, mem)
    M.hyp_pool_init(pool, 32, 8, 0)
    assert pool.max_order == 4 and pool.free_area[3] == [32] and pool.free_pages() == 8
    a = M.hyp_alloc_pages(pool, 0)
    b = M.hyp_alloc_pages(pool, 1)
    assert (a, b) == (32, 34) and vm.refcount[32] == 1 and vm.refcount[34] == 1
    assert vm.refcount[35] == 0 and vm.order[35] == M.HYP_NO_ORDER  # an unsplit tail
    M.hyp_split_page(pool, b)
    assert vm.refcount[35] == 1 and vm.order[35] == 0
    mem.write(a, 3, 0xABC)
    M.hyp_get_page(pool, a)
    M.hyp_put_page(pool, a)
    assert mem.read(a, 3) == 0xABC  # still referenced
    M.hyp_put_page(pool, a)
    assert mem.read(a, 3) == 0  # freed pages are zeroed
    for p in (b, b + 1):
        M.hyp_put_page(pool, p)
    assert pool.free_area[3] == [32] and pool.free_pages() == 8  # all coalesced again
    assert M.hyp_alloc_pages(pool, 3) == 32 and M.hyp_alloc_pages(pool, 0) is None


# --- stage-2 ----------------------------------------------------------------------------

def test_map_get_leaf_unmap_round_trip_and_tables_are_freed():
    ctx = CheckingCtx()
    pgt, pool = host_stage2(ctx, force_pte_cb=host_force_pte_cb)
    free0 = pool.free_pages()
    assert idmap(ctx, pgt, pool, 0x7000, 0x3000) == 0
    for addr in (0x7000, 0x8000, 0x9000):
        pte, level = leaf(pgt, addr + 0x10)
        assert level == 3 and P.kvm_pte_to_phys(pte) == addr
        assert P.kvm_pgtable_stage2_pte_prot(pte) == P.PKVM_HOST_MEM_PROT
    assert leaf(pgt, 0xA000) == (0, 3)
    assert pool.free_pages() == free0 - 2  # a level-2 and a level-3 table
    # mapping it again changes nothing (the walker's -EAGAIN is not a fault handler's)
    assert idmap(ctx, pgt, pool, 0x7000, 0x1000) == 0
    assert ctx.call(P.kvm_pgtable_stage2_unmap(pgt, 0x7000, 0x3000)) == 0
    assert leaf(pgt, 0x7000) == (0, 1) and P.kvm_pgtable_leaves(pgt) == []
    assert pool.free_pages() == free0 and ctx.points > 0


def test_block_or_page_is_chosen_by_size_alignment_and_force_pte_cb():
    ctx = CheckingCtx()
    pgt, pool = host_stage2(ctx, force_pte_cb=host_force_pte_cb)
    assert idmap(ctx, pgt, pool, SZ_2M, SZ_2M) == 0
    assert leaf(pgt, SZ_2M + 0x5000)[1] == 2
    assert idmap(ctx, pgt, pool, SZ_1G, SZ_1G) == 0
    assert leaf(pgt, SZ_1G + SZ_2M)[1] == 1
    assert idmap(ctx, pgt, pool, 3 * SZ_2M + 0x1000, SZ_2M) == 0  # misaligned: pages
    assert leaf(pgt, 3 * SZ_2M + 0x1000)[1] == 3 and leaf(pgt, 4 * SZ_2M)[1] == 3
    # a prot other than the default forces pages (host_stage2_force_pte_cb)
    assert idmap(ctx, pgt, pool, 6 * SZ_2M, SZ_2M, P.PKVM_HOST_MMIO_PROT) == 0
    assert leaf(pgt, 6 * SZ_2M)[1] == 3
    # a block mapping over a table of pages replaces it (TABLE_PRE) and frees the subtree
    free = pool.free_pages()
    assert idmap(ctx, pgt, pool, 6 * SZ_2M, SZ_2M) == 0
    assert leaf(pgt, 6 * SZ_2M)[1] == 2 and pool.free_pages() == free + 1


def test_set_owner_forces_pages_splits_a_block_and_unmap_clears_annotations():
    ctx = CheckingCtx()
    pgt, pool = host_stage2(ctx, force_pte_cb=host_force_pte_cb)
    assert idmap(ctx, pgt, pool, SZ_2M, SZ_2M) == 0
    assert ctx.call(P.kvm_pgtable_stage2_set_owner(pgt, SZ_2M + 0x3000, 0x2000, pool, 1)) == 0
    assert leaf(pgt, SZ_2M + 0x3000) == (1 << 2, 3)
    assert leaf(pgt, SZ_2M + 0x4000) == (1 << 2, 3)
    # the rest of the block went with it, to be refaulted lazily
    assert leaf(pgt, SZ_2M) == (0, 3)
    assert P.kvm_invalid_pte_owner(pgt, leaf(pgt, SZ_2M + 0x3000)[0]) == 1
    # owner 0 (the host) empties the entries
    assert ctx.call(P.kvm_pgtable_stage2_set_owner(pgt, SZ_2M + 0x3000, 0x1000, pool, 0)) == 0
    assert leaf(pgt, SZ_2M + 0x3000) == (0, 3)
    # a table holding an annotation is not freed by an unmap around it, the unmap of it is
    assert ctx.call(P.kvm_pgtable_stage2_unmap(pgt, SZ_2M + 0x5000, 0x1000)) == 0
    assert leaf(pgt, SZ_2M + 0x4000) == (1 << 2, 3)
    assert ctx.call(P.kvm_pgtable_stage2_unmap(pgt, SZ_2M, SZ_2M)) == 0
    assert P.kvm_pgtable_leaves(pgt) == [] and pool.free_pages() == 62


@pytest.mark.parametrize("layout, annotation", [("9:2", 1 << 2), ("63:56", 1 << 56)])
def test_annotation_layouts(layout, annotation):
    ctx = CheckingCtx()
    pgt, pool = host_stage2(ctx, layout=layout)
    assert idmap(ctx, pgt, pool, 0x4000, 0x1000) == 0
    assert ctx.call(P.kvm_pgtable_stage2_set_owner(pgt, 0x4000, 0x2000, pool, 1)) == 0
    assert leaf(pgt, 0x4000) == (annotation, 3) and leaf(pgt, 0x5000) == (annotation, 3)
    assert P.kvm_invalid_pte_owner(pgt, annotation) == 1
    assert not hw.desc_valid(hw.walk(pgt.mem, pgt.pgd, 1, 40, 0x4000)[0])
    # annotating again (same owner) and back to the host keep the refcounts exact
    assert ctx.call(P.kvm_pgtable_stage2_set_owner(pgt, 0x4000, 0x1000, pool, 1)) == 0
    assert ctx.call(P.kvm_pgtable_stage2_set_owner(pgt, 0x4000, 0x2000, pool, 0)) == 0
    assert leaf(pgt, 0x4000) == (0, 3) and leaf(pgt, 0x5000) == (0, 3)
    assert P.table_refcounts_ok(pgt) is None
    with pytest.raises(ValueError):
        P.KvmPgtable(pgt.mem, pgt.tlbs, ctx, annotation_layout="55:48")


@pytest.mark.parametrize("owner", [P.KVM_MAX_OWNER_ID + 1, -1])
def test_an_owner_id_out_of_bounds_is_einval_and_changes_nothing(owner):
    ctx = CheckingCtx()
    pgt, pool = host_stage2(ctx)
    version = pgt.mem.version
    assert ctx.call(P.kvm_pgtable_stage2_set_owner(pgt, 0x4000, 0x1000, pool, owner)) \
        == -P.EINVAL
    assert pgt.mem.version == version


def test_return_codes_of_map_and_get_leaf():
    ctx = Sequential()
    pgt, pool = host_stage2(ctx, pool_pages=2)  # exactly the two PGD pages
    assert idmap(ctx, pgt, pool, 0x4000, 0x1000) == -P.ENOMEM  # no page for a table
    assert ctx.call(P.kvm_pgtable_stage2_map(pgt, SZ_2M, 0x1000, SZ_2M,
                                             P.PKVM_HOST_MEM_PROT, None)) == -P.ENOMEM
    assert P.kvm_pgtable_get_leaf(pgt, 1 << 40) == (-P.ERANGE, 0, 0)
    assert ctx.call(P.kvm_pgtable_stage2_unmap(pgt, 1 << 40, 0x1000)) == -P.ERANGE
    assert idmap(ctx, pgt, pool, 0x4000, 0x1000,
                 P.KVM_PGTABLE_PROT_X | P.KVM_PGTABLE_PROT_PXN) == -P.EINVAL
    with pytest.raises(Finding, match="WARN_ON"):  # an identity map to elsewhere
        ctx.call(P.kvm_pgtable_stage2_map(pgt, 0, 0x1000, 0x1000, P.PKVM_HOST_MEM_PROT, pool))


def test_refcounts_hold_at_every_point_of_a_random_mix():
    ctx = CheckingCtx()
    pgt, pool = host_stage2(ctx, pool_pages=128, force_pte_cb=host_force_pte_cb)
    rng = random.Random(9)
    for i in range(300):
        addr = rng.randrange(0, 4 * SZ_2M, 0x1000)
        size = rng.choice((0x1000, 0x3000, SZ_2M))
        addr = addr & ~(SZ_2M - 1) if size == SZ_2M else addr
        op = rng.randrange(4)
        if op == 0:
            ret = idmap(ctx, pgt, pool, addr, size)
        elif op == 1:  # pages (force_pte_cb), so a small range: every store is checked
            ret = idmap(ctx, pgt, pool, addr, min(size, 0x3000), P.PKVM_HOST_MMIO_PROT)
        elif op == 2:
            ret = ctx.call(P.kvm_pgtable_stage2_set_owner(pgt, addr, size, pool,
                                                          rng.randrange(2)))
        else:
            ret = ctx.call(P.kvm_pgtable_stage2_unmap(pgt, addr, size))
        assert ret == 0
        assert P.table_refcounts_ok(pgt) is None
        # the MMU's walk and kvm_pgtable_get_leaf agree on every page (on the pages
        # around this operation, and every 50 operations everywhere)
        pages = range(0, 4 * SZ_2M, 0x1000) if i % 50 == 49 else \
            range(max(0, addr - 0x1000), addr + size + 0x1000, 0x1000)
        for page in pages:
            assert hw.walk(pgt.mem, pgt.pgd, pgt.start_level, pgt.ia_bits, page) == \
                leaf(pgt, page)
    assert ctx.points > 1000


def test_the_refcount_check_fires_on_a_wrong_count_and_a_table_linked_twice():
    ctx = Sequential()
    pgt, pool = host_stage2(ctx)
    idmap(ctx, pgt, pool, 0x4000, 0x1000)
    l3 = P.kvm_pte_to_pfn(pgt.mem.read(P.kvm_pte_to_pfn(pgt.mem.read(pgt.pgd, 0)), 0))
    pool.vmemmap.hyp_page_ref_inc(l3)
    assert "refcount 3, but 1 + 1" in P.table_refcounts_ok(pgt)
    pool.vmemmap.hyp_page_ref_dec(l3)
    assert P.table_refcounts_ok(pgt) is None
    l2 = P.kvm_pte_to_pfn(pgt.mem.read(pgt.pgd, 0))
    pgt.mem.write(l2, 1, hw.make_table_desc(l3))
    pool.vmemmap.hyp_page_ref_inc(l2)
    assert "linked twice" in P.table_refcounts_ok(pgt)


def test_pgd_refcount_quirk_leaves_tail_pages_unreferenced_and_frees_one_in_use():
    """B11: before 1d58a17ef545 the concatenated PGD was one allocation, never split."""
    ok, _ = host_stage2(Sequential(quirks=("pgd-refcount",)), ia_bits=32)
    assert ok.pgd_pages() == 4
    ctx = Sequential(quirks=("pgd-refcount",))
    pgt, pool = host_stage2(ctx, ia_bits=32)  # start level 2: four PGD pages, 1 GiB each
    assert "refcount 0, but 1 + 0" in P.table_refcounts_ok(pgt)
    tail = pgt.pgd + 1
    assert pool.vmemmap.refcount[tail] == 0
    assert idmap(ctx, pgt, pool, SZ_1G, SZ_2M) == 0  # a block in the tail page: get
    assert pool.vmemmap.refcount[tail] == 1
    assert ctx.call(P.kvm_pgtable_stage2_unmap(pgt, SZ_1G, SZ_2M)) == 0  # put: freed
    assert tail in pool.free_area[0]
    # the allocator hands the live PGD page out as a new table
    hits = [M.hyp_alloc_pages(pool, 0) for _ in range(pool.free_pages())]
    assert tail in hits
    # without the quirk every PGD page holds its own reference
    fixed, fixed_pool = host_stage2(Sequential(), ia_bits=32)
    assert [fixed_pool.vmemmap.refcount[fixed.pgd + i] for i in range(4)] == [1, 1, 1, 1]
    assert P.table_refcounts_ok(fixed) is None


@pytest.mark.parametrize("quirks, stale", [((), False), (("set-owner-no-tlbi",), True)])
def test_annotating_a_mapped_page_invalidates_every_cpu_tlb(quirks, stale):
    ctx = CheckingCtx(quirks)
    pgt, pool = host_stage2(ctx, ncpus=3)
    assert idmap(ctx, pgt, pool, 0x4000, 0x1000) == 0
    for cpu in (0, 2):  # two CPUs' walks fill their TLBs
        desc, level, hit = translate(pgt.tlbs, pgt.mem, cpu, 0, pgt.pgd, pgt.start_level,
                                     pgt.ia_bits, 0x4000)
        assert hw.desc_valid(desc) and level == 3 and not hit
    assert translate(pgt.tlbs, pgt.mem, 0, 0, pgt.pgd, 1, 40, 0x4000)[2]  # now a hit
    assert ctx.call(P.kvm_pgtable_stage2_set_owner(pgt, 0x4000, 0x1000, pool, 1)) == 0
    assert leaf(pgt, 0x4000) == (1 << 2, 3)
    cached = pgt.tlbs.s2_entries(0, 0x4000)
    if stale:  # the old translation survives in both CPUs' TLBs: the host can still reach it
        assert [cpu for cpu, _, _ in cached] == [0, 2]
        desc, _, hit = translate(pgt.tlbs, pgt.mem, 2, 0, pgt.pgd, 1, 40, 0x4000)
        assert hit and hw.output_address(desc, 3, 0x4000) == 0x4000
    else:
        assert cached == []
        desc, level, hit = translate(pgt.tlbs, pgt.mem, 2, 0, pgt.pgd, 1, 40, 0x4000)
        assert (desc, level, hit) == (1 << 2, 3, False)  # a fault, on the annotation


def test_break_before_make_stores_locked_then_invalidates_then_makes():
    """The order other CPUs observe: the LOCKED store, the TLBI, then the new entry."""
    seen: list[tuple[str, int, bool]] = []
    watched: list[int] = []  # the level-3 table, once there is one

    class Watching(Sequential):
        def point(self, op):
            if watched:
                seen.append((op, pgt.mem.read(watched[0], 4),
                             bool(pgt.tlbs.s2_entries(0, 0x4000))))
            return super().point(op)

    ctx = Watching()
    pgt, pool = host_stage2(ctx)
    idmap(ctx, pgt, pool, 0x4000, 0x1000)
    l3 = P.kvm_pte_to_pfn(pgt.mem.read(P.kvm_pte_to_pfn(pgt.mem.read(pgt.pgd, 0)), 0))
    watched.append(l3)
    translate(pgt.tlbs, pgt.mem, 1, 0, pgt.pgd, 1, 40, 0x4000)
    old = pgt.mem.read(l3, 4)
    ctx.call(P.kvm_pgtable_stage2_set_owner(pgt, 0x4000, 0x1000, pool, 1))
    assert seen == [("stage-2 pte store", old, True),
                    ("tlbi ipas2e1is", P.KVM_INVALID_PTE_LOCKED, True),
                    ("stage-2 pte store", P.KVM_INVALID_PTE_LOCKED, False)]


def test_splitting_a_block_invalidates_the_block():
    ctx = CheckingCtx()
    pgt, pool = host_stage2(ctx)
    idmap(ctx, pgt, pool, SZ_2M, SZ_2M)
    translate(pgt.tlbs, pgt.mem, 0, 0, pgt.pgd, 1, 40, SZ_2M + 0x9000)
    assert pgt.tlbs.lookup_s2(0, 0, SZ_2M + 0x1000) is not None  # the block covers it
    ctx.call(P.kvm_pgtable_stage2_set_owner(pgt, SZ_2M + 0x1000, 0x1000, pool, 1))
    assert pgt.tlbs.lookup_s2(0, 0, SZ_2M + 0x9000) is None


# --- guest stage-2 helpers ------------------------------------------------------------------

def test_guest_attribute_helpers():
    ctx = CheckingCtx()
    pgt, pool = host_stage2(ctx)
    pgt.flags = 0  # a guest's stage-2: not an identity map
    pgt.vmid = 3
    prot = M.pkvm_mkstate(P.KVM_PGTABLE_PROT_R, M.PKVM_PAGE_SHARED_BORROWED)
    assert ctx.call(P.kvm_pgtable_stage2_map(pgt, 0x10000, 0x1000, 0x7000, prot, pool)) == 0
    pte, _ = leaf(pgt, 0x10000)
    assert M.pkvm_getstate(P.kvm_pgtable_stage2_pte_prot(pte)) == M.PKVM_PAGE_SHARED_BORROWED
    assert P.kvm_pgtable_stage2_pte_prot(pte) & P.KVM_PGTABLE_PROT_RWX == P.KVM_PGTABLE_PROT_R
    translate(pgt.tlbs, pgt.mem, 0, 3, pgt.pgd, 1, 40, 0x10000)
    assert ctx.call(P.kvm_pgtable_stage2_relax_perms(pgt, 0x10000, P.KVM_PGTABLE_PROT_RWX)) == 0
    pte, _ = leaf(pgt, 0x10000)
    assert P.kvm_pgtable_stage2_pte_prot(pte) & P.KVM_PGTABLE_PROT_RWX == P.KVM_PGTABLE_PROT_RWX
    assert pgt.tlbs.s2_entries(3, 0x10000) == []
    assert ctx.call(P.kvm_pgtable_stage2_relax_perms(pgt, 0x10000, P.KVM_PGTABLE_PROT_SW0)) \
        == -P.EINVAL
    assert ctx.call(P.kvm_pgtable_stage2_relax_perms(pgt, 0x11000, P.KVM_PGTABLE_PROT_R)) \
        == -P.EAGAIN  # no valid leaf: a fault handler's walk stops
    assert ctx.call(P.kvm_pgtable_stage2_wrprotect(pgt, 0x10000, 0x1000)) == 0
    assert not P.kvm_pgtable_stage2_pte_prot(leaf(pgt, 0x10000)[0]) & P.KVM_PGTABLE_PROT_W
    assert ctx.call(P.kvm_pgtable_stage2_test_clear_young(pgt, 0x10000, 0x1000, True))
    assert not ctx.call(P.kvm_pgtable_stage2_test_clear_young(pgt, 0x10000, 0x1000, False))
    old = ctx.call(P.kvm_pgtable_stage2_mkyoung(pgt, 0x10000))
    assert not old & P.KVM_PTE_LEAF_ATTR_LO_S2_AF
    assert leaf(pgt, 0x10000)[0] & P.KVM_PTE_LEAF_ATTR_LO_S2_AF
    # changing only the software bits is a plain store, no break
    shared = M.pkvm_mkstate(P.KVM_PGTABLE_PROT_R | P.KVM_PGTABLE_PROT_X,
                            M.PKVM_PAGE_SHARED_OWNED)
    points = ctx.points
    assert ctx.call(P.kvm_pgtable_stage2_map(pgt, 0x10000, 0x1000, 0x7000, shared, pool)) == 0
    assert ctx.points == points + 1
    assert M.pkvm_getstate(P.kvm_pgtable_stage2_pte_prot(leaf(pgt, 0x10000)[0])) \
        == M.PKVM_PAGE_SHARED_OWNED


# --- hyp stage-1 ---------------------------------------------------------------------------

def hyp_stage1(ctx: Sequential) -> tuple[P.KvmPgtable, M.HypPool]:
    mem = hw.TableMemory()
    vmemmap = M.HypVmemmap(POOL_PFN + 32)
    pool = M.HypPool(vmemmap, mem)
    M.hyp_pool_init(pool, POOL_PFN, 32, 0)
    pgt = P.KvmPgtable(mem, Arm64Tlbs(2), ctx)
    assert P.kvm_pgtable_hyp_init(pgt, 48, P.KvmPgtableMmOps(pool)) == 0
    if isinstance(ctx, CheckingCtx):
        ctx.pgts.append(pgt)
    return pgt, pool


def test_hyp_map_and_unmap_return_values():
    ctx = CheckingCtx()
    pgt, pool = hyp_stage1(ctx)
    free0 = pool.free_pages()
    prot = M.pkvm_mkstate(P.PAGE_HYP, M.PKVM_PAGE_SHARED_BORROWED)
    assert ctx.call(P.kvm_pgtable_hyp_map(pgt, 0x40000, 0x4000, 0x80000, prot)) == 0
    pte, level = leaf(pgt, 0x41000)
    assert level == 3 and P.kvm_pte_to_phys(pte) == 0x81000
    assert P.kvm_pgtable_hyp_pte_prot(pte) == prot
    desc, _, _ = translate_el2(pgt.tlbs, pgt.mem, 1, pgt.pgd, 0, 48, 0x41000)
    assert desc == pte and pgt.tlbs.lookup_el2(1, 0x41000) == (pte, 3)
    # the same mapping again is a no-op; a different one at a mapped VA is a WARN
    assert ctx.call(P.kvm_pgtable_hyp_map(pgt, 0x40000, 0x1000, 0x80000, prot)) == 0
    with pytest.raises(Finding, match="WARN_ON"):
        ctx.call(P.kvm_pgtable_hyp_map(pgt, 0x40000, 0x1000, 0x90000, prot))
    assert ctx.call(P.kvm_pgtable_hyp_unmap(pgt, 0x41000, 0x2000)) == 0x2000
    assert pgt.tlbs.lookup_el2(1, 0x41000) is None
    # it stops at the first invalid entry
    assert ctx.call(P.kvm_pgtable_hyp_unmap(pgt, 0x40000, 0x3000)) == 0x1000
    assert ctx.call(P.kvm_pgtable_hyp_unmap(pgt, 0x43000, 0x1000)) == 0x1000
    assert P.kvm_pgtable_leaves(pgt) == [] and pool.free_pages() == free0
    # a block beyond the range is not split: nothing unmapped
    assert ctx.call(P.kvm_pgtable_hyp_map(pgt, SZ_2M, SZ_2M, SZ_2M, P.PAGE_HYP)) == 0
    assert leaf(pgt, SZ_2M)[1] == 2
    assert ctx.call(P.kvm_pgtable_hyp_unmap(pgt, SZ_2M, 0x1000)) == 0
    assert ctx.call(P.kvm_pgtable_hyp_unmap(pgt, SZ_2M, SZ_2M)) == SZ_2M


@pytest.mark.parametrize("prot", [
    P.KVM_PGTABLE_PROT_W,  # not readable
    P.KVM_PGTABLE_PROT_RWX,  # writable and executable
    P.PAGE_HYP_DEVICE | P.KVM_PGTABLE_PROT_X,
    P.PAGE_HYP | P.KVM_PGTABLE_PROT_PXN,
])
def test_hyp_map_refuses_bad_prot(prot):
    ctx = Sequential()
    pgt, _ = hyp_stage1(ctx)
    assert ctx.call(P.kvm_pgtable_hyp_map(pgt, 0x40000, 0x1000, 0x80000, prot)) == -P.EINVAL


def test_hyp_pte_prot_round_trips_the_hyp_protections():
    for prot in (P.PAGE_HYP, P.PAGE_HYP_RO, P.PAGE_HYP_EXEC):
        ret, attr = P.hyp_set_prot_attr(prot)
        assert ret == 0
        pte = P.kvm_init_valid_leaf_pte(0x5000, attr, 3)
        assert P.kvm_pgtable_hyp_pte_prot(pte) == prot


# --- under schedules ---------------------------------------------------------------------

def _annotate_vs_access(m) -> None:
    """EL2 annotates a mapped host page (under the host lock) while a host CPU, which has
    the page in its TLB, keeps accessing it through its TLB and lockless walks."""
    pgt, pool = host_stage2(m)  # a Machine is a ctx too
    lock = m.spinlock("host_mmu.lock")
    pgt.ctx = boot = Sequential()  # the mapping exists before the actors start
    boot.call(P.kvm_pgtable_stage2_map(pgt, 0x4000, 0x1000, 0x4000, P.PKVM_HOST_MEM_PROT,
                                       pool))
    pgt.ctx = m
    regime = (pgt.pgd, pgt.start_level, pgt.ia_bits)
    translate(pgt.tlbs, pgt.mem, 1, 0, *regime, 0x4000)

    async def el2() -> None:
        await lock.lock()
        assert await P.kvm_pgtable_stage2_set_owner(pgt, 0x4000, 0x1000, pool, 1) == 0
        lock.unlock()

    async def host_cpu() -> None:
        for _ in range(3):
            await translate_stepwise(pgt.tlbs, pgt.mem, 1, 0, *regime, 0x4000, m.point)

    def no_stale_translation() -> str | None:
        _, pte, _ = P.kvm_pgtable_get_leaf(pgt, 0x4000)
        if P.kvm_invalid_pte_owner(pgt, pte) and pgt.tlbs.s2_entries(0, 0x4000):
            return "CPU 1 still translates 0x4000, which the host stage-2 gave to owner 1"
        return None

    m.spawn("el2", el2)
    m.spawn("host-cpu1", host_cpu)
    m.invariant("no stale translation", no_stale_translation,
                key=lambda: (pgt.mem.version, pgt.tlbs.version))
    m.invariant("table refcounts", lambda: P.table_refcounts_ok(pgt),
                key=lambda: (pgt.mem.version, pool.vmemmap.version))


@functools.cache
def annotate_vs_access() -> Scenario:
    """Declared on first use, not at import: the registry is global to the test session."""
    return emu.scenario(name="test-pkvm-annotate-vs-access", quirks={
        "set-owner-no-tlbi": "annotate without the TLBI",
        "pgd-refcount": "unsplit PGD"})(_annotate_vs_access)


def test_under_schedules_the_tlbi_leaves_no_stale_translation():
    res = emu.hunt(annotate_vs_access(), schedules=60, seed=1)
    assert res.found is None and res.schedules == 60


def test_under_schedules_set_owner_no_tlbi_is_found():
    res = emu.hunt(annotate_vs_access(), schedules=60, seed=1, quirks=("set-owner-no-tlbi",))
    assert res.found is not None
    assert "still translates" in res.found.violations[0].message
