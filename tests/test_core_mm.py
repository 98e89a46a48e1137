"""Core mm (emu/kvm/mm.py) against the kernel paths it models: page references that make a
page "not collected", migration entries a host access waits for, a hole whose insert
aborts, munmap under mmap_lock for write, reclaim and KSM moving a page, and the release
profiles of do_swap_page. The windows the scenarios target are measured: schedules must
reach them."""

from __future__ import annotations

import emu
from emu.hw.memory import FramePool
from emu.kvm import uvmem
from emu.kvm.hvcall import H_PARAMETER, H_SUCCESS, PAGE_SHIFT
from emu.kvm.uvmem import hv_gfn_state
from tests.test_invariants import boot, gpa, run

GFN = 5


def test_a_page_unmapped_under_a_reference_is_freed_by_the_last_put():
    pool = FramePool("normal")
    pfn = pool.alloc()
    pool.refs.get_page(pfn)  # get_user_pages
    pool.refs.release(pfn)  # its mapping goes (migrated away, unmapped, reclaimed)
    assert pool.get(pfn) is not None
    pool.refs.put_page(pfn)
    assert pool.get(pfn) is None


def test_a_gfn_to_pfn_reference_makes_the_page_not_collected():
    """kvmppc_svm_page_in: migrate_vma_check_page refuses a page with a reference beyond
    its mapping, no MIGRATE_PFN_MIGRATE, so H_SVM_PAGE_IN returns H_PARAMETER; once the
    reference is dropped the same page-in succeeds."""
    box, got = {}, []

    async def guest(g):
        await g.write(gpa(GFN), 0x77)
        assert await g.uv_hcall("H_SVM_INIT_START") == H_SUCCESS
        kvm = box["kvm"]
        pfn = await kvm.gfn_to_pfn(GFN)
        got.append(await g.uv_hcall("H_SVM_PAGE_IN", gpa(GFN), 0, PAGE_SHIFT,
                                    accept={H_PARAMETER}))
        got.append(hv_gfn_state(kvm, GFN))
        kvm.kvm_release_pfn_clean(pfn)
        got.append(await g.uv_hcall("H_SVM_PAGE_IN", gpa(GFN), 0, PAGE_SHIFT))
        got.append(hv_gfn_state(kvm, GFN))

    result = run(guest, box=box)
    assert result.ok, result.violation.describe()
    assert got == [H_PARAMETER, "Normal", H_SUCCESS, "Secure"]


def _moves(box, **kw):
    """The host page of GFN before and after a host reclaim of it (after boot and a share)."""
    seen = {}

    async def guest(g):
        await boot(g)
        await g.share(GFN)
        await g.write(gpa(GFN), 0x5A)

    async def qemu(h):
        kvm = box["kvm"]
        hva = kvm.gfn_to_hva(GFN)
        seen["before"] = kvm.mm.get_pte(hva)
        if kw.get("hold"):
            await kvm.gfn_to_pfn(GFN)
        await h.reclaim(1, GFN, ksm=kw.get("ksm", False))
        seen["after"] = kvm.mm.get_pte(hva)
        seen["old"] = kvm.memory.normal.get(seen["before"])
        seen["value"] = kvm.memory.normal[seen["after"]].value

    result = run(guest, qemu, box=box)
    assert result.ok, result.violation.describe()
    return seen


def test_reclaim_moves_the_page_with_its_content_and_frees_the_old_one():
    seen = _moves({})
    assert seen["after"] != seen["before"] and seen["old"] is None and seen["value"] == 0x5A


def test_reclaim_leaves_a_page_with_an_extra_reference():
    seen = _moves({}, hold=True)
    assert seen["after"] == seen["before"] and seen["old"] is not None


def test_ksm_leaves_a_secure_vm_alone():
    """H_SVM_INIT_START made the SVM's memory unmergeable (kvmppc_memslot_page_merge)."""
    seen = _moves({}, ksm=True)
    assert seen["after"] == seen["before"]


def test_munmap_takes_mmap_lock_for_write():
    result = emu.run("dimm-hotplug", seed=0)
    assert result.ok
    assert any(actor == "qemu" and op == "down_write mmap_lock"
               for _, actor, op in result.decisions)


def _reach(scenario, marker, seeds, **kw):
    """How many of ``seeds`` reach the window ``marker`` names (an op or a note), every
    schedule clean."""
    hits = 0
    for seed in seeds:
        r = emu.run(scenario, seed=seed, **kw)
        assert r.ok, (seed, r.violation.describe())
        hits += any(marker in str(e[3]) for e in r.trace.events)
    return hits


def test_qemu_waits_for_the_migration_entry_of_a_page_in():
    """qemu-vs-page-in: QEMU's read of an image page meets the migration entry the
    UV_PAGE_IN copy holds, waits, and then faults the device page back out."""
    assert _reach("qemu-vs-page-in", "wait_for_completion migration entry", range(100)) >= 10


def test_a_store_races_the_copy_of_its_own_page_out():
    """store-vs-pageout: the SVM stores to a page while the UV copies it out (the UV
    unmapped it first, so the store faults and pages it back in after the copy); every
    store survives. 153 of 200 random schedules reach the window."""
    assert _reach("store-vs-pageout", "while the UV copies it out", range(60)) >= 20


def test_a_hole_filled_under_the_page_in_is_migrated_again():
    """The window of the page-in-hole-race candidate: QEMU's fault fills a hole between
    migrate_vma_setup and migrate_vma_pages; the fixed model migrates the new page (the
    schedules stay clean)."""
    assert _reach("qemu-vs-page-in", "migrate_vma_insert_page: the PTE of", range(100)) >= 5


def test_the_hostile_uv_meets_a_page_that_is_not_collected():
    """share-vs-pageout under a hostile UV: a page-in of a GFN whose share holds the page
    (gfn_to_pfn) does not collect it; the fixed HV retries the busy page (the kernel
    returns H_PARAMETER: quirk busy-page-fails)."""
    assert _reach("share-vs-pageout", "H_SVM_PAGE_IN: retry busy GFN", range(60),
                  params={"uv": "hostile"}) >= 1


def test_two_faults_on_one_device_page_livelock_on_v6_1_not_v6_15():
    """do_swap_page from v6.1 takes a reference on the device page without its lock; two
    faults then keep each other's migration from collecting it (quirk
    fault-ref-no-page-lock, on in v6.1 and v6.12). The trylock fix (v6.15) holds."""
    found = emu.hunt("share-storm", release="v6.1", schedules=20, seed=0).found
    assert found is not None and found.violation.kind == "fault-livelock"
    assert emu.hunt("share-storm", release="v6.15", schedules=100, seed=0).ok
    assert _reach("share-storm", "trylock_page failed", range(100), release="v6.15") >= 1


def test_the_late_page_free_refuses_a_page_in_from_v6_1():
    """From v6.1 page_free runs at do_swap_page's put_page, after migrate_to_ram dropped
    uvmem_lock: in between, the GFN still says UVMEM though its page is out, and the UV's
    H_SVM_PAGE_IN of it is refused ("already paged in": H_PARAMETER). README, Findings."""
    found = emu.hunt("qemu-vs-page-in", release="v6.15", strategy="pct", depth=3, seed=217,
                     schedules=1).found
    assert found is not None and found.violation.kind == "svm-access"
    assert "H_SVM_PAGE_IN returned -4" in found.violation.message
    assert emu.run("qemu-vs-page-in", strategy="pct", depth=3, seed=217).ok  # before v6.1
    # store-vs-pageout lives in that window: random walk finds it at once from v6.1
    for release in ("v6.1", "v6.15"):
        found = emu.hunt("store-vs-pageout", release=release, schedules=1, seed=0).found
        assert found is not None and found.violation.kind == "svm-access", release
    assert emu.run("store-vs-pageout", release="v5.17", seed=0).ok


def test_qemu_vs_page_in_catches_a_lost_write(monkeypatch):
    """The scenario's own check: without migrate_vma_insert_page's PTE recheck, the device
    page replaces the page QEMU's fault put in the hole, and QEMU reads back the UV's zero
    page instead of what it wrote."""
    async def blind_insert(kvm, mig):
        if mig.migrate and mig.dst:
            if mig.src == 0:
                await kvm.m.point("migrate_vma_insert_page: pte_offset_map_lock")
            mig.vma.pte[mig.vma.index(mig.start)] = mig.dst
            mig.done = True

    monkeypatch.setattr(uvmem, "migrate_vma_pages", blind_insert)
    found = emu.hunt("qemu-vs-page-in", schedules=200, seed=0).found
    assert found is not None and found.violation.kind == "integrity"
    assert "while UV_ESM paged it in and reads back" in found.violation.message
