"""L0's MMU for an L1 hypervisor (kvm/radix_mmu.py, nested_mmu.py, nested_tlbie.py,
radix_debugfs.py, nested_invariants.py): each function against hand-computed results, the
races with the engine (an L2 fault against an L0 unmap, the rmap dedup, the lockless debugfs
walk), and each invariant made to fire."""

from __future__ import annotations

from functools import partial

import attrs
import pytest

import emu
from emu.hw.memory import PAGE_SHIFT, FramePool, PhysicalMemory
from emu.hw.radix import (
    PAGE_ACCESSED,
    PAGE_DIRTY,
    PAGE_EXEC,
    PAGE_PRESENT,
    PAGE_READ,
    PAGE_RWX,
    PAGE_WRITE,
    PMD_SHIFT,
    PUD_SHIFT,
    Pate,
    RadixTree,
    TableMemory,
    encode_ptcr,
    make_pte,
    write_pate,
)
from emu.kvm import nested_tlbie, radix_mmu
from emu.kvm.hvcall import H_PARAMETER, H_SUCCESS
from emu.kvm.mm import migrate_pages
from emu.kvm.nested import NESTED_QUIRKS, L1Host, LpidPool, kvmhv_get_nested
from emu.kvm.nested_invariants import (
    L1Edits,
    l1_pgtable_current,
    nested_rmap_unique,
    shadow_composition,
)
from emu.kvm.nested_mmu import kvmhv_nested_page_fault
from emu.kvm.nested_tlbie import kvmhv_do_nested_tlbie
from emu.kvm.radix_debugfs import debugfs_radix_read
from emu.kvm.radix_mmu import (
    BOOK3S_INTERRUPT_H_INST_STORAGE,
    DSISR_BADACCESS,
    DSISR_ISSTORE,
    DSISR_NOHPTE,
    DSISR_PROTFAULT,
    DSISR_PRTABLE_FAULT,
    DSISR_SET_RC,
    DSISR_UNSUPP_MMU,
    KVM_MEM_READONLY,
    RESUME_GUEST,
    RESUME_HOST,
    RESUME_HOST_NV,
    SRR1_ISI_N_G_OR_CIP,
    RadixMmu,
    VcpuFault,
    hdsi_dsisr,
    kvm_mmu_notifier_invalidate_range_start,
    l1_access,
)
from emu.kvm.tlbie_operands import encode_tlbie
from emu.kvm.vm import KVM

K64, M2, G1 = 1 << PAGE_SHIFT, 1 << PMD_SHIFT, 1 << PUD_SHIFT
L1_PAGES = 512
"""L1's memory: 32 MiB from GPA 0, one memslot; its page tables come from the bottom."""
PTCR = encode_ptcr(0x1F0_0000, 4096)
LPID = 3
"""The nested guest most tests use; L1 runs as LPID 1 in L0, shadow LPIDs start at 2."""
N = 0x8000_0000
"""An L2 guest real address, 1G-aligned."""
DATA = 0x100_0000
"""An L1 guest real address for data, 2M-aligned, far above L1's page tables."""
RWX_AD = PAGE_RWX | PAGE_ACCESSED | PAGE_DIRTY


def not_editing(lpid: int, start: int, end: int) -> bool:
    """L1 edits no table while it runs (shadow_composition's ``l1_editing``)."""
    return False


@attrs.define
class World:
    """An L1 in L0 (its KVM, memslot, MMU and nested state) with L1's own L2->L1 table for
    nested lpid ``LPID`` in its memory, and the tlbies L0 issued."""

    m: emu.Machine
    kvm: KVM
    l1: L1Host
    mmu: RadixMmu
    l1mem: TableMemory
    l2: RadixTree
    tlbies: list[tuple[int, int, int]]

    @classmethod
    def build(cls, m: emu.Machine, quirks: tuple[str, ...] = ()) -> World:
        memory = PhysicalMemory()
        kvm = KVM(m, 1, memory)
        kvm.add_memslot(0, 0, L1_PAGES)
        l1mem = TableMemory(FramePool("l1"))
        l1 = L1Host(kvm, LpidPool(4096, reserved=(0, 1)), TableMemory(memory.normal),
                    read_guest=lambda a: l1mem.read(a) if kvm.gfn_to_memslot(a >> PAGE_SHIFT)
                    else None,
                    write_guest=lambda a, v: l1mem.write(a, v) is None,
                    flush_lpid=lambda lpid: None,
                    set_ptbl_entry=lambda lpid, dw0, dw1: None, quirks=quirks)
        tlbies: list[tuple[int, int, int]] = []
        mmu = RadixMmu(kvm, lambda addr, shift, lpid: tlbies.append((lpid, addr, shift)), l1)
        kvm.mm.notifiers.append(partial(kvm_mmu_notifier_invalidate_range_start, mmu))
        l2 = RadixTree(l1mem)
        write_pate(l1mem, PTCR, LPID, Pate.radix(l2.root, 0))
        l1.l1_ptcr = PTCR  # L1 booted: H_SET_PARTITION_TABLE
        return cls(m, kvm, l1, mmu, l1mem, l2, tlbies)

    def hva(self, gpa: int) -> int:
        return self.kvm.gfn_to_hva(gpa >> PAGE_SHIFT)

    def host(self, gpa: int) -> int:
        """The host real address of L1 ``gpa``'s page in QEMU's page table."""
        return self.kvm.mm.get_pte(self.hva(gpa)) << PAGE_SHIFT

    async def fault(self, gp, n_gpa: int, dsisr: int = DSISR_NOHPTE, *, trap: int | None = None,
                    msr: int = 0) -> tuple[int, VcpuFault]:
        """An L2 HDSI (or HISI) at ``n_gpa`` as the exit handler passes it, under srcu."""
        vcpu = VcpuFault.hdsi(n_gpa, dsisr)
        if trap is not None:
            vcpu.trap, vcpu.msr = trap, msr
        idx = await self.kvm.srcu.read_lock()
        ret = await kvmhv_nested_page_fault(vcpu, gp)
        self.kvm.srcu.read_unlock(idx)
        return ret, vcpu

    async def access(self, gp, n_gpa: int, *, writing: bool = False) -> int | None:
        """An L2 load or store through the shadow table, faulting until it completes: the
        host real address, or None if L0 sent the fault elsewhere."""
        for _ in range(4):
            await self.m.point(f"L2 {'store' if writing else 'load'} at {n_gpa:#x}")
            leaf = gp.shadow_pgtable.find(n_gpa)
            dsisr = hdsi_dsisr(leaf, writing)
            if not dsisr:
                return leaf.real_address(n_gpa)
            ret, _ = await self.fault(gp, n_gpa, dsisr)
            if ret != RESUME_GUEST:
                return None
        return None

    async def tlbie(self, *, is_: int, ric: int = 0, lpid: int = LPID, addr: int = 0,
                    ap: int = 5) -> int:
        return await kvmhv_do_nested_tlbie(
            self.l1, *encode_tlbie(ric=ric, is_=is_, lpid=lpid, ap=ap, epn=addr >> 12))

    def invariants(self, editing=not_editing) -> None:
        """The three, between steps and once more at the end."""
        for name, check in (
                ("shadow composition", lambda: shadow_composition(self.l1, editing)),
                ("nested rmap unique", lambda: nested_rmap_unique(self.mmu)),
                ("L1 table current", lambda: l1_pgtable_current(self.mmu))):
            self.m.invariant(name, check)
            self.m.final(name, check)


def run_body(body, quirks=(), max_steps=10_000):
    """Run ``body(world)`` as the only actor; its result."""
    out = {}

    @emu.scenario(name=f"nested-mmu-{body.__name__}", quirks=NESTED_QUIRKS, max_steps=max_steps)
    def single(m: emu.Machine) -> None:
        w = World.build(m, m.quirks)

        async def actor():
            out["value"] = await body(w)

        m.spawn("l1.vcpu0", actor)

    result = emu.run(single, quirks=quirks)
    assert result.ok, result.violation.describe()
    return out["value"]


async def nested(w: World, lpid: int = LPID):
    return await kvmhv_get_nested(w.l1, lpid, True)


# --- the fault: walk errors reflected to L1 ----------------------------------------------


def test_walk_errors_and_permissions_reflect_to_l1():
    async def body(w: World):
        gp = await nested(w)
        got = {}
        got["enoent-load"] = await w.fault(gp, N + 0x123)
        got["enoent-store"] = await w.fault(gp, N, DSISR_NOHPTE | DSISR_ISSTORE)
        w.l2.insert(N, make_pte(DATA, PAGE_READ | PAGE_ACCESSED), PAGE_SHIFT)
        got["ro-store"] = await w.fault(gp, N, DSISR_NOHPTE | DSISR_ISSTORE)
        w.l2.insert(N + K64, make_pte(DATA, PAGE_EXEC | PAGE_ACCESSED), PAGE_SHIFT)
        got["x-only-load"] = await w.fault(gp, N + K64)
        got["noexec-fetch"] = await w.fault(gp, N, trap=BOOK3S_INTERRUPT_H_INST_STORAGE,
                                            msr=0x8000_0000_0000_1033)
        # a directory entry of L1's table pointing outside L1's memory
        w.l1mem.write(w.l2.root + ((2 * N >> 39) & 0x1FFF) * 8, PAGE_PRESENT | 0x4000_0000 | 9)
        got["efault"] = await w.fault(gp, 2 * N)
        gp.l1_gr_to_hr = w.l2.root | 13  # a PATE with no tree size (RTS 0): not 52 bits
        got["einval"] = await w.fault(gp, N)
        return {k: (ret, v.fault_dsisr, v.fault_gpa, v.msr) for k, (ret, v) in got.items()}

    got = run_body(body)
    efault_addr = 0x4000_0000 + ((2 * N >> 30) & 0x1FF) * 8
    assert got == {
        "enoent-load": (RESUME_HOST, DSISR_NOHPTE, N + 0x123, 0),
        "enoent-store": (RESUME_HOST, DSISR_NOHPTE | DSISR_ISSTORE, N, 0),
        "ro-store": (RESUME_HOST, DSISR_PROTFAULT | DSISR_ISSTORE, N, 0),
        "x-only-load": (RESUME_HOST, DSISR_PROTFAULT, N + K64, 0),
        "noexec-fetch": (RESUME_HOST, SRR1_ISI_N_G_OR_CIP, N,
                         0x8000_0000_0000_1033 | SRR1_ISI_N_G_OR_CIP),
        "efault": (RESUME_HOST, DSISR_PRTABLE_FAULT, efault_addr, 0),
        "einval": (RESUME_HOST, DSISR_UNSUPP_MMU, N, 0),
    }


def test_a_translation_l1_now_forbids_is_invalidated_not_reflected():
    async def body(w: World):
        gp = await nested(w)
        w.l2.insert(N, make_pte(DATA, PAGE_READ | PAGE_ACCESSED), PAGE_SHIFT)
        first = await w.fault(gp, N)
        shadow = gp.shadow_pgtable.find(N)
        w.l2.unmap(N, N + K64)  # L1 clears its PTE; its H_TLB_INVALIDATE is yet to come
        # the L2 stores through the read-only shadow PTE: the hardware had a translation
        ret, vcpu = await w.fault(gp, N, hdsi_dsisr(shadow, True))
        return first[0], shadow.pte, ret, vcpu.fault_dsisr, gp.shadow_pgtable.find(N), \
            w.tlbies[-1]

    first, pte, ret, dsisr, after, tlbie = run_body(body)
    assert first == RESUME_GUEST and not pte & PAGE_WRITE
    # fault_dsisr is what the walk would have told L1; it is not told: RESUME_GUEST
    assert (ret, dsisr) == (RESUME_GUEST, DSISR_NOHPTE | DSISR_ISSTORE)
    assert after is None and tlbie == (2, N, PAGE_SHIFT)  # on the shadow LPID


# --- R/C ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("l1_rc", "shadow_there", "expect"), [
    (PAGE_ACCESSED, True, (RESUME_HOST, DSISR_SET_RC | DSISR_ISSTORE, False)),  # L1 sets C
    (PAGE_ACCESSED | PAGE_DIRTY, True, (RESUME_GUEST, DSISR_SET_RC | DSISR_ISSTORE, True)),
    (PAGE_ACCESSED | PAGE_DIRTY, False, (RESUME_GUEST, DSISR_SET_RC | DSISR_ISSTORE, None)),
])
def test_set_rc(l1_rc, shadow_there, expect):
    async def body(w: World):
        gp = await nested(w)
        w.l2.insert(N, make_pte(DATA, PAGE_RWX | l1_rc), PAGE_SHIFT)
        assert await w.access(gp, N) is not None  # a load: the shadow PTE has W, not C
        if not shadow_there:  # gone (an L0 unmap, say) before the R/C fault is handled
            gp.shadow_pgtable.unmap(0, 1 << 52)
        ret, vcpu = await w.fault(gp, N, DSISR_SET_RC | DSISR_ISSTORE)
        leaf = gp.shadow_pgtable.find(N)
        return ret, vcpu.fault_dsisr, None if leaf is None else bool(leaf.pte & PAGE_DIRTY)

    assert run_body(body) == expect


def test_l1_pages_below_64k_are_refused():
    async def body(w: World):
        gp = await nested(w)
        # L1's table in the 4K geometry: nine index bits at the last level
        pud, pmd, pte = (w.l1mem.alloc_table() for _ in range(3))
        w.l1mem.write(w.l2.root + ((N >> 39) & 0x1FFF) * 8, PAGE_PRESENT | pud | 9)
        w.l1mem.write(pud + ((N >> 30) & 0x1FF) * 8, PAGE_PRESENT | pmd | 9)
        w.l1mem.write(pmd + ((N >> 21) & 0x1FF) * 8, PAGE_PRESENT | pte | 9)
        w.l1mem.write(pte + ((N >> 12) & 0x1FF) * 8, make_pte(DATA, RWX_AD))
        ret, _ = await w.fault(gp, N)
        return ret, gp.shadow_pgtable.find(N)

    assert run_body(body) == (-22, None)


# --- memslots: MMIO, DSI, read-only ------------------------------------------------------


def test_memslot_checks():
    async def body(w: World):
        gp = await nested(w)
        ro = w.kvm.add_memslot(1, 0x400, 16)  # L1 GPA 64M..65M, read-only
        w.kvm.set_memslot_flags(ro, KVM_MEM_READONLY)
        w.l2.insert(N, make_pte(0x4000_0000, RWX_AD), PAGE_SHIFT)  # beyond every memslot
        w.l2.insert(N + K64, make_pte(0x400 << PAGE_SHIFT, RWX_AD), PAGE_SHIFT)
        got = [await w.fault(gp, N + 0x123, DSISR_NOHPTE | DSISR_ISSTORE),
               await w.fault(gp, N, DSISR_NOHPTE | DSISR_BADACCESS),
               await w.fault(gp, N + K64, DSISR_NOHPTE | DSISR_ISSTORE),
               await w.fault(gp, N + K64)]
        leaf = gp.shadow_pgtable.find(N + K64)
        return [(ret, v.mmio, v.queued_dsi) for ret, v in got], leaf.pte & PAGE_RWX

    got, prot = run_body(body)
    assert got == [
        (RESUME_HOST_NV, (0x4000_0123, N + 0x123, True), None),  # MMIO for userspace
        (RESUME_GUEST, None, (N, DSISR_NOHPTE | DSISR_BADACCESS)),  # DSI to L2
        (RESUME_GUEST, None, (N + K64, DSISR_ISSTORE | DSISR_PROTFAULT)),  # read-only slot
        (RESUME_GUEST, None, None),  # a load maps it, without W
    ]
    assert prot == PAGE_READ | PAGE_EXEC


# --- the shadow PTE's size, RPN and rmap word --------------------------------------------


HPA_2M, HPA_1G = 0x4000_0000, 0x8000_0000
"""Host addresses of large L0 pages a test installs by hand (the host mm has 64K pages)."""


@pytest.mark.parametrize(("l0", "l1_shift", "l1_gpa", "fault_at", "expect"), [
    # (L0 page (shift, L1 GPA, HPA) or None: 64K by a fault), L1 page, L1 GPA of n, fault
    # address -> (shadow shift, at, host address, rmap L1 GFN)
    (None, PMD_SHIFT, DATA, N + 0x3_0000, (16, N + 0x3_0000, "host", 0x103)),
    ((PMD_SHIFT, DATA, HPA_2M), 16, DATA + 0x3_0000, N, (16, N, HPA_2M + 0x3_0000, 0x100)),
    ((PMD_SHIFT, DATA, HPA_2M), PMD_SHIFT, DATA, N + 0x5_0000, (21, N, HPA_2M, 0x100)),
    ((PUD_SHIFT, 0, HPA_1G), PMD_SHIFT, DATA, N + 0x5_0000,
     (16, N + 0x5_0000, HPA_1G + DATA + 0x5_0000, 0)),  # 1G over 2M: 64K, not 2M
    ((PUD_SHIFT, 0, HPA_1G), PUD_SHIFT, 0, N + DATA + 0x5_0000, (30, N, HPA_1G, 0)),
])
def test_shadow_pte_size_rpn_and_rmap_at_the_fault(l0, l1_shift, l1_gpa, fault_at, expect):
    async def body(w: World):
        gp = await nested(w)
        if l0 is not None:
            shift, gpa, hpa = l0
            w.mmu.pgtable.insert(gpa, make_pte(hpa, RWX_AD), shift)
        w.l2.insert(N, make_pte(l1_gpa, RWX_AD), l1_shift)
        ret, _ = await w.fault(gp, fault_at)
        leaf = gp.shadow_pgtable.find(fault_at)
        [(slot, words)] = w.mmu.rmap.items()
        [(index, word)] = words.items()
        host = w.host(DATA + 0x3_0000) if l0 is None else None
        return ret, leaf, slot.base_gfn + index, word.entries(), host

    ret, leaf, gfn, entries, host = run_body(body)
    shift, at, ra, rmap_gfn = expect
    ra = host if ra == "host" else ra
    assert ret == RESUME_GUEST
    assert (leaf.shift, leaf.gpa, leaf.ra, gfn) == (shift, at, ra, rmap_gfn)
    assert leaf.pte == make_pte(ra, PAGE_RWX | PAGE_ACCESSED)  # a load: no C
    assert entries == ((LPID << 52) | at,)


# --- H_TLB_INVALIDATE ---------------------------------------------------------------------


@pytest.mark.parametrize("form", [
    {"ric": 0, "is_": 2, "r": 0}, {"ric": 0, "is_": 2, "prs": 1}, {"ric": 3, "is_": 2},
    {"ric": 0, "is_": 1}, {"ric": 2, "is_": 0}, {"ric": 1, "is_": 0}, {"ric": 0, "is_": 0, "ap": 3},
])
def test_h_tlb_invalidate_refuses_bad_forms(form):
    async def body(w: World):
        return await kvmhv_do_nested_tlbie(w.l1, *encode_tlbie(lpid=LPID, **form))

    assert run_body(body) == H_PARAMETER


@pytest.mark.parametrize(("leaves", "ap", "calls", "left"), [
    # shadow leaves (L2 address, shift); AP of the L1 page at N -> the addresses the loop
    # invalidates (first few, count); leaves left
    ([(N, 16), (N + 0x10_0000, 16), (N + M2, 16)], 1,
     ([N, N + K64, N + 2 * K64], 32), [(N + M2, 16)]),
    ([(N, 21), (N + M2, 16), (N + M2 + K64, 16), (N + G1, 16)], 2,
     ([N, N + M2, N + M2 + K64, N + M2 + 2 * K64], 1 + (G1 - M2) // K64), [(N + G1, 16)]),
    ([(N, 16), (N + K64, 16)], 0, ([N + 0x1000], 1), [(N + K64, 16)]),  # 4K: once
])
def test_is0_loop_advances_by_each_shadow_pte_size(monkeypatch, leaves, ap, calls, left):
    seen = []
    real = nested_tlbie.kvmhv_invalidate_shadow_pte

    async def spy(gp, addr):
        seen.append(addr)
        return await real(gp, addr)

    monkeypatch.setattr(nested_tlbie, "kvmhv_invalidate_shadow_pte", spy)

    async def body(w: World):
        gp = await nested(w)
        for gpa, shift in leaves:
            gp.shadow_pgtable.insert(gpa, make_pte(HPA_1G + (gpa - N), RWX_AD), shift)
        rc = await w.tlbie(is_=0, addr=N + 0x1234, ap=ap)
        no_guest = await w.tlbie(is_=0, lpid=7, addr=N, ap=ap)
        return rc, no_guest, [(lf.gpa, lf.shift) for lf in gp.shadow_pgtable.leaves()], \
            [t for t in w.tlbies if t[0] == 2]

    rc, no_guest, remaining, tlbies = run_body(body, max_steps=100_000)
    first, count = calls
    assert (rc, no_guest) == (H_SUCCESS, H_SUCCESS)
    assert seen[:len(first)] == first and len(seen) == count
    assert remaining == left
    removed = [(g, s) for g, s in leaves if (g, s) not in left]
    assert tlbies == [(2, g, s) for g, s in removed]


def test_is2_and_is3_flush_every_shadow_pte_and_keep_the_rmap():
    async def body(w: World):
        gp = await nested(w)
        w.l2.insert(N, make_pte(DATA, RWX_AD), PMD_SHIFT)
        await w.access(gp, N)
        await w.access(gp, N + K64)
        before = len(list(gp.shadow_pgtable.leaves()))
        assert await w.tlbie(is_=2) == H_SUCCESS
        after_is2 = len(list(gp.shadow_pgtable.leaves()))
        await w.access(gp, N)
        assert await w.tlbie(is_=3) == H_SUCCESS
        words = w.mmu.rmap[w.kvm.memslots[0]]
        return before, after_is2, list(gp.shadow_pgtable.leaves()), len(words)

    assert run_body(body) == (2, 0, [], 2)  # stale rmap entries stay: they are skipped later


# --- the nested rmap: dedup, and an L0 unmap that skips stale entries --------------------


@pytest.mark.parametrize(("quirks", "entries"), [((), 1), (("rmap-no-dedup",), 3)])
def test_rmap_insert_dedups_refaults(quirks, entries):
    async def body(w: World):
        gp = await nested(w)
        w.l2.insert(N, make_pte(DATA, RWX_AD), PAGE_SHIFT)
        for _ in range(3):  # fault, and L1 invalidates: the rmap entry outlives the PTE
            await w.access(gp, N)
            await w.tlbie(is_=0, addr=N)
        word = w.mmu.rmap[w.kvm.memslots[0]][DATA >> PAGE_SHIFT]
        return word.entries(), nested_rmap_unique(w.mmu)

    got, check = run_body(body, quirks)
    assert got == ((LPID << 52) | N,) * entries
    assert (check is None) == (entries == 1)


def test_l0_unmap_skips_a_stale_rmap_entry_and_removes_a_live_one():
    async def body(w: World):
        gp = await nested(w)
        w.l2.insert(N, make_pte(DATA, RWX_AD), PAGE_SHIFT)
        old = await w.access(gp, N)
        w.l2.unmap(N, N + K64)  # L1 moves n from DATA to DATA + 64K, properly
        await w.tlbie(is_=0, addr=N)
        w.l2.insert(N, make_pte(DATA + K64, RWX_AD), PAGE_SHIFT)
        new = await w.access(gp, N)
        await migrate_pages(w.kvm, w.hva(DATA), 0)  # reclaim moves DATA's host page
        kept = gp.shadow_pgtable.find(N)
        words = w.mmu.rmap[w.kvm.memslots[0]]
        stale_word = words[DATA >> PAGE_SHIFT].kind
        await migrate_pages(w.kvm, w.hva(DATA + K64), 0)
        return old, new, kept.ra, stale_word, gp.shadow_pgtable.find(N), \
            words[(DATA + K64) >> PAGE_SHIFT].kind

    old, new, kept, stale_word, after, live_word = run_body(body)
    assert old != new and kept == new and stale_word == "empty"
    assert after is None and live_word == "empty"


def test_l1_access_maps_its_page_or_reports_the_fault():
    async def body(w: World):
        ro = w.kvm.add_memslot(1, 0x400, 16)
        w.kvm.set_memslot_flags(ro, KVM_MEM_READONLY)
        hpa = await l1_access(w.mmu, DATA + 0x18, writing=True)
        again = await l1_access(w.mmu, DATA + 0x20, writing=False)
        ro_store = await l1_access(w.mmu, 0x400 << PAGE_SHIFT, writing=True)
        ro_load = await l1_access(w.mmu, 0x400 << PAGE_SHIFT, writing=False)
        mmio = await l1_access(w.mmu, 0x4000_0008, writing=False)
        return (hpa, again, w.host(DATA), ro_store.queued_dsi, ro_load == w.host(0x400 << 16),
                mmio.mmio, w.mmu.pgtable.find(DATA).pte)

    hpa, again, host, ro_store, ro_load, mmio, pte = run_body(body)
    assert (hpa, again) == (host + 0x18, host + 0x20)
    assert ro_store == (0x400 << 16, DSISR_ISSTORE | DSISR_PROTFAULT) and ro_load
    assert mmio == (0x4000_0008, 0x4000_0008, False)
    assert pte == make_pte(host, RWX_AD)


# --- debugfs ------------------------------------------------------------------------------


def test_debugfs_radix_dump_format():
    async def body(w: World):
        gp3 = await nested(w)
        gp5 = await nested(w, 5)
        w.l2.insert(N, make_pte(DATA, RWX_AD), PMD_SHIFT)
        write_pate(w.l1mem, PTCR, 5, Pate.radix(w.l2.root, 0))  # lpid 5 shares the table
        await w.access(gp3, N + K64)
        await w.access(gp5, N)
        await w.access(gp5, N + 2 * K64, writing=True)
        text = await debugfs_radix_read(w.mmu)
        return text, w.mmu.pgtable, gp3.shadow_pgtable, gp5.shadow_pgtable

    text, l1_table, s3, s5 = run_body(body)
    expect = ("".join(l1_table.debugfs_lines()) + "\nNested LPID 3: "
              + "".join(s3.debugfs_lines()) + "\nNested LPID 5: " + "".join(s5.debugfs_lines()))
    assert text == expect
    [leaf3] = s3.leaves()
    assert f"\nNested LPID 3: pgdir: {s3.root:x}\n {N + K64:x}: {leaf3.pte:x} 16\n" in text
    lines = text.split("\n")
    assert [line for line in lines if not line.startswith(" ")] == [
        f"pgdir: {l1_table.root:x}", "", f"Nested LPID 3: pgdir: {s3.root:x}", "",
        f"Nested LPID 5: pgdir: {s5.root:x}", ""]
    assert len(lines) == 6 + 3 + 1 + 2  # and the leaves: L1's three, one, two


# --- the invariants, each made to fire ----------------------------------------------------


def test_shadow_composition_fires_on_a_forged_shadow_pte():
    async def body(w: World):
        gp = await nested(w)
        w.l2.insert(N, make_pte(DATA, RWX_AD), PAGE_SHIFT)
        await w.access(gp, N)
        clean = shadow_composition(w.l1, not_editing)
        gp.shadow_pgtable.insert(N + K64, make_pte(0x7000_0000, RWX_AD), PAGE_SHIFT)
        return clean, shadow_composition(w.l1, not_editing)

    clean, message = run_body(body)
    assert clean is None
    assert message.startswith(f"shadow PTE {make_pte(0x7000_0000, RWX_AD):#x} of nested guest 3")
    assert "no rmap entry on an L1 page whose L0 PTE maps host 0x70000000" in message


def test_shadow_composition_waits_for_l1s_invalidation_then_fires():
    async def body(w: World):
        gp = await nested(w)
        edits = L1Edits()
        w.l2.insert(N, make_pte(DATA, RWX_AD), PAGE_SHIFT)
        await w.access(gp, N)
        edit = edits.begin(LPID, N, N + K64)
        w.l2.unmap(N, N + K64)
        during = shadow_composition(w.l1, edits)
        forgot = shadow_composition(w.l1, not_editing)  # as if L1 never said it was editing
        await w.tlbie(is_=0, addr=N)
        edits.end(edit)
        return during, forgot, shadow_composition(w.l1, edits)

    during, forgot, after = run_body(body)
    assert during is None and after is None
    assert forgot.endswith("L1's table maps nothing there (walk error -2)")


def test_in_place_retarget_ors_the_rpn_and_breaks_composition():
    """A candidate finding, not confirmed upstream: L1 rewrites a present L2->L1 PTE to
    another page without invalidating, the L2 stores through the old read-only shadow PTE,
    and kvmppc_create_pte ORs the new PTE into the old one (only a WARN_ON_ONCE): the shadow
    PTE then maps host old | new, memory L1 was never given. Claim (A) holds L0 to it."""
    async def body(w: World):
        gp = await nested(w)
        w.l2.insert(N, make_pte(DATA, PAGE_READ | PAGE_ACCESSED), PAGE_SHIFT)
        await w.access(gp, N)
        await l1_access(w.mmu, DATA + 3 * K64, writing=True)
        old, new = w.host(DATA), w.host(DATA + 3 * K64)
        w.l2.unmap(N, N + K64)  # rewritten in place: no H_TLB_INVALIDATE
        w.l2.insert(N, make_pte(DATA + 3 * K64, RWX_AD), PAGE_SHIFT)
        await w.access(gp, N, writing=True)
        return old, new, gp.shadow_pgtable.find(N).ra, gp.shadow_pgtable.mismatches, \
            shadow_composition(w.l1, not_editing)

    old, new, ra, mismatches, message = run_body(body)
    assert ra == old | new and ra not in (old, new) and len(mismatches) == 1
    assert "no rmap entry on an L1 page whose L0 PTE maps host" in message


def test_nested_rmap_unique_fires_on_a_duplicate():
    async def body(w: World):
        gp = await nested(w)
        w.l2.insert(N, make_pte(DATA, RWX_AD), PAGE_SHIFT)
        await w.access(gp, N)
        word = w.mmu.rmap[w.kvm.memslots[0]][DATA >> PAGE_SHIFT]
        clean = nested_rmap_unique(w.mmu)
        word.insert((LPID << 52) | N, dedup=False)
        return clean, nested_rmap_unique(w.mmu)

    clean, message = run_body(body)
    assert clean is None
    assert message == (f"the nested rmap of L1 GFN {DATA >> 16:#x} holds (lpid 3, L2 {N:#x}) "
                       "more than once (2 entries)")


def test_l1_pgtable_current_fires_on_a_missed_invalidation():
    async def body(w: World):
        hpa = await l1_access(w.mmu, DATA, writing=False)
        clean = l1_pgtable_current(w.mmu)
        w.kvm.mm.set_pte(w.hva(DATA), 0x777)  # the host page changed and nobody told KVM
        return hpa >> PAGE_SHIFT, clean, l1_pgtable_current(w.mmu)

    pfn, clean, message = run_body(body)
    assert clean is None
    assert message == (f"L0 maps L1 GFN {DATA >> 16:#x} to host page {pfn:#x}, but QEMU's "
                       "page there is 0x777: an invalidation was missed")


# --- races ---------------------------------------------------------------------------------


@emu.scenario(name="nested-mmu-fault-vs-notifier", quirks=NESTED_QUIRKS)
def fault_vs_notifier(m: emu.Machine) -> None:
    """An L2 load faults while reclaim moves the host page behind the L1 page it maps."""
    w = World.build(m, m.quirks)
    w.invariants()
    w.l2.insert(N, make_pte(DATA, RWX_AD), PAGE_SHIFT)

    async def l2_vcpu():
        gp = await nested(w)
        await w.access(gp, N)

    async def l1_vcpu():  # L1 touches the page first, so there is a host page to move
        await l1_access(w.mmu, DATA, writing=True)
        await migrate_pages(w.kvm, w.hva(DATA), 0)

    m.spawn("l2.vcpu0", l2_vcpu)
    m.spawn("l1.vcpu1", l1_vcpu)


def test_fault_racing_an_l0_unmap_leaves_no_stale_shadow_pte():
    for strategy in ({}, {"strategy": "pct", "depth": 3}):
        h = emu.hunt(fault_vs_notifier, schedules=500, seed=0, **strategy)
        assert h.ok, h.found.violation.describe()
    assert not emu.hunt(fault_vs_notifier, schedules=50, seed=0,
                        check_determinism=True).mismatches


def test_without_the_notifier_sequence_check_the_race_is_found(monkeypatch):
    monkeypatch.setattr(radix_mmu, "mmu_notifier_retry", lambda mmu, seq: False)
    h = emu.hunt(fault_vs_notifier, schedules=500, seed=0)
    assert h.found is not None
    v = h.found.violation
    assert "shadow composition" in v.message or "L1 table current" in v.message, v.describe()


@emu.scenario(name="nested-mmu-refault", quirks=NESTED_QUIRKS)
def refault(m: emu.Machine) -> None:
    """The L2 touches one page twice while L1 invalidates it."""
    w = World.build(m, m.quirks)
    w.invariants()
    w.l2.insert(N, make_pte(DATA, RWX_AD), PAGE_SHIFT)

    async def l2_vcpu():
        gp = await nested(w)
        await w.access(gp, N)
        await m.point("the L2 runs on")
        await w.access(gp, N)

    async def l1_vcpu():
        await w.tlbie(is_=0, addr=N)

    m.spawn("l2.vcpu0", l2_vcpu)
    m.spawn("l1.vcpu1", l1_vcpu)


def test_rmap_no_dedup_found_and_clean_without():
    h = emu.hunt(refault, schedules=2000, seed=0, quirks=("rmap-no-dedup",))
    assert h.found is not None, "rmap-no-dedup not found in 2000 schedules"
    v = h.found.violation
    assert "nested rmap unique" in v.message and "more than once" in v.message, v.describe()
    assert emu.hunt(refault, schedules=1000, seed=0).ok


ROUNDS = 4


@emu.scenario(name="nested-mmu-dump", quirks=NESTED_QUIRKS)
def dump_vs_flush(m: emu.Machine) -> None:
    """debugfs reads the radix file while the L2 keeps touching two pages and L1 keeps
    flushing its nested guest's TLB (IS=2, RIC=0: the shadow tables are freed)."""
    w = World.build(m, m.quirks)
    w.invariants()
    w.l2.insert(N, make_pte(DATA, RWX_AD), PMD_SHIFT)
    mapped = m.completion("L2 pages mapped")

    async def l2_vcpu():
        gp = await nested(w)
        for _ in range(ROUNDS):
            await w.access(gp, N)
            await w.access(gp, N + M2 // 2)
            mapped.complete_all()

    async def l1_vcpu():
        await mapped.wait_for_completion()
        for _ in range(ROUNDS):
            await w.tlbie(is_=2)

    async def reader():
        await mapped.wait_for_completion()
        await debugfs_radix_read(w.mmu)

    m.spawn("l2.vcpu0", l2_vcpu)
    m.spawn("l1.vcpu1", l1_vcpu)
    m.spawn("debugfs", reader)


def test_radix_dump_lockless_found_and_clean_without():
    h = emu.hunt(dump_vs_flush, schedules=2000, seed=0, quirks=("radix-dump-lockless",))
    assert h.found is not None, "radix-dump-lockless not found in 2000 schedules"
    v = h.found.violation
    assert v.kind == "use-after-free" and "debugfs_radix_read" in v.message, v.describe()
    for strategy in ({}, {"strategy": "pct", "depth": 3}):
        h = emu.hunt(dump_vs_flush, schedules=500, seed=0, **strategy)
        assert h.ok, h.found.violation.describe()
