"""L0's handling of an L2 partition-scoped fault (book3s_hv_nested.c, v6.x:
``kvmhv_nested_page_fault``): the shadow PTE that maps an L2 guest real address straight to
host memory, composed from L1's L2->L1 PTE (read from L1's memory) and L0's L1->L0 PTE
(emu/kvm/radix_mmu.py), and inserted with its nested rmap entry.

``__kvmhv_nested_page_fault`` (tlb_lock and kvm->srcu held), step by step, with what each
outcome leaves in the ``VcpuFault`` (RESUME_HOST reflects the fault to L1 with fault_dsisr
and fault_gpa as they are then):

| step                  | case                                        | returns, and in vcpu    |
|-----------------------|---------------------------------------------|-------------------------|
| 1 PATE cache          | l1_gr_to_hr still 0 after a refresh         | RESUME_HOST, dsisr as is|
| 2 walk L1's table     | -EINVAL / -ENOENT / -EFAULT                 | RESUME_HOST; UNSUPP_MMU |
| (kvmhv_translate_     |                                             | / NOHPTE / PRTABLE_FAULT|
| addr_nested; every    |                                             | (+ fault_gpa: the table |
| fault_dsisr keeps     |                                             | address)                |
| ISSTORE)              |                                             |                         |
|                       | store, no W / load, neither R nor W         | RESUME_HOST; PROTFAULT  |
|                       | fetch (HISI), no X                          | RESUME_HOST; N_G_OR_CIP |
|                       |                                             | (into msr too)          |
|                       | any of these, and the hardware had found a  | shadow PTE invalidated, |
|                       | translation (PROTFAULT, BADACCESS,          | RESUME_GUEST            |
|                       | NOEXEC_OR_G or BAD_COPYPASTE in dsisr)      |                         |
| 3 R/C (DSISR_SET_RC)  | L1's PTE lacks R (C for a store)            | RESUME_HOST, dsisr as is|
|                       | L0's or the shadow PTE refuses              | invalidate, RESUME_GUEST|
|                       | both set, no other fault bit                | RESUME_GUEST            |
| 4 L1's page size      | below 64K                                   | -EINVAL                 |
| 5 memslot of L1's GPA | none, and PRTABLE_FAULT or BADACCESS        | DSI queued, RESUME_GUEST|
|                       | none                                        | MMIO: RESUME_HOST_NV    |
|                       | read-only, store                            | DSI queued, RESUME_GUEST|
| 6 L0's PTE            | absent, or read-only for a store:           | -EAGAIN: RESUME_GUEST;  |
|                       | kvmppc_book3s_instantiate_page              | an error is returned    |
| 7 compose and insert  | an invalidation since step 6's snapshot     | RESUME_GUEST, no change |
|                       | else the shadow PTE and its rmap entry      | 0 (RESUME_GUEST)        |

Choices the kernel source does not settle: the walk of L1's table is one step (the kernel
reads four doublewords of L1 memory in turn; L1's writes between them are not interleaved);
when instantiate_page returns RESUME_GUEST without a PTE the kernel goes on with an unset
``level`` and its own stale PTE into an insert that, in the model, always fails its notifier
check (while the VM runs only an invalidation empties a host PTE here), so the model returns
RESUME_GUEST there directly.
"""

from __future__ import annotations

from ..hw.memory import PAGE_SHIFT
from ..hw.radix import (
    EFAULT,
    EINVAL,
    ENOENT,
    PAGE_ACCESSED,
    PAGE_DIRTY,
    PAGE_EXEC,
    PAGE_READ,
    PAGE_WRITE,
    Leaf,
    WalkFault,
    walk,
)
from .nested import KvmNestedGuest, kvmhv_update_ptbl_cache
from .nested_rmap import n_rmap_encode
from .radix_mmu import (
    BOOK3S_INTERRUPT_H_INST_STORAGE,
    DSISR_BAD_COPYPASTE,
    DSISR_BAD_FAULT_64S,
    DSISR_BADACCESS,
    DSISR_ISSTORE,
    DSISR_NOEXEC_OR_G,
    DSISR_NOHPTE,
    DSISR_PROTFAULT,
    DSISR_PRTABLE_FAULT,
    DSISR_SET_RC,
    DSISR_UNSUPP_MMU,
    EAGAIN,
    KVM_MEM_READONLY,
    RESUME_GUEST,
    RESUME_HOST,
    SRR1_ISI_N_G_OR_CIP,
    SRR1_MSR_BITS,
    VcpuFault,
    find_kvm_nested_guest_pte,
    kvmppc_book3s_instantiate_page,
    kvmppc_core_queue_data_storage,
    kvmppc_create_pte,
    kvmppc_hv_emulate_mmio,
    kvmppc_hv_handle_set_rc,
    kvmppc_unmap_pte,
)
from .shadow_pte import compose_shadow_pte, level_to_shift

_WALK_DSISR = {EINVAL: DSISR_UNSUPP_MMU, ENOENT: DSISR_NOHPTE, EFAULT: DSISR_PRTABLE_FAULT}
"""What kvmhv_translate_addr_nested tells L1 for each error of the walk of its table."""
_HW_FOUND = DSISR_PROTFAULT | DSISR_BADACCESS | DSISR_NOEXEC_OR_G | DSISR_BAD_COPYPASTE
"""DSISR bits that mean the hardware had a translation (the shadow PTE is present)."""


async def kvmhv_invalidate_shadow_pte(gp: KvmNestedGuest, gpa: int) -> tuple[bool, int]:
    """Remove the shadow PTE mapping L2 ``gpa`` under mmu_lock, tlbie on the shadow LPID:
    (whether one was present, its page shift: PAGE_SHIFT if none). The PTE is looked up
    through the IDR by ``gp``'s L1 lpid; if the IDR no longer holds a guest there the
    kernel reads ``shift`` uninitialised (the model takes 0, so PAGE_SHIFT, and notes it)."""
    l1 = gp.l1_host
    mmu_lock = l1.kvm.mmu_lock
    await mmu_lock.lock()
    found, leaf = find_kvm_nested_guest_pte(l1, gp.l1_lpid, gpa)
    if found is None:
        l1.m.note(f"kvmhv_invalidate_shadow_pte: no nested guest {gp.l1_lpid} in the IDR, "
                  "shift read uninitialised")
    shift = leaf.shift if leaf is not None else PAGE_SHIFT
    if leaf is not None:
        kvmppc_unmap_pte(l1.mmu, found.shadow_pgtable, gpa, shift, None, gp.shadow_lpid)
    mmu_lock.unlock()
    return leaf is not None, shift


def _forward_to_l1(vcpu: VcpuFault, flags: int) -> int:
    vcpu.fault_dsisr = flags
    if vcpu.trap == BOOK3S_INTERRUPT_H_INST_STORAGE:
        vcpu.msr = (vcpu.msr & SRR1_MSR_BITS) | flags
    return RESUME_HOST


async def kvmhv_translate_addr_nested(vcpu: VcpuFault, gp: KvmNestedGuest, n_gpa: int,
                                      dsisr: int) -> tuple[int, Leaf | None]:
    """Walk L1's L2->L1 table for ``n_gpa`` and check the access: (0, L1's leaf), or
    (RESUME_HOST, None) with the reason L1 is to be told in ``vcpu``."""
    l1 = gp.l1_host
    flags = dsisr & DSISR_ISSTORE
    await l1.m.point(f"kvmppc_mmu_walk_radix_tree of L1's table for {n_gpa:#x}")
    gpte = walk(l1.read_guest, gp.l1_gr_to_hr, n_gpa)
    if isinstance(gpte, WalkFault):
        if gpte.err == EFAULT:
            vcpu.fault_gpa = gpte.addr
        return _forward_to_l1(vcpu, flags | _WALK_DSISR[gpte.err]), None
    if dsisr & DSISR_ISSTORE:
        if not gpte.pte & PAGE_WRITE:
            return _forward_to_l1(vcpu, flags | DSISR_PROTFAULT), None
    elif vcpu.trap == BOOK3S_INTERRUPT_H_INST_STORAGE:
        if not gpte.pte & PAGE_EXEC:
            return _forward_to_l1(vcpu, flags | SRR1_ISI_N_G_OR_CIP), None
    elif not gpte.pte & (PAGE_READ | PAGE_WRITE):
        return _forward_to_l1(vcpu, flags | DSISR_PROTFAULT), None
    return 0, gpte


async def kvmhv_handle_nested_set_rc(gp: KvmNestedGuest, n_gpa: int, gpte: Leaf,
                                     dsisr: int) -> int:
    """DSISR_SET_RC: RESUME_HOST if L1's PTE lacks a needed bit (L1 must set it); else set
    it in L0's PTE for L1's page and in the shadow PTE under mmu_lock: 0, or -EINVAL if
    either refuses."""
    l1 = gp.l1_host
    mmu = l1.mmu
    writing = bool(dsisr & DSISR_ISSTORE)
    pgflags = PAGE_ACCESSED | (PAGE_DIRTY if writing else 0)
    if pgflags & ~gpte.rc:
        return RESUME_HOST
    await l1.kvm.mmu_lock.lock()
    ret = EINVAL
    if kvmppc_hv_handle_set_rc(mmu, False, writing, gpte.real_address(n_gpa), l1.kvm.lpid) \
            and kvmppc_hv_handle_set_rc(mmu, True, writing, n_gpa, gp.l1_lpid):
        ret = 0
    l1.kvm.mmu_lock.unlock()
    return ret


async def __kvmhv_nested_page_fault(vcpu: VcpuFault, gp: KvmNestedGuest) -> int:
    """The L2 fault described by ``vcpu`` (gp->tlb_lock and kvm->srcu held): see the table
    above. RESUME_GUEST, RESUME_HOST, RESUME_HOST_NV (MMIO) or a negative errno."""
    l1 = gp.l1_host
    mmu = l1.mmu
    kvm = mmu.kvm
    dsisr = vcpu.fault_dsisr
    ea = vcpu.fault_dar
    writing = bool(dsisr & DSISR_ISSTORE)

    if not gp.l1_gr_to_hr:
        await kvmhv_update_ptbl_cache(gp)
        if not gp.l1_gr_to_hr:
            return RESUME_HOST
    n_gpa = vcpu.fault_gpa & ~0xF000_0000_0000_0FFF
    if not dsisr & DSISR_PRTABLE_FAULT:
        n_gpa |= ea & 0xFFF
    ret, gpte = await kvmhv_translate_addr_nested(vcpu, gp, n_gpa, dsisr)
    if ret == RESUME_HOST and dsisr & _HW_FOUND:
        await kvmhv_invalidate_shadow_pte(gp, n_gpa)  # L1 forbids what the hardware had
        return RESUME_GUEST
    if ret:
        return ret

    if dsisr & DSISR_SET_RC:
        ret = await kvmhv_handle_nested_set_rc(gp, n_gpa, gpte, dsisr)
        if ret == RESUME_HOST:
            return ret
        if ret:
            await kvmhv_invalidate_shadow_pte(gp, n_gpa)
            return RESUME_GUEST
        dsisr &= ~DSISR_SET_RC
        if not dsisr & (DSISR_BAD_FAULT_64S | DSISR_NOHPTE | DSISR_PROTFAULT):
            return RESUME_GUEST

    l1_shift = gpte.shift
    if l1_shift < PAGE_SHIFT:
        l1.m.note(f"KVM: L1 guest page shift ({l1_shift}) less than our own ({PAGE_SHIFT})")
        return EINVAL
    gpa = gpte.real_address(n_gpa)
    memslot = kvm.gfn_to_memslot(gpa >> PAGE_SHIFT)
    if memslot is None:  # (the model's lookup already skips a KVM_MEMSLOT_INVALID slot)
        if dsisr & (DSISR_PRTABLE_FAULT | DSISR_BADACCESS):
            kvmppc_core_queue_data_storage(vcpu, ea, dsisr)
            return RESUME_GUEST
        return kvmppc_hv_emulate_mmio(vcpu, gpa, ea, writing)
    kvm_ro = False
    if memslot.flags & KVM_MEM_READONLY:
        if writing:
            kvmppc_core_queue_data_storage(vcpu, ea, DSISR_ISSTORE | DSISR_PROTFAULT)
            return RESUME_GUEST
        kvm_ro = True

    mmu.touch_seq()
    mmu_seq = mmu.mmu_notifier_seq
    await kvm.mmu_lock.lock()
    leaf = mmu.pgtable.find(gpa)  # find_kvm_secondary_pte
    kvm.mmu_lock.unlock()
    pte, shift = (leaf.pte, leaf.shift) if leaf is not None else (0, PAGE_SHIFT)
    if leaf is None or (writing and not pte & PAGE_WRITE):
        ret, pte, level = await kvmppc_book3s_instantiate_page(mmu, gpa, memslot, writing,
                                                               kvm_ro)
        if ret == EAGAIN:
            return RESUME_GUEST
        if ret:
            return ret
        if not pte:  # RESUME_GUEST from a vanished host PTE: see the notes
            return RESUME_GUEST
        shift = level_to_shift(level)

    sp = compose_shadow_pte(pte, l0_shift=shift, l1_pte=gpte.pte, l1_shift=l1_shift, gpa=gpa,
                            n_gpa=n_gpa, writing=writing)
    n_rmap = n_rmap_encode(gp.l1_lpid, sp.n_gpa)
    ret = await kvmppc_create_pte(mmu, gp.shadow_pgtable, sp.pte, sp.n_gpa, sp.level, mmu_seq,
                                  gp.shadow_lpid, mmu.rmapp(memslot, sp.rmap_gfn), n_rmap)
    return RESUME_GUEST if ret == EAGAIN else ret


async def kvmhv_nested_page_fault(vcpu: VcpuFault, gp: KvmNestedGuest) -> int:
    """An L2's HDSI or HISI, as kvmppc_handle_nested_exit hands it over (holding
    kvm->srcu): ``__kvmhv_nested_page_fault`` under gp->tlb_lock."""
    await gp.tlb_lock.lock()
    ret = await __kvmhv_nested_page_fault(vcpu, gp)
    gp.tlb_lock.unlock()
    return ret
