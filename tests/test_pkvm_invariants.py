"""Every pKVM invariant fires: on a state corrupted by hand, and on the quirk that breaks it
(sequentially where one caller suffices, in a two-CPU schedule where it takes a race); the
fixed model passes the same checks. And ``may_access``, the access check's oracle."""

from __future__ import annotations

import emu
from emu.pkvm import HOST, HYP, PKVM_NOPAGE, PKVM_PAGE_OWNED, PKVM_PAGE_SHARED_BORROWED, Pkvm
from emu.pkvm import invariants as inv
from emu.pkvm import mem_protect as mp
from emu.pkvm.pgtable import KVM_PGTABLE_PROT_RWX, PAGE_HYP
from emu.sim import Param, scenario

PAGE = 1 << 12
QUIRKS = ("abort-bug-on", "check-apply-unlocked", "pgd-refcount", "set-owner-no-tlbi",
          "unshare-ignores-pin")


def fresh() -> tuple[Pkvm, int]:
    k = Pkvm()
    assert k.check() is None
    return k, k.host_pfns[0]


# --- page states --------------------------------------------------------------------------

def test_page_states_fire_on_an_illegal_pair():
    k, p = fresh()
    k.hyp.hyp_vmemmap.set_hyp_state(p * PAGE, PKVM_PAGE_SHARED_BORROWED)
    assert "no legal (host, hyp) state pair" in inv.check_page_states(k.hyp)


def test_page_states_fire_on_references_to_a_host_page():
    k, p = fresh()
    k.hyp.hyp_vmemmap.hyp_page_ref_inc(p)
    assert "has references" in inv.check_page_states(k.hyp)


def test_page_states_fire_on_a_share_count_without_guests():
    k, p = fresh()
    assert k.host_share_guest(p, 0x10) == 0
    k.hyp.hyp_vmemmap.set_host_share_guest_count(p * PAGE, 2)
    assert "share count differs" in inv.check_page_states(k.hyp)


def test_page_states_fire_on_a_guest_leaf_not_borrowed():
    k, p = fresh()
    vm = k.hyp.vms[0]
    k.ctx.call(mp.kvm_pgtable_stage2_map(vm.pgt, 0x10 * PAGE, PAGE, p * PAGE,
                                         KVM_PGTABLE_PROT_RWX, vm.vcpus[0].memcache))
    assert "maps it OWNED" in inv.check_page_states(k.hyp)


def test_page_states_wait_for_the_locks():
    """Mid-transition state is the lock holder's: judged once the locks are free."""
    k, p = fresh()
    monitor = inv.OwnershipMonitor(k.hyp)
    assert monitor.check() is None
    k.hyp.hyp_vmemmap.set_hyp_state(p * PAGE, PKVM_PAGE_OWNED)
    k.ctx.call(k.hyp.host_mmu.lock.lock())
    assert inv.check_page_states(k.hyp) is None and monitor.check() is None
    held = monitor.key()
    k.hyp.host_mmu.lock.unlock()
    assert monitor.key() != held
    assert inv.check_page_states(k.hyp) is not None
    assert "pkvm page states: pfn" in monitor.check()


def test_unshare_ignores_pin_breaks_page_states_and_el2_mappings():
    k = Pkvm(quirks=("unshare-ignores-pin",))
    p = k.host_pfns[0]
    assert k.host_share_hyp(p) == 0 and k.hyp_pin_shared_mem(p) == 0
    assert k.host_unshare_hyp(p) == 0
    assert "has references" in inv.check_page_states(k.hyp)
    assert "mapped at EL2" in inv.check_el2_mappings(k.hyp)


# --- host annotations -----------------------------------------------------------------------

def test_host_annotations_fire_on_nopage_without_annotation():
    k, p = fresh()
    k.hyp.hyp_vmemmap.set_host_state(p * PAGE, PKVM_NOPAGE)
    assert "host state NOPAGE but its host stage-2 entry is empty" in \
        inv.check_host_annotations(k.hyp)


def test_host_annotations_fire_on_an_annotation_the_host_state_ignores():
    k, _ = fresh()
    q = k.hyp_pfns[0]
    k.hyp.hyp_vmemmap.set_host_state(q * PAGE, PKVM_PAGE_OWNED)
    assert "host state OWNED but its host stage-2 entry is annotated" in \
        inv.check_host_annotations(k.hyp)


def test_host_annotations_fire_on_a_mapping_of_a_page_given_away():
    k, p = fresh()
    assert k.host_access(0, p * PAGE) == p
    k.hyp.hyp_vmemmap.set_host_state(p * PAGE, PKVM_NOPAGE)
    assert "is mapped" in inv.check_host_annotations(k.hyp)


# --- EL2 mappings ---------------------------------------------------------------------------

def test_el2_mappings_fire_on_a_host_page_mapped_at_el2():
    k, p = fresh()
    k.ctx.call(mp.kvm_pgtable_hyp_map(k.hyp.pkvm_pgtable, p * PAGE, PAGE, p * PAGE, PAGE_HYP))
    assert "but mapped at EL2" in inv.check_el2_mappings(k.hyp)


def test_el2_mappings_fire_on_a_pinned_page_not_mapped():
    k, p = fresh()
    assert k.host_share_hyp(p) == 0
    k.hyp.hyp_vmemmap.hyp_page_ref_inc(p)
    assert "but not mapped at EL2" in inv.check_el2_mappings(k.hyp)


# --- table refcounts ------------------------------------------------------------------------

def test_table_refcounts_fire_on_a_wrong_count():
    k, p = fresh()
    assert k.host_share_guest(p, 0x10) == 0
    pgd = k.hyp.vms[0].pgt.pgd
    k.hyp.hyp_vmemmap.hyp_page_ref_inc(pgd)
    assert inv.check_table_refcounts(k.hyp).startswith("vm0 stage-2: table page")


def test_pgd_refcount_quirk_breaks_table_refcounts():
    """B11: the host PGD's tail page has no reference of its own."""
    k = Pkvm(quirks=("pgd-refcount",))
    assert inv.check_table_refcounts(k.hyp).startswith("host stage-2: table page")
    assert inv.check_table_refcounts(Pkvm().hyp) is None


# --- stale TLBs -----------------------------------------------------------------------------

def test_tlbs_fire_on_a_stale_host_entry():
    k = Pkvm(quirks=("set-owner-no-tlbi",))
    p = k.host_pfns[0]
    assert k.host_access(1, p * PAGE) == p
    assert k.host_donate_hyp(p) == 0
    assert "cpu1's TLB maps host IPA" in inv.check_tlbs(k.hyp)
    # the host can still reach the page it gave away: what an access check catches
    assert k.host_access(1, p * PAGE) == p and not k.may_access(HOST, p)
    ref = Pkvm()
    assert ref.host_access(1, p * PAGE) == p and ref.host_donate_hyp(p) == 0
    assert inv.check_tlbs(ref.hyp) is None


def test_tlbs_fire_on_a_stale_guest_entry():
    k, p = fresh()
    assert k.host_share_guest(p, 0x10) == 0
    assert k.guest_access(0, 0, 0x10) == p
    entry = k.hyp.tlbs.lookup_s2(0, k.hyp.vms[0].vmid, 0x10 * PAGE)
    assert k.host_unshare_guest(0x10) == 0
    assert inv.check_tlbs(k.hyp) is None  # the unmap's TLBI removed it
    k.hyp.tlbs.fill_s2(0, k.hyp.vms[0].vmid, 0x10 * PAGE, *entry)
    assert "vm0 gfn 0x10" in inv.check_tlbs(k.hyp)


# --- may_access ---------------------------------------------------------------------------

def test_may_access():
    k, p = fresh()
    q = k.hyp_pfns[0]
    assert k.may_access(HOST, p) and not k.may_access(HOST, q) and k.may_access(HOST, 0)
    assert k.may_access(HYP, q) and not k.may_access(HYP, p)
    assert not k.may_access(0, 0x10)
    assert k.host_share_guest(p, 0x10) == 0
    assert k.may_access(0, 0x10) and k.may_access(0, 0x10, p) and not k.may_access(0, 0x10, q)
    assert k.may_access(HOST, p)  # the owner keeps access to what it shares
    assert k.host_share_hyp(p + 1) == 0
    assert k.may_access(HYP, p + 1) and k.may_access(HOST, p + 1)
    assert k.host_donate_hyp(p + 2) == 0
    assert not k.may_access(HOST, p + 2) and k.may_access(HYP, p + 2)


# --- the quirks that need a race --------------------------------------------------------------

@scenario("pkvm-invariants-race", params={"race": Param("share-vs-donate")},
          quirks={q: "" for q in QUIRKS})
def race(m: emu.sim.Machine, race: str) -> None:
    """Two host CPUs on one page: a share against a donation, or an access whose abort
    races with the host unmapping the address from its own stage-1."""
    hyp = mp.Hyp(m, memory_pages=64, nr_cpus=2)
    inv.register(m, hyp)
    p = hyp.host_pfns()[0]

    async def share() -> None:
        await mp.__pkvm_host_share_hyp(hyp, p)

    async def donate() -> None:
        await mp.__pkvm_host_donate_hyp(hyp, p, 1)

    async def access() -> None:
        await mp.host_mem_access(hyp, 0, p * PAGE, False)

    async def munmap() -> None:
        await mp.host_stage1_update(hyp, p * PAGE, None)

    pair = (share, donate) if race == "share-vs-donate" else (access, munmap)
    for cpu, fn in enumerate(pair):
        m.spawn(f"cpu{cpu}", fn)


def test_check_apply_unlocked_is_found_and_the_fixed_model_is_clean():
    found = emu.hunt(race, schedules=200, quirks=("check-apply-unlocked",))
    assert found.found is not None
    kinds = {v.kind for v in found.found.violations}
    assert kinds & {"invariant", "apply-failed"}, found.found.violations
    assert emu.hunt(race, schedules=200).found is None


def test_abort_bug_on_is_found_and_the_fixed_model_retries():
    params = {"race": "abort-vs-munmap"}
    found = emu.hunt(race, schedules=200, params=params, quirks=("abort-bug-on",))
    assert found.found is not None
    assert [v.kind for v in found.found.violations] == ["bug-on"]
    assert emu.hunt(race, schedules=200, params=params).found is None


# --- the incremental monitor ------------------------------------------------------------------

def watched(**kw) -> tuple[Pkvm, inv.OwnershipMonitor]:
    k = Pkvm(**kw)
    monitor = inv.OwnershipMonitor(k.hyp)
    assert monitor.check() is None and monitor.syncs == 1
    return k, monitor


def test_the_monitor_agrees_with_the_full_checks():
    """A long seeded run of every kind of call: after each, both say all is well, and the
    monitor never needs to start over."""
    import random

    rnd = random.Random(9)
    k, monitor = watched(memory_pages=1536)
    pfns, gfns = list(k.host_pfns[:6]), [0x10, 0x11, 0x12]
    q, h = mp.MEM_BASE_PFN + 512, 0x400  # a 2 MiB run of host pages for a block share
    assert q + 512 <= k.host_pfns.stop
    calls = [
        lambda: k.host_share_hyp(rnd.choice(pfns)),
        lambda: k.host_unshare_hyp(rnd.choice(pfns)),
        lambda: k.host_donate_hyp(rnd.choice(pfns)),
        lambda: k.hyp_donate_host(rnd.choice(pfns)),
        lambda: k.hyp_pin_shared_mem(rnd.choice(pfns)),
        lambda: k.host_share_ffa(rnd.choice(pfns)),
        lambda: k.host_share_guest(rnd.choice(pfns), rnd.choice(gfns)),
        lambda: k.host_unshare_guest(rnd.choice(gfns)),
        lambda: k.host_wrprotect_guest(rnd.choice(gfns)),
        lambda: k.host_test_clear_young_guest(rnd.choice(gfns)),
        lambda: k.host_share_guest(q, h, 512),
        lambda: k.host_unshare_guest(h, 512),
        lambda: k.guest_access(rnd.randrange(2), 0, rnd.choice(gfns)),
        lambda: k.host_access(rnd.randrange(2), (q + rnd.randrange(512)) << 12),
    ]
    results = set()
    for _ in range(300):
        results.add(rnd.choice(calls)())
        assert monitor.check() is None
        assert k.check() is None
    assert monitor.syncs == 1
    assert {0, -1, -2} <= results  # successes and refusals both happened


def test_the_monitor_fires_on_what_changed():
    k, monitor = watched()
    p = k.host_pfns[0]
    k.hyp.hyp_vmemmap.set_hyp_state(p * PAGE, PKVM_PAGE_SHARED_BORROWED)
    assert monitor.check().startswith("pkvm page states: pfn")
    k, monitor = watched()
    k.hyp.hyp_vmemmap.set_host_state(p * PAGE, PKVM_NOPAGE)
    problem = monitor.check()
    assert problem.startswith(("pkvm page states", "pkvm host annotations"))
    k, monitor = watched()
    k.ctx.call(mp.kvm_pgtable_hyp_map(k.hyp.pkvm_pgtable, p * PAGE, PAGE, p * PAGE, PAGE_HYP))
    assert monitor.check().startswith("pkvm el2 mappings: pfn")
    k, monitor = watched()
    k.hyp.hyp_vmemmap.hyp_page_ref_inc(k.hyp.host_mmu.pgt.pgd)
    assert monitor.check().startswith("pkvm table refcounts: host stage-2")
    k, monitor = watched()
    vm = k.hyp.vms[0]
    k.ctx.call(mp.kvm_pgtable_stage2_map(vm.pgt, 0x10 * PAGE, PAGE, p * PAGE,
                                         KVM_PGTABLE_PROT_RWX, vm.vcpus[0].memcache))
    assert "maps it OWNED" in monitor.check()
    k, monitor = watched()
    k.hyp.tlbs.fill_s2(0, 0, k.hyp_pfns[0] * PAGE, (k.hyp_pfns[0] * PAGE) | 0x7c3, 3)
    assert monitor.check().startswith("pkvm stale tlbs: cpu0's TLB maps host IPA")
    assert monitor.syncs == 1


def test_the_monitor_catches_the_quirks():
    k, monitor = watched(quirks=("set-owner-no-tlbi",))
    p = k.host_pfns[0]
    assert k.host_access(1, p * PAGE) == p and monitor.check() is None
    assert k.host_donate_hyp(p) == 0
    assert "stale tlbs" in monitor.check()
    k = Pkvm(quirks=("pgd-refcount",))
    assert inv.OwnershipMonitor(k.hyp).check().startswith("pkvm table refcounts")


def test_boot_images_are_faithful_copies():
    """A Hyp restored from its configuration's BootImage is the one boot builds."""
    Pkvm(memory_pages=96, nr_vms=2)  # boots, or finds the image an earlier test left
    restored = Pkvm(memory_pages=96, nr_vms=2).hyp
    mp._BOOT_IMAGES.clear()
    booted = Pkvm(memory_pages=96, nr_vms=2).hyp
    assert restored.boot_image is not booted.boot_image
    assert restored.mem.pages == booted.mem.pages
    for f in mp.BootImage._VMEMMAP:
        assert getattr(restored.hyp_vmemmap, f) == getattr(booted.hyp_vmemmap, f)
    assert [p.free_area for p in mp._pools(restored)] == \
        [p.free_area for p in mp._pools(booted)]
    assert [t.pgd for t in restored.page_tables()] == [t.pgd for t in booted.page_tables()]
    restored = Pkvm(memory_pages=96, nr_vms=2)
    # and nothing is shared: changing one leaves the other (and the image) alone
    p = restored.host_pfns[0]
    assert restored.host_donate_hyp(p) == 0
    again = Pkvm(memory_pages=96, nr_vms=2)
    assert again.state_names(p) == ("OWNED", "NOPAGE") and again.check() is None
