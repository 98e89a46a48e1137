"""Each pKVM transition of mem_protect.c (v6.16): its success, and each of its error codes in
the kernel's check order (where two checks would fail, the one the kernel runs first
decides); the host abort path (adjust_range, the -ENOMEM recycle, __get_fault_info); and
what a release or a quirk changes. States the transitions cannot reach are made by hand,
through the vmemmap's own setters, to show which check comes first."""

from __future__ import annotations

import pytest

from emu.errors import EmuError
from emu.pkvm import (
    PKVM_NOPAGE,
    PKVM_PAGE_OWNED,
    PKVM_PAGE_SHARED_BORROWED,
    PKVM_PAGE_SHARED_OWNED,
    Pkvm,
)
from emu.pkvm import errno_base as e
from emu.pkvm import mem_protect as mp
from emu.pkvm.hyp_main import SMCCC_RET_NOT_SUPPORTED
from emu.pkvm.memory import hyp_alloc_pages
from emu.pkvm.pgtable import (
    KVM_PGTABLE_PROT_DEVICE,
    KVM_PGTABLE_PROT_R,
    KVM_PGTABLE_PROT_RWX,
    kvm_pgtable_get_leaf,
    kvm_pte_valid,
)
from emu.sim.sequential import Finding

EPERM, ENOENT, EINVAL, EBUSY, E2BIG, EAGAIN, U32_MAX = (
    -e.EPERM, -e.ENOENT, -e.EINVAL, -e.EBUSY, -e.E2BIG, -e.EAGAIN, mp.U32_MAX)
RWX, R, DEVICE = KVM_PGTABLE_PROT_RWX, KVM_PGTABLE_PROT_R, KVM_PGTABLE_PROT_DEVICE
PAGE = 1 << 12


def set_host(k: Pkvm, pfn: int, state: int) -> None:
    k.hyp.hyp_vmemmap.set_host_state(pfn * PAGE, state)


def set_hyp(k: Pkvm, pfn: int, state: int) -> None:
    k.hyp.hyp_vmemmap.set_hyp_state(pfn * PAGE, state)


@pytest.fixture
def k() -> Pkvm:
    return Pkvm()


@pytest.fixture
def p(k: Pkvm) -> int:
    return k.host_pfns[0]


def test_share_hyp(k, p):
    assert k.host_share_hyp(k.mmio_pfns[0]) == EPERM  # check_range_allowed_memory
    set_hyp(k, p, PKVM_PAGE_OWNED)
    assert k.host_share_hyp(p) == EPERM  # host OWNED passes, hyp NOPAGE fails
    set_hyp(k, p, PKVM_NOPAGE)
    assert k.host_share_hyp(p) == 0
    assert k.state_names(p) == ("SHARED_OWNED", "SHARED_BORROWED")
    assert k.host_share_hyp(p) == EPERM  # host not OWNED


def test_unshare_hyp_checks_host_then_hyp_then_pin(k, p):
    assert k.host_unshare_hyp(p) == EPERM
    assert k.host_share_hyp(p) == 0
    assert k.hyp_pin_shared_mem(p) == 0
    set_host(k, p, PKVM_PAGE_OWNED)
    assert k.host_unshare_hyp(p) == EPERM  # the host check, before the pin
    set_host(k, p, PKVM_PAGE_SHARED_OWNED)
    set_hyp(k, p, PKVM_NOPAGE)
    assert k.host_unshare_hyp(p) == EPERM  # v6.14 on: the hyp check, before the pin
    set_hyp(k, p, PKVM_PAGE_SHARED_BORROWED)
    assert k.host_unshare_hyp(p) == EBUSY
    k.hyp_unpin_shared_mem(p)
    assert k.host_unshare_hyp(p) == 0
    assert k.state_names(p) == ("OWNED", "NOPAGE")


def test_unshare_hyp_before_v6_14_refuses_the_pin_first():
    k = Pkvm(release="v6.2")
    p = k.host_pfns[0]
    assert k.host_share_hyp(p) == 0
    assert k.hyp_pin_shared_mem(p) == 0
    # hyp_ack_unshare: -EBUSY before its (debug-only) state check
    assert k.host_unshare_hyp(p) == EBUSY
    k.hyp_unpin_shared_mem(p)
    assert k.host_unshare_hyp(p) == 0


def test_donate_hyp(k, p):
    end = k.hyp_pfns.stop
    assert k.host_donate_hyp(end - 1, 2) == EINVAL  # crosses the memblock's end
    assert k.host_donate_hyp(k.mmio_pfns[0]) == EPERM  # not memory
    set_hyp(k, p + 1, PKVM_PAGE_OWNED)
    assert k.host_donate_hyp(p, 2) == EPERM  # host OWNED for both, hyp not NOPAGE at p + 1
    assert k.host_state(p) == PKVM_PAGE_OWNED  # nothing applied
    set_hyp(k, p + 1, PKVM_NOPAGE)
    assert k.host_donate_hyp(p, 2) == 0
    for pfn in (p, p + 1):
        assert k.state_names(pfn) == ("NOPAGE", "OWNED") and k.page(pfn).el2_mapped
    _, pte, _ = kvm_pgtable_get_leaf(k.hyp.host_mmu.pgt, p * PAGE)
    assert pte and not kvm_pte_valid(pte)  # the owner annotation


def test_hyp_donate_host_checks_hyp_first(k, p):
    assert k.hyp_donate_host(p) == EPERM  # hyp NOPAGE != OWNED
    set_hyp(k, p, PKVM_PAGE_OWNED)
    assert k.hyp_donate_host(p) == EPERM  # hyp passes, host OWNED != NOPAGE
    set_hyp(k, p, PKVM_NOPAGE)
    assert k.host_donate_hyp(p) == 0
    assert k.hyp_donate_host(p) == 0
    assert k.state_names(p) == ("OWNED", "NOPAGE") and not k.page(p).el2_mapped
    _, pte, _ = kvm_pgtable_get_leaf(k.hyp.host_mmu.pgt, p * PAGE)
    assert pte == 0  # the annotation is gone: the host refaults lazily


def test_pin_and_unpin(k, p):
    assert k.hyp_pin_shared_mem(p) == EPERM  # host OWNED
    assert k.host_share_hyp(p) == 0
    set_hyp(k, p, PKVM_NOPAGE)
    assert k.hyp_pin_shared_mem(p) == EPERM  # host passes, hyp fails
    set_hyp(k, p, PKVM_PAGE_SHARED_BORROWED)
    assert k.hyp_pin_shared_mem(p) == 0 and k.page(p).refcount == 1 and k.page(p).el2_mapped
    k.hyp_unpin_shared_mem(p)
    assert k.page(p).refcount == 0 and not k.page(p).el2_mapped
    # hyp_page_ref_dec: BUG_ON(!p->refcount)
    with pytest.raises(Finding, match="bug-on"):
        k.hyp_unpin_shared_mem(p)


def test_pin_covers_every_page_of_the_range(k, p):
    assert k.host_share_hyp(p) == 0
    assert k.hyp_pin_shared_mem(p, 2) == EPERM  # page p + 1 is not shared
    assert k.page(p).refcount == 0
    assert k.host_share_hyp(p + 1) == 0
    assert k.hyp_pin_shared_mem(p, 2) == 0
    assert (k.page(p).refcount, k.page(p + 1).refcount) == (1, 1)


def test_ffa(k, p):
    assert k.host_share_ffa(k.mmio_pfns[0]) == EPERM
    assert k.host_unshare_ffa(p) == EPERM
    assert k.host_share_ffa(p, 2) == 0
    assert k.state_names(p + 1) == ("SHARED_OWNED", "NOPAGE")
    assert k.host_share_ffa(p) == EPERM
    assert k.host_unshare_ffa(p, 2) == 0
    # the proxy: a handle per share, reclaimed once
    handle = k.ffa_mem_share(p)
    assert handle > 0
    assert k.ffa_mem_share(p) == EPERM
    assert k.ffa_mem_reclaim(handle) == 0
    assert k.ffa_mem_reclaim(handle) == ENOENT
    assert k.check() is None


def test_share_guest_check_order(k, p):
    # prot before size, size before memory, memory before the locks
    assert k.host_share_guest(k.mmio_pfns[0], 0x10, 2, RWX | DEVICE) == EINVAL
    assert k.host_share_guest(k.mmio_pfns[0], 0x10, 2) == EINVAL
    assert k.host_share_guest(p + 1, 0x200, 512) == EINVAL  # phys not 2 MiB-aligned
    assert k.host_share_guest(mp.MEM_BASE_PFN, 0x200, 512) == EINVAL  # crosses memory's end
    assert k.host_share_guest(k.mmio_pfns[0], 0x10) == EPERM
    # the guest's state before the host's
    assert k.host_share_guest(p, 0x10) == 0
    assert k.host_donate_hyp(p + 1) == 0
    assert k.host_share_guest(p + 1, 0x10) == EPERM  # gfn taken (host NOPAGE never read)
    assert k.host_share_guest(p + 1, 0x11) == EPERM  # host NOPAGE
    assert k.host_share_hyp(p + 2) == 0
    assert k.host_share_guest(p + 2, 0x11) == EPERM  # SHARED_OWNED with no guest share
    k.hyp.hyp_vmemmap.set_host_share_guest_count(p * PAGE, U32_MAX)
    assert k.host_share_guest(p, 0x11) == EBUSY  # the count would overflow
    k.hyp.hyp_vmemmap.set_host_share_guest_count(p * PAGE, 1)
    assert k.host_share_guest(p, 0x11) == 0  # multi-share
    assert k.page(p).host_share_guest_count == 2
    assert k.check() is None


def test_unshare_guest_check_order(k, p):
    assert k.host_unshare_guest(0x10, 3) == EINVAL
    assert k.host_unshare_guest(0x10) == ENOENT
    assert k.host_share_guest(p, 0x10) == 0
    set_host(k, p, PKVM_PAGE_OWNED)
    assert k.host_unshare_guest(0x10) == EPERM  # host not SHARED_OWNED
    set_host(k, p, PKVM_PAGE_SHARED_OWNED)
    k.hyp.hyp_vmemmap.set_host_share_guest_count(p * PAGE, 0)
    k.hyp.hyp_vmemmap.set_host_share_guest_count(p * PAGE, 1)
    assert k.host_unshare_guest(0x10) == 0
    assert k.state_names(p) == ("OWNED", "NOPAGE") and k.guest_state(0, 0x10) == PKVM_NOPAGE
    assert k.host_share_guest(p, 0x10) == 0
    k.hyp.hyp_vmemmap.set_host_share_guest_count(p * PAGE, 0)
    # WARN_ON(!page->host_share_guest_count): a finding (the machine stops there)
    with pytest.raises(Finding, match="WARN_ON"):
        k.host_unshare_guest(0x10)


def test_unshare_guest_refuses_a_leaf_the_guest_does_not_borrow(k, p):
    vm = k.hyp.vms[0]
    # a leaf with state OWNED (as protected-guest donation would leave it)
    k.ctx.call(mp.kvm_pgtable_stage2_map(vm.pgt, 0x10 * PAGE, PAGE, p * PAGE, RWX,
                                         vm.vcpus[0].memcache))
    assert k.host_unshare_guest(0x10) == EPERM


def test_guest_helpers(k, p):
    assert k.host_relax_perms_guest(0x10, RWX | DEVICE) == EINVAL
    # the attribute walkers on an unmapped gfn: relax (a fault handler) -EAGAIN, the others 0
    assert k.host_relax_perms_guest(0x10, RWX) == EAGAIN
    assert k.host_wrprotect_guest(0x10) == 0
    assert k.host_test_clear_young_guest(0x10) == 0
    assert k.host_mkyoung_guest(0x10) == 0
    assert k.host_wrprotect_guest(0x10, 2) == EINVAL
    assert k.host_test_clear_young_guest(0x10, 2) == EINVAL
    assert k.host_share_guest(p, 0x10, prot=R) == 0
    assert k.guest_access(0, 0, 0x10, write=True) == EPERM
    assert k.host_relax_perms_guest(0x10, RWX) == 0
    assert k.guest_access(0, 0, 0x10, write=True) == p
    assert k.host_wrprotect_guest(0x10) == 0
    assert k.guest_access(1, 0, 0x10, write=True) == EPERM
    assert k.host_test_clear_young_guest(0x10, mkold=True) == 1
    assert k.host_test_clear_young_guest(0x10) == 0
    assert k.host_mkyoung_guest(0x10) == 0
    assert k.host_test_clear_young_guest(0x10, mkold=False) == 1


def test_protected_vm_is_refused_first(k):
    k.hyp.vms[0].is_protected = True
    assert k.host_relax_perms_guest(0x10, RWX | DEVICE) == EPERM
    assert k.host_wrprotect_guest(0x10, 2) == EPERM
    assert k.host_test_clear_young_guest(0x10, 2) == EPERM
    assert k.host_mkyoung_guest(0x10) == EPERM
    assert k.hcall(0, "__pkvm_host_unshare_guest", k.hyp.vms[0].handle, 0x10, 1) == EINVAL


def test_host_stage2_adjust_range(k, p):
    hyp = k.hyp
    start, end = hyp.mem_start, hyp.mem_end
    assert mp.host_stage2_adjust_range(hyp, p * PAGE, start, end) == (0, p * PAGE, (p + 1) * PAGE)
    assert k.ctx.call(mp.host_stage2_idmap(hyp, p * PAGE)) == 0
    assert k.ctx.call(mp.host_stage2_idmap(hyp, p * PAGE)) == EAGAIN  # mapped already
    hyp_page = k.hyp_pfns[0] * PAGE
    assert mp.host_stage2_adjust_range(hyp, hyp_page, start, end)[0] == EPERM  # annotated
    # MMIO: the whole gap below memory is one 2 MiB block
    assert mp.host_stage2_adjust_range(hyp, 0x5000, 0, start) == (0, 0, start)


def test_host_idmaps_blocks_where_it_can():
    k = Pkvm(memory_pages=1024)
    p = k.host_pfns[0]
    assert k.host_access(0, p * PAGE) == p
    _, pte, level = kvm_pgtable_get_leaf(k.hyp.host_mmu.pgt, p * PAGE)
    assert kvm_pte_valid(pte) and level == 2
    # a donation splits the block: only the page given away is annotated
    assert k.host_donate_hyp(p + 5) == 0
    assert k.host_access(1, (p + 6) * PAGE) == p + 6
    assert k.check() is None


def test_host_stage2_try_recycles_mmio_on_enomem():
    k = Pkvm(memory_pages=1024)
    p = k.host_pfns[0]
    assert k.host_access(0, p * PAGE) == p
    # a page-granular MMIO mapping (a protection other than PKVM_HOST_MMIO_PROT forces
    # pages), in a gigabyte of its own: two table pages only MMIO uses
    high_mmio = 1 << 30
    k.ctx.call(mp.host_stage2_idmap_locked(k.hyp, high_mmio, PAGE, R))
    while hyp_alloc_pages(k.hyp.host_s2_pool, 0) is not None:
        pass
    # splitting the memory block needs a table: -ENOMEM, unmap every MMIO range, retry
    assert k.host_donate_hyp(p + 5) == 0
    _, pte, _ = kvm_pgtable_get_leaf(k.hyp.host_mmu.pgt, high_mmio)
    assert pte == 0
    assert k.check() is None


def test_abort_retries_when_at_fails(k, p):
    hyp = k.hyp
    k.host_stage1_unmap(p * PAGE)
    # EL2 cannot resolve the VA any more: it returns and the host retries
    assert k.ctx.call(mp.handle_host_mem_abort(hyp, 0, p * PAGE, p * PAGE)) == EAGAIN


def test_abort_bug_on_quirk_panics_when_at_fails():
    k = Pkvm(quirks=("abort-bug-on",))
    p = k.host_pfns[0]
    k.host_stage1_unmap(p * PAGE)
    with pytest.raises(Finding, match=r"bug-on: BUG_ON\(!__get_fault_info"):
        k.ctx.call(mp.handle_host_mem_abort(k.hyp, 0, p * PAGE, p * PAGE))


def test_abort_trusts_hpfar_without_the_erratum():
    k = Pkvm(arm64_workaround_834220=False)
    p = k.host_pfns[0]
    k.host_stage1_unmap(p * PAGE)
    assert k.ctx.call(mp.handle_host_mem_abort(k.hyp, 0, p * PAGE, p * PAGE)) == 0


def test_unshare_ignores_pin_quirk(p):
    k = Pkvm(quirks=("unshare-ignores-pin",))
    assert k.host_share_hyp(p) == 0
    assert k.hyp_pin_shared_mem(p) == 0
    assert k.host_unshare_hyp(p) == 0  # the pinned page goes back to the host
    assert k.state_names(p) == ("OWNED", "NOPAGE") and k.page(p).refcount == 1


def test_check_apply_unlocked_alone_changes_nothing(p):
    """With one caller the dropped locks are retaken at once: the same results."""
    k, ref = Pkvm(quirks=("check-apply-unlocked",)), Pkvm()
    for m in (k, ref):
        assert m.host_share_hyp(p) == 0 and m.host_donate_hyp(p + 1) == 0
        assert m.host_share_guest(p + 2, 0x10) == 0 and m.host_share_ffa(p + 3) == 0
        assert m.host_unshare_guest(0x10) == 0 and m.hyp_donate_host(p + 1) == 0
    assert k.table() == ref.table()


def test_v6_1_keeps_states_in_pte_bits_and_maps_at_once():
    k = Pkvm(release="v6.1")
    p = k.host_pfns[0]
    assert k.host_share_hyp(p) == 0
    # the hyp state is the EL2 mapping's software bits; the host's, its stage-2 entry's
    assert k.page(p).el2_mapped
    assert k.state_names(p) == ("SHARED_OWNED", "SHARED_BORROWED")
    _, pte, level = kvm_pgtable_get_leaf(k.hyp.host_mmu.pgt, p * PAGE)
    assert kvm_pte_valid(pte) and level == 3
    assert k.host_unshare_hyp(p) == 0
    assert not k.page(p).el2_mapped and k.state_names(p) == ("OWNED", "NOPAGE")
    # no host<->hyp donation, no pins, no FF-A, no guest sharing in v6.1 (v6.2, v6.2, v6.5,
    # v6.14)
    with pytest.raises(EmuError, match="has_host_donation"):
        k.host_donate_hyp(p)
    with pytest.raises(EmuError, match="has_pins"):
        k.hyp_pin_shared_mem(p)
    with pytest.raises(EmuError, match="has_ffa"):
        k.host_share_ffa(p)
    with pytest.raises(EmuError, match="has_guest_share"):
        k.host_unshare_guest(0x10)
    assert k.hcall(0, "__pkvm_host_share_guest", p, 0x10, 1, RWX) == SMCCC_RET_NOT_SUPPORTED
    assert k.check() is None


def test_hyp_checks_are_debug_only_before_v6_16():
    """A hyp state the host check cannot see (made by hand): v6.16 refuses, v6.14 shares."""
    new, old = Pkvm(), Pkvm(release="v6.14")
    for k in (new, old):
        p = k.host_pfns[0]
        k.ctx.call(mp.kvm_pgtable_hyp_map(k.hyp.pkvm_pgtable, p * PAGE, PAGE, p * PAGE,
                                          mp.PAGE_HYP))
        set_hyp(k, p, PKVM_PAGE_OWNED)
    assert new.host_share_hyp(new.host_pfns[0]) == EPERM
    assert old.host_share_hyp(old.host_pfns[0]) == 0
