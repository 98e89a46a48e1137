"""The direct pKVM API (emu.pkvm.Pkvm) through a long mixed sequence of v6.16 transitions
on one page, call for call with the kernel's return codes, each commented with the check in
mem_protect.c that decides it; every invariant is checked after every call. Then the block
(2 MiB) forms of the guest transitions, the memory-range checks, the host abort path, and
the hypercall layer."""

from __future__ import annotations

import pytest

from emu.pkvm import (
    PKVM_NOPAGE,
    PKVM_PAGE_OWNED,
    PKVM_PAGE_SHARED_BORROWED,
    PKVM_PAGE_SHARED_OWNED,
    Pkvm,
)
from emu.pkvm import errno_base as e
from emu.pkvm.hyp_main import KVM_HOST_SMCCC_FUNC, SMCCC_RET_NOT_SUPPORTED
from emu.pkvm.mem_protect import MEM_BASE_PFN
from emu.pkvm.pgtable import KVM_PGTABLE_PROT_DEVICE, KVM_PGTABLE_PROT_R, KVM_PGTABLE_PROT_RWX
from emu.sim.sequential import Finding

EPERM, ENOENT, EINVAL, EBUSY, E2BIG, ENOMEM, EFAULT = (
    -e.EPERM, -e.ENOENT, -e.EINVAL, -e.EBUSY, -e.E2BIG, -e.ENOMEM, -e.EFAULT)
RWX, R, DEVICE = KVM_PGTABLE_PROT_RWX, KVM_PGTABLE_PROT_R, KVM_PGTABLE_PROT_DEVICE


def expect(k: Pkvm, got: int | None, want: int | None) -> None:
    assert got == want
    assert k.check() is None


def states(k: Pkvm, pfn: int) -> tuple[int, int, int, int]:
    """(host state, hyp state, host_share_guest_count, refcount)."""
    info = k.page(pfn)
    return info.host_state, info.hyp_state, info.host_share_guest_count, info.refcount


def test_long_mixed_sequence_on_one_page():
    k = Pkvm()
    p, g = k.host_pfns[0], 0x10
    assert states(k, p) == (PKVM_PAGE_OWNED, PKVM_NOPAGE, 0, 0)
    # __pkvm_host_unshare_hyp: __host_check_page_state_range(SHARED_OWNED), host is OWNED
    expect(k, k.host_unshare_hyp(p), EPERM)
    # __pkvm_hyp_donate_host checks the hyp first: hyp NOPAGE != OWNED
    expect(k, k.hyp_donate_host(p), EPERM)
    # __pkvm_host_unshare_ffa: host OWNED != SHARED_OWNED
    expect(k, k.host_unshare_ffa(p), EPERM)
    # hyp_pin_shared_mem: host OWNED != SHARED_OWNED
    expect(k, k.hyp_pin_shared_mem(p), EPERM)
    # __check_host_shared_guest: kvm_pgtable_get_leaf finds no valid leaf at g
    expect(k, k.host_unshare_guest(g), ENOENT)
    # __pkvm_host_share_hyp: host OWNED and hyp NOPAGE (checked always since v6.16)
    expect(k, k.host_share_hyp(p), 0)
    assert states(k, p) == (PKVM_PAGE_SHARED_OWNED, PKVM_PAGE_SHARED_BORROWED, 0, 0)
    assert not k.page(p).el2_mapped  # v6.16 defers the EL2 mapping to the first pin
    # share_hyp again: host SHARED_OWNED != OWNED
    expect(k, k.host_share_hyp(p), EPERM)
    # __pkvm_host_donate_hyp: host not OWNED
    expect(k, k.host_donate_hyp(p), EPERM)
    # __pkvm_host_share_ffa: host not OWNED
    expect(k, k.host_share_ffa(p), EPERM)
    # __pkvm_hyp_donate_host: hyp SHARED_BORROWED != OWNED
    expect(k, k.hyp_donate_host(p), EPERM)
    # __pkvm_host_share_guest: guest g NOPAGE passes, host SHARED_OWNED with count 0 fails
    expect(k, k.host_share_guest(p, g), EPERM)
    # hyp_pin_shared_mem: host SHARED_OWNED, hyp SHARED_BORROWED: refcount 1, mapped at EL2
    expect(k, k.hyp_pin_shared_mem(p), 0)
    assert k.page(p).el2_mapped
    # a second pin: refcount 2
    expect(k, k.hyp_pin_shared_mem(p), 0)
    # __pkvm_host_unshare_hyp: both states pass, hyp_page_count() != 0
    expect(k, k.host_unshare_hyp(p), EBUSY)
    # hyp_unpin_shared_mem: refcount 1, still mapped
    expect(k, k.hyp_unpin_shared_mem(p), None)
    assert states(k, p)[3] == 1 and k.page(p).el2_mapped
    # still pinned
    expect(k, k.host_unshare_hyp(p), EBUSY)
    # the last unpin unmaps the page at EL2
    expect(k, k.hyp_unpin_shared_mem(p), None)
    assert states(k, p)[3] == 0 and not k.page(p).el2_mapped
    # unshare: SHARED_OWNED, SHARED_BORROWED, not pinned
    expect(k, k.host_unshare_hyp(p), 0)
    assert states(k, p) == (PKVM_PAGE_OWNED, PKVM_NOPAGE, 0, 0)
    # unshare again: host OWNED != SHARED_OWNED
    expect(k, k.host_unshare_hyp(p), EPERM)
    # __pkvm_host_share_ffa: host OWNED
    expect(k, k.host_share_ffa(p), 0)
    assert states(k, p) == (PKVM_PAGE_SHARED_OWNED, PKVM_NOPAGE, 0, 0)
    # share_ffa again: host not OWNED
    expect(k, k.host_share_ffa(p), EPERM)
    # __pkvm_host_unshare_hyp: host check passes, hyp NOPAGE != SHARED_BORROWED
    expect(k, k.host_unshare_hyp(p), EPERM)
    # hyp_pin_shared_mem: host check passes, hyp check fails
    expect(k, k.hyp_pin_shared_mem(p), EPERM)
    # __pkvm_host_share_guest: SHARED_OWNED with count 0 (an FF-A share)
    expect(k, k.host_share_guest(p, g), EPERM)
    # __pkvm_host_donate_hyp: host not OWNED
    expect(k, k.host_donate_hyp(p), EPERM)
    # __pkvm_host_unshare_ffa: host SHARED_OWNED
    expect(k, k.host_unshare_ffa(p), 0)
    # __pkvm_host_share_guest: prot & ~KVM_PGTABLE_PROT_RWX, before anything else
    expect(k, k.host_share_guest(p, g, prot=RWX | DEVICE), EINVAL)
    # __guest_check_transition_size: nr_pages neither 1 nor 512
    expect(k, k.host_share_guest(p, g, 2), EINVAL)
    # guest g NOPAGE, host OWNED: shared, count 1, guest SHARED_BORROWED
    expect(k, k.host_share_guest(p, g), 0)
    assert states(k, p) == (PKVM_PAGE_SHARED_OWNED, PKVM_NOPAGE, 1, 0)
    assert k.guest_state(0, g) == PKVM_PAGE_SHARED_BORROWED
    # __guest_check_page_state_range(NOPAGE) fails at g, before the host is looked at
    expect(k, k.host_share_guest(p, g), EPERM)
    # __pkvm_host_share_hyp: host SHARED_OWNED != OWNED
    expect(k, k.host_share_hyp(p), EPERM)
    # __pkvm_host_donate_hyp: host not OWNED
    expect(k, k.host_donate_hyp(p), EPERM)
    # __pkvm_host_share_ffa: host not OWNED
    expect(k, k.host_share_ffa(p), EPERM)
    # __pkvm_host_unshare_hyp: host passes, hyp NOPAGE != SHARED_BORROWED
    expect(k, k.host_unshare_hyp(p), EPERM)
    # hyp_pin_shared_mem: hyp NOPAGE != SHARED_BORROWED
    expect(k, k.hyp_pin_shared_mem(p), EPERM)
    # __pkvm_hyp_donate_host: hyp NOPAGE != OWNED
    expect(k, k.hyp_donate_host(p), EPERM)
    # kvm_pgtable_stage2_test_clear_young: the map set AF; mkold clears it
    expect(k, k.host_test_clear_young_guest(g, 1, True), 1)
    # AF now clear
    expect(k, k.host_test_clear_young_guest(g, 1, True), 0)
    # __pkvm_host_mkyoung_guest: sets AF, returns 0
    expect(k, k.host_mkyoung_guest(g), 0)
    # young again, and not cleared without mkold
    expect(k, k.host_test_clear_young_guest(g, 1, False), 1)
    # __pkvm_host_wrprotect_guest: clears S2AP_W of the leaf
    expect(k, k.host_wrprotect_guest(g), 0)
    assert k.guest_access(0, 0, g, write=True) == EPERM
    # __pkvm_host_relax_perms_guest: prot within RWX, the leaf gets W back
    expect(k, k.host_relax_perms_guest(g, RWX), 0)
    assert k.guest_access(0, 0, g, write=True) == p
    # __pkvm_host_relax_perms_guest: prot & ~KVM_PGTABLE_PROT_RWX
    expect(k, k.host_relax_perms_guest(g, DEVICE), EINVAL)
    # multi-share: SHARED_OWNED with count 1 is tolerated; count 2
    expect(k, k.host_share_guest(p, g + 1, prot=R), 0)
    assert states(k, p)[2] == 2
    # __guest_check_transition_size: nr_pages 2
    expect(k, k.host_unshare_guest(g, 2), EINVAL)
    # __check_host_shared_guest passes; count 1, the host keeps SHARED_OWNED
    expect(k, k.host_unshare_guest(g), 0)
    assert states(k, p) == (PKVM_PAGE_SHARED_OWNED, PKVM_NOPAGE, 1, 0)
    # no leaf at g any more
    expect(k, k.host_unshare_guest(g), ENOENT)
    # the last guest share: count 0, the host owns the page again
    expect(k, k.host_unshare_guest(g + 1), 0)
    assert states(k, p) == (PKVM_PAGE_OWNED, PKVM_NOPAGE, 0, 0)
    # __pkvm_host_donate_hyp: host OWNED, hyp NOPAGE: annotated away, mapped at EL2
    expect(k, k.host_donate_hyp(p), 0)
    assert states(k, p)[:2] == (PKVM_NOPAGE, PKVM_PAGE_OWNED) and k.page(p).el2_mapped
    # donate again: host NOPAGE != OWNED
    expect(k, k.host_donate_hyp(p), EPERM)
    # share_hyp: host NOPAGE
    expect(k, k.host_share_hyp(p), EPERM)
    # share_guest: host NOPAGE is the default case of the switch
    expect(k, k.host_share_guest(p, g), EPERM)
    # unshare_ffa: host NOPAGE
    expect(k, k.host_unshare_ffa(p), EPERM)
    # pin: host NOPAGE
    expect(k, k.hyp_pin_shared_mem(p), EPERM)
    # unshare_guest: no leaf
    expect(k, k.host_unshare_guest(g), ENOENT)
    # __pkvm_hyp_donate_host: hyp OWNED, host NOPAGE: the annotation goes, host OWNED
    expect(k, k.hyp_donate_host(p), 0)
    assert states(k, p) == (PKVM_PAGE_OWNED, PKVM_NOPAGE, 0, 0) and not k.page(p).el2_mapped
    # hyp no longer owns it
    expect(k, k.hyp_donate_host(p), EPERM)
    # the host refaults the idmap on its next access
    assert k.host_access(0, p << 12, write=True) == p
    assert k.check() is None


def test_mmio_and_range_checks():
    k = Pkvm()
    mmio = k.mmio_pfns[0]
    last = k.host_pfns[-1]
    # check_range_allowed_memory: not memory -> -EPERM
    assert k.host_share_hyp(mmio) == EPERM
    assert k.host_donate_hyp(mmio) == EPERM
    assert k.host_share_ffa(mmio) == EPERM
    # ... and before the locks for share_guest
    assert k.host_share_guest(mmio, 0x10) == EPERM
    # [p, p + n) crossing the end of its memblock: -EINVAL
    end = MEM_BASE_PFN + k.hyp.memory_pages
    assert k.host_donate_hyp(end - 1, 2) == EINVAL
    # a range spanning host pages and the hypervisor's: the first non-OWNED page fails it
    assert k.host_donate_hyp(last, 2) == EPERM
    assert k.host_state(last) == PKVM_PAGE_OWNED
    # the host maps MMIO on demand (RW, no state)
    assert k.host_access(0, mmio << 12) == mmio
    assert k.check() is None


def test_block_forms_of_guest_sharing():
    k = Pkvm(memory_pages=1024)
    q, h = MEM_BASE_PFN, 0x200  # a 2 MiB-aligned run of host pages, a 2 MiB-aligned gfn
    # __guest_check_transition_size: phys not 2 MiB-aligned
    expect(k, k.host_share_guest(q + 1, h, 512), EINVAL)
    # one page of the block is shared with the hyp
    expect(k, k.host_share_hyp(q + 7), 0)
    # every page is checked before any changes: page q+7 is SHARED_OWNED with count 0
    expect(k, k.host_share_guest(q, h, 512), EPERM)
    assert all(k.host_state(q + i) == PKVM_PAGE_OWNED for i in range(512) if i != 7)
    expect(k, k.host_unshare_hyp(q + 7), 0)
    # a level-2 block in the guest; every page's count 1
    expect(k, k.host_share_guest(q, h, 512), 0)
    assert {k.page(q + i).host_share_guest_count for i in range(512)} == {1}
    assert k.guest_state(0, h + 511) == PKVM_PAGE_SHARED_BORROWED
    # __check_host_shared_guest: the leaf's granule (2 MiB) != the size asked (4 KiB)
    expect(k, k.host_unshare_guest(h, 1), E2BIG)
    # __guest_check_transition_size: ipa not 2 MiB-aligned
    expect(k, k.host_unshare_guest(h + 1, 512), EINVAL)
    # young over the block
    expect(k, k.host_test_clear_young_guest(h, 512), 1)
    expect(k, k.host_unshare_guest(h, 512), 0)
    assert all(k.host_state(q + i) == PKVM_PAGE_OWNED for i in range(512))


def test_host_abort_path():
    k = Pkvm()
    p = k.host_pfns[3]
    # the first access faults, EL2 idmaps, the retry hits
    assert k.host_access(0, p << 12) == p
    assert k.hyp.tlbs.lookup_s2(0, 0, p << 12) is not None
    # the donation breaks the host's mapping with a TLBI on every CPU
    assert k.host_donate_hyp(p) == 0
    assert k.hyp.tlbs.lookup_s2(0, 0, p << 12) is None
    # the host touching a page it gave away: host_stage2_adjust_range -> -EPERM -> BUG_ON
    with pytest.raises(Finding, match=r"bug-on: BUG_ON\(ret && ret != -EAGAIN\)"):
        k.host_access(1, p << 12)


def test_host_stage1_fault_is_the_hosts():
    k = Pkvm()
    p = k.host_pfns[0]
    k.host_stage1_unmap(p << 12)
    assert k.host_access(0, p << 12) == EFAULT
    k.host_stage1_map(p << 12, (p + 1) << 12)
    assert k.host_access(0, p << 12) == p + 1


def test_hypercalls():
    k = Pkvm(nr_cpus=2)
    p, g = k.host_pfns[0], 0x20
    # no hyp vCPU loaded on cpu0: -EINVAL
    assert k.hcall(0, "__pkvm_host_share_guest", p, g, 1, RWX) == EINVAL
    assert k.vcpu_load(0, vm=0, vcpu=0)
    # a vCPU loaded on one CPU cannot be loaded on another
    assert not k.vcpu_load(1, vm=0, vcpu=0)
    assert k.hcall(0, "__pkvm_host_share_guest", p, g, 1, RWX) == 0
    assert k.guest_state(0, g) == PKVM_PAGE_SHARED_BORROWED
    handle = k.hyp.vms[0].handle
    assert k.hcall(1, "__pkvm_host_wrprotect_guest", handle, g, 1) == 0
    assert k.hcall(1, "__pkvm_host_test_clear_young_guest", handle, g, 1, 1) == 1
    assert k.hcall(0, "__pkvm_host_mkyoung_guest", g) == 0
    assert k.hcall(0, "__pkvm_host_relax_perms_guest", g, RWX) == 0
    # get_np_pkvm_hyp_vm: an unknown handle
    assert k.hcall(1, "__pkvm_host_unshare_guest", handle + 1, g, 1) == EINVAL
    assert k.hcall(1, "__pkvm_host_unshare_guest", handle, g, 1) == 0
    assert k.hcall(1, "__pkvm_host_share_hyp", p) == 0
    assert k.hcall(1, "__pkvm_host_unshare_hyp", p) == 0
    # the init-only calls are refused once pKVM is up; __pkvm_prot_finalize is -EPERM
    assert k.hcall(0, "__pkvm_init") == SMCCC_RET_NOT_SUPPORTED
    assert k.hcall(0, "__pkvm_prot_finalize") == EPERM
    assert k.hcall(0, KVM_HOST_SMCCC_FUNC("__pkvm_tlb_flush_vmid") + 100) == \
        SMCCC_RET_NOT_SUPPORTED
    k.vcpu_put(0)
    assert k.hyp.loaded_hyp_vcpu[0] is None
    assert k.check() is None


def test_memcache_refill_takes_host_pages_by_donation():
    k = Pkvm(memory_pages=1024)
    vcpu = k.hyp.vms[0].vcpus[0]
    vcpu.memcache.pages.clear()
    # the memcache is below min_pages and the host offers nothing: -ENOMEM
    assert k.host_share_guest(k.host_pfns[0], 0x30) == ENOMEM
    spare = k.host_pfns[-2:]
    k.host_topup_memcache(spare)
    assert k.host_share_guest(k.host_pfns[0], 0x30) == 0
    for pfn in spare:
        assert (k.host_state(pfn), k.hyp_state(pfn)) == (PKVM_NOPAGE, PKVM_PAGE_OWNED)
    assert k.check() is None


def test_ownership_table():
    k = Pkvm()
    p = k.host_pfns[0]
    k.host_share_hyp(p)
    k.host_share_guest(p + 1, 0x40)
    table = k.table()
    assert f"{p:#x} SHARED_OWNED    SHARED_BORROWED" in table
    assert "vm0:0x40 SHARED_BORROWED" in table
    assert len(table.splitlines()) == 3  # the head and the two changed pages
