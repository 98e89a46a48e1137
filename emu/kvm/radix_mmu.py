"""L0's partition-scoped MMU for a radix guest, as an L1 hypervisor needs it
(book3s_64_mmu_radix.c, v6.x): L1's table in L0, its page faults, the MMU notifier, and the
nested rmap that ties each L1 page to the shadow PTEs made of it.

State (``kvm->arch`` and the memslots' arch data), changed under ``kvm->mmu_lock``:

| model                    | kernel                                   | what                    |
|--------------------------|------------------------------------------|-------------------------|
| ``pgtable``              | kvm->arch.pgtable                        | L1 GPA -> host address  |
| ``mmu_notifier_seq``     | kvm->mmu_notifier_seq (v6.1:             | bumped by every         |
|                          | mmu_invalidate_seq)                      | invalidation            |
| ``rmap[slot][gfn-base]`` | memslot->arch.rmap[gfn - base_gfn]       | nested rmap word        |

Paths and their locks:

| path               | functions                                          | locks                 |
|--------------------|----------------------------------------------------|-----------------------|
| L1's HDSI          | kvmppc_book3s_radix_page_fault ->                  | srcu (caller);        |
|                    | kvmppc_book3s_instantiate_page -> kvmppc_create_pte | mmap_lock; mmu_lock   |
| host unmap or move | kvm_mmu_notifier_invalidate_range_start ->          | mmap_lock or a        |
|                    | kvm_unmap_radix -> kvmppc_unmap_pte ->              | migration entry       |
|                    | kvmhv_remove_nest_rmap_range                        | (caller); mmu_lock    |
| an L2's fault      | emu/kvm/nested_mmu.py, through kvmppc_create_pte    | + gp->tlb_lock        |
|                    | with the rmap word of the L1 page                   |                       |

The nested rmap glue of book3s_hv_nested.c (``kvmhv_insert_nest_rmap``,
``kvmhv_remove_nest_rmap_range`` and its helpers) lives here: kvmppc_create_pte and
kvmppc_unmap_pte call it, and it calls kvmppc_unmap_pte back.

Choices the kernel source does not settle for the model:
- The notifier's invalidate_range_start and _end are one call (emu/kvm/mm.py calls each
  notifier once, before the host page changes), so the unmap and the sequence bump are one
  mmu_lock section and ``mmu_invalidate_retry``'s in-progress count is always 0. A fault
  cannot see the old host page after it: munmap holds mmap_lock for write, a migration
  holds a migration entry, until the host PTE has changed.
- The host mm (emu/hw/hostmm.py) has 64K pages only, so instantiate_page maps at level 0;
  larger L0 leaves exist only where a scenario installs them in ``pgtable`` itself.
- The host PTE of a populated anonymous page is R/W and referenced (``HOST_PTE_FLAGS``);
  __kvm_faultin_pfn is ``kvm.gfn_to_pfn`` (get_user_pages with a page reference, put after
  the insert), which looks the memslot up again (the kernel uses the one it was given: the
  same slot unless memslots change meanwhile, which no path here does).
- kvmppc_create_pte allocates missing tables under mmu_lock, where the kernel preallocates
  them from a lockless look and returns -ENOMEM or -EAGAIN when the look went stale; a
  larger leaf on the way is always unmapped (the kernel's -EAGAIN when it did not expect
  one is not modelled). No page-walk cache is modelled, so kvmppc_radix_flush_pwc is not.
- The hardware never sets R or C in a partition-scoped PTE: an access to a leaf lacking R,
  or C for a store, is an HDSI with DSISR_SET_RC (``hdsi_dsisr``), as POWER9 reports it.
- An L1 access has no process-scoped translation here: its effective address is its GPA.
- Dirty logging, aging and secure VMs (kvmppc_update_dirty_map, kvm_age_radix,
  KVMPPC_SECURE_INIT_DONE) are not modelled.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from ..hw.memory import PAGE_SHIFT
from ..hw.radix import (
    PAGE_ACCESSED,
    PAGE_DIRTY,
    PAGE_EXEC,
    PAGE_RW,
    PAGE_WRITE,
    PTE_RPN_MASK,
    FrameAllocator,
    Leaf,
    RadixTree,
    TableMemory,
    make_pte,
)
from ..sim import accesses
from .hvcall import MASK64
from .nested import _find_nested
from .nested_rmap import RmapWord, n_rmap_gpa, n_rmap_lpid
from .shadow_pte import level_to_shift, shadow_pte_maps
from .vm import KVM, Memslot

if TYPE_CHECKING:
    from .nested import KvmNestedGuest, L1Host

KVM_MEM_READONLY = 1 << 1
"""include/uapi/linux/kvm.h: a memslot the guest may only read."""

# asm/kvm_asm.h: what an exit handler returns
RESUME_FLAG_NV = 1 << 0
RESUME_FLAG_HOST = 1 << 1
RESUME_GUEST = 0
RESUME_HOST = RESUME_FLAG_HOST
RESUME_HOST_NV = RESUME_FLAG_HOST | RESUME_FLAG_NV
BOOK3S_INTERRUPT_H_DATA_STORAGE = 0xE00
BOOK3S_INTERRUPT_H_INST_STORAGE = 0xE20

# asm/reg.h: DSISR (and the SRR1 bits an HISI reports the same way)
DSISR_NOHPTE = 0x4000_0000
DSISR_ATTR_CONFLICT = 0x2000_0000
DSISR_NOEXEC_OR_G = 0x1000_0000
DSISR_PROTFAULT = 0x0800_0000
DSISR_BADACCESS = 0x0400_0000
DSISR_ISSTORE = 0x0200_0000
DSISR_KEYFAULT = 0x0020_0000
DSISR_UNSUPP_MMU = 0x0008_0000
DSISR_SET_RC = 0x0004_0000
DSISR_PRTABLE_FAULT = 0x0002_0000
DSISR_BAD_COPYPASTE = 0x0000_0008
DSISR_BAD_FAULT_64S = (0x8000_0000 | DSISR_BADACCESS | 0x0010_0000 | DSISR_ATTR_CONFLICT
                       | DSISR_KEYFAULT | DSISR_UNSUPP_MMU | DSISR_PRTABLE_FAULT | 0x4000
                       | DSISR_BAD_COPYPASTE | 0x4 | 0x2)
"""BAD_FAULT_32S (BAD_DIRECT_ST, BADACCESS, BAD_EXT_CTRL) and the 64S-only bad bits."""
SRR1_ISI_N_G_OR_CIP = 0x1000_0000
SRR1_MSR_BITS = ~0x783F_0000 & MASK64
"""The MSR bits SRR1 keeps on an interrupt (the rest say why it happened)."""

EAGAIN = -errno.EAGAIN
EFAULT = -errno.EFAULT
EINVAL = -errno.EINVAL

HOST_PTE_FLAGS = PAGE_RW | PAGE_ACCESSED
"""The host (QEMU) PTE of a populated anonymous page, whose bits instantiate_page starts
from: readable, writable, referenced; the model keeps no host dirty bit."""

TlbiePage = Callable[[int, int, int], None]
"""kvmppc_radix_tlbie_page(addr, pshift, lpid): a tlbie of one page on bare metal
(``Tlbs.tlbie(lpid, ric=0, is_=0, gpa=addr, shift=pshift)``)."""


@attrs.define
class VcpuFault:
    """The part of ``vcpu->arch`` a partition-scoped page-fault handler reads and writes: the
    exit handler's ``trap``, ``fault_dsisr``, ``fault_dar`` (the effective address) and
    ``fault_gpa`` (ASDR: the guest real address), and what the handler leaves besides its
    return value. On RESUME_HOST from a nested fault these are what L1 is told (hdsisr,
    hdar, asdr); an HISI's reason bits go into ``msr`` too."""

    trap: int
    fault_dsisr: int
    fault_dar: int
    fault_gpa: int
    msr: int = 0
    """shregs.msr."""
    queued_dsi: tuple[int, int] | None = None
    """(ea, dsisr) of kvmppc_core_queue_data_storage: a DSI for the guest that faulted."""
    mmio: tuple[int, int, bool] | None = None
    """(gpa, ea, is_store) of kvmppc_hv_emulate_mmio: ``vcpu->mmio_needed``, an exit to
    userspace (for an L2, H_ENTER_NESTED then returns H_TOO_HARD)."""

    @classmethod
    def hdsi(cls, gpa: int, dsisr: int, ea: int | None = None) -> VcpuFault:
        """An HDSI at guest real address ``gpa`` (effective address ``ea``, default ``gpa``)."""
        return cls(BOOK3S_INTERRUPT_H_DATA_STORAGE, dsisr, gpa if ea is None else ea, gpa)


@attrs.define(eq=False)
class RadixMmu:
    """``kvm->arch``'s radix MMU of one guest (an L1 hypervisor), with the memslots' nested
    rmap words. ``l1`` is its nested state (emu/kvm/nested.py), whose ``mmu`` this sets."""

    kvm: KVM
    tlbie: TlbiePage
    l1: L1Host | None = None
    frames: FrameAllocator | None = None
    """Where table pages come from; default the host's normal memory."""
    pgtable: RadixTree = attrs.field(init=False)
    mmu_notifier_seq: int = 0
    rmap: dict[Memslot, dict[int, RmapWord]] = attrs.Factory(dict)
    """memslot->arch.rmap, sparse: memslot -> {gfn - base_gfn: word} (an absent word is 0)."""
    rmap_version: int = 0
    """Bumped by every change of an rmap word (for the invariants' fingerprints)."""

    def __attrs_post_init__(self) -> None:
        self.pgtable = RadixTree(TableMemory(self.frames or self.kvm.memory.normal))
        if self.l1 is not None:
            self.l1.mmu = self

    def touch_seq(self, write: bool = False) -> None:
        """This step reads (bumps) ``mmu_notifier_seq``, ``mmu_seq:<lpid>``."""
        if accesses.current.on:
            accesses.current.touch(f"mmu_seq:{self.kvm.lpid}", write)

    def rmapp(self, memslot: Memslot, gfn: int) -> RmapWord:
        """``&memslot->arch.rmap[gfn - memslot->base_gfn]``."""
        return self.rmap.setdefault(memslot, {}).setdefault(
            gfn - memslot.base_gfn, RmapWord(name=f"rmap:{self.kvm.lpid}:{gfn:#x}"))


# ---------------------------------------------------------------------- hardware
def hdsi_dsisr(leaf: Leaf | None, writing: bool) -> int:
    """What the MMU reports for a data access through partition-scoped ``leaf`` (None: no
    translation): 0 if it completes, else the HDSI's DSISR. Reading needs R or W (as the
    kernel's own check of an L1 PTE has it); a leaf lacking R, or C for a store, is
    DSISR_SET_RC."""
    store = DSISR_ISSTORE if writing else 0
    if leaf is None:
        return DSISR_NOHPTE | store
    if not leaf.pte & (PAGE_WRITE if writing else PAGE_RW):
        return DSISR_PROTFAULT | store
    if not leaf.pte & PAGE_ACCESSED or (writing and not leaf.pte & PAGE_DIRTY):
        return DSISR_SET_RC | store
    return 0


# ---------------------------------------------------------------------- the nested rmap glue
def find_kvm_nested_guest_pte(l1: L1Host | None, lpid: int, gpa: int
                              ) -> tuple[KvmNestedGuest | None, Leaf | None]:
    """The guest the IDR holds at L1 lpid ``lpid`` (mmu_lock held) and its shadow leaf at
    ``gpa``: note that it is looked up by lpid, not handed in."""
    gp = _find_nested(l1, lpid) if l1 is not None else None
    return gp, gp.shadow_pgtable.find(gpa) if gp is not None else None


def kvmhv_insert_nest_rmap(mmu: RadixMmu, rmapp: RmapWord, n_rmap: int) -> None:
    """Record shadow PTE ``n_rmap`` on an L1 page's word (mmu_lock held), unless the word
    already has it (quirk ``rmap-no-dedup``: without that scan)."""
    rmapp.insert(n_rmap, dedup=mmu.l1 is None or "rmap-no-dedup" not in mmu.l1.quirks)
    mmu.rmap_version += 1


def kvmhv_remove_nest_rmap(mmu: RadixMmu, n_rmap: int, hpa: int, nbytes: int) -> None:
    """Unmap the shadow PTE ``n_rmap`` names if it still maps host ``hpa`` (the ``nbytes``
    page L0 is dropping); a stale entry (the L2 page now maps elsewhere) is left alone."""
    gpa = n_rmap_gpa(n_rmap)
    gp, leaf = find_kvm_nested_guest_pte(mmu.l1, n_rmap_lpid(n_rmap), gpa)
    if leaf is not None and shadow_pte_maps(leaf.pte, hpa, nbytes):
        kvmppc_unmap_pte(mmu, gp.shadow_pgtable, gpa, leaf.shift, None, gp.shadow_lpid)


def kvmhv_remove_nest_rmap_list(mmu: RadixMmu, rmapp: RmapWord, hpa: int, nbytes: int) -> None:
    """llist_del_all, then every entry the kernel's walk reaches (and frees)."""
    mmu.rmap_version += 1
    for n_rmap in rmapp.del_all().kernel_walk():
        kvmhv_remove_nest_rmap(mmu, n_rmap, hpa, nbytes)


def kvmhv_remove_nest_rmap_range(mmu: RadixMmu, memslot: Memslot | None, gpa: int, hpa: int,
                                 nbytes: int) -> None:
    """L0 drops its ``nbytes`` mapping of L1 ``gpa`` to host ``hpa`` (mmu_lock held): every
    shadow PTE recorded on those L1 pages that still maps that host memory goes. (The
    kernel masks ``hpa`` and hands the mask down; ``shadow_pte_maps`` masks with
    ``nbytes``.)"""
    words = mmu.rmap.get(memslot) if memslot is not None else None
    if not words:
        return
    first = (gpa >> PAGE_SHIFT) - memslot.base_gfn
    for index in range(first, first + (nbytes >> PAGE_SHIFT)):
        word = words.get(index)
        if word is not None:
            kvmhv_remove_nest_rmap_list(mmu, word, hpa, nbytes)


# ---------------------------------------------------------------------- table updates
def mmu_notifier_retry(mmu: RadixMmu, mmu_seq: int) -> bool:
    """mmu_invalidate_retry (mmu_lock held): an invalidation ran since ``mmu_seq`` was read."""
    mmu.touch_seq()
    return mmu.mmu_notifier_seq != mmu_seq


def _unmapped(mmu: RadixMmu, old: int, gpa: int, shift: int, memslot: Memslot | None,
              lpid: int) -> None:
    """kvmppc_unmap_pte after the PTE is cleared: tlbie, and for an L1 entry remove the
    nested rmaps of the page."""
    page_size = 1 << shift
    mmu.tlbie(gpa & ~(page_size - 1), shift, lpid)  # (kvmppc_radix_tlbie_page aligns)
    kvm = mmu.kvm
    if lpid != kvm.lpid:  # only L1 entries have nested rmaps
        return
    if memslot is None:
        memslot = kvm.gfn_to_memslot(gpa >> PAGE_SHIFT)
        if memslot is None:
            return
    kvmhv_remove_nest_rmap_range(mmu, memslot, gpa & ~(page_size - 1), old & PTE_RPN_MASK,
                                 page_size)


def kvmppc_unmap_pte(mmu: RadixMmu, pgtable: RadixTree, gpa: int, shift: int,
                     memslot: Memslot | None, lpid: int) -> int:
    """Clear the leaf mapping ``gpa`` in ``pgtable`` (L1's or a shadow table, whose LPID is
    ``lpid``), tlbie it, and for L1's own table remove the nested rmaps (mmu_lock held).
    The old PTE."""
    old = pgtable.update(gpa, clear_bits=MASK64)
    _unmapped(mmu, old, gpa, shift, memslot, lpid)
    return old


async def kvmppc_create_pte(mmu: RadixMmu, pgtable: RadixTree, pte: int, gpa: int, level: int,
                            mmu_seq: int, lpid: int, rmapp: RmapWord | None = None,
                            n_rmap: int = 0) -> int:
    """Install ``pte`` at ``level`` for ``gpa`` in ``pgtable`` under mmu_lock: -EAGAIN if an
    invalidation ran since ``mmu_seq``; else 0. A present leaf of that size gets the new
    bits ORed in (its RPN too: the kernel only WARNs when they differ) and no rmap entry; a
    new leaf gets ``n_rmap`` on ``rmapp`` in the same section. Leaves it displaces are
    unmapped: a larger one on the way with its own GPA, those under a table it frees with
    ``pte_pfn << PAGE_SHIFT`` as the GPA, as kvmppc_unmap_free_pte/pmd pass it."""
    shift = level_to_shift(level)
    kvm = mmu.kvm
    await kvm.mmu_lock.lock()
    if mmu_notifier_retry(mmu, mmu_seq):
        kvm.mmu_lock.unlock()
        return EAGAIN
    old = pgtable.find(gpa)
    for leaf in pgtable.insert(gpa, pte, shift):
        _unmapped(mmu, leaf.pte, leaf.gpa if leaf.shift > shift else leaf.ra, leaf.shift, None,
                  lpid)
    if rmapp is not None and (old is None or old.shift != shift):
        kvmhv_insert_nest_rmap(mmu, rmapp, n_rmap)
    kvm.mmu_lock.unlock()
    return 0


def kvmppc_hv_handle_set_rc(mmu: RadixMmu, nested: bool, writing: bool, gpa: int,
                            lpid: int) -> bool:
    """Set R (and C for a store) in L1's table (``nested`` False) or in the shadow table of
    the nested guest at L1 lpid ``lpid``, if a leaf maps ``gpa`` and allows the access
    (mmu_lock held)."""
    if nested:
        gp, _ = find_kvm_nested_guest_pte(mmu.l1, lpid, gpa)
        return gp is not None and gp.shadow_pgtable.set_rc(gpa, writing)
    return mmu.pgtable.set_rc(gpa, writing)


# ---------------------------------------------------------------------- page faults
def kvmppc_core_queue_data_storage(vcpu: VcpuFault, ea: int, dsisr: int) -> None:
    vcpu.queued_dsi = (ea, dsisr)


def kvmppc_hv_emulate_mmio(vcpu: VcpuFault, gpa: int, ea: int, is_store: bool) -> int:
    """An access to no memslot: the instruction is emulated as MMIO, which here always needs
    userspace (kvmppc_emulate_mmio's EMULATE_DO_MMIO: RESUME_HOST_NV, mmio_needed)."""
    vcpu.mmio = (gpa, ea, is_store)
    return RESUME_HOST_NV


async def kvmppc_book3s_instantiate_page(mmu: RadixMmu, gpa: int, memslot: Memslot,
                                         writing: bool, kvm_ro: bool) -> tuple[int, int, int]:
    """Fault the host page behind L1 ``gpa`` in and map it in L1's table: (ret, the PTE,
    its level). ret is 0, -EAGAIN (an invalidation raced), -EFAULT (no host page), or
    RESUME_GUEST (0 too!) when the host PTE is gone by the time it is read under mmu_lock,
    in which case the kernel leaves the PTE and level unset (the model gives 0, 0)."""
    kvm = mmu.kvm
    mmu.touch_seq()
    mmu_seq = mmu.mmu_notifier_seq
    gfn = gpa >> PAGE_SHIFT
    hva = memslot.userspace_addr + ((gfn - memslot.base_gfn) << PAGE_SHIFT)
    pfn = await kvm.gfn_to_pfn(gfn)  # __kvm_faultin_pfn
    if pfn < 0:
        return EFAULT, 0, 0
    upgrade_write = not kvm_ro  # anonymous memory: mapped writable whatever the access
    await kvm.mmu_lock.lock()
    host = 0 if mmu_notifier_retry(mmu, mmu_seq) else kvm.mm.get_pte(hva)  # find_kvm_host_pte
    kvm.mmu_lock.unlock()
    if host <= 0:
        kvm.kvm_release_pfn_clean(pfn)
        return RESUME_GUEST, 0, 0
    level = 0
    pte = make_pte(host << PAGE_SHIFT, HOST_PTE_FLAGS) | PAGE_EXEC | PAGE_ACCESSED
    if writing or upgrade_write:
        if pte & PAGE_WRITE:
            pte |= PAGE_DIRTY
    else:
        pte &= ~(PAGE_WRITE | PAGE_DIRTY)
    ret = await kvmppc_create_pte(mmu, mmu.pgtable, pte, gpa, level, mmu_seq, kvm.lpid)
    kvm.kvm_release_pfn_clean(pfn)
    return ret, pte, level


async def kvmppc_book3s_radix_page_fault(mmu: RadixMmu, vcpu: VcpuFault, ea: int,
                                         dsisr: int) -> int:
    """L1's HDSI (caller holds kvm->srcu): reflect the odd cases as a DSI, send an access to
    no memslot to MMIO emulation, fix R/C, else map the page. RESUME_GUEST, RESUME_HOST_NV
    (MMIO) or -EFAULT."""
    kvm = mmu.kvm
    writing = bool(dsisr & DSISR_ISSTORE)
    if dsisr & DSISR_UNSUPP_MMU:
        return EFAULT
    if dsisr & DSISR_BADACCESS:
        kvmppc_core_queue_data_storage(vcpu, ea, dsisr)
        return RESUME_GUEST
    gpa = vcpu.fault_gpa & ~0xFFF & ~0xF000_0000_0000_0000
    gfn = gpa >> PAGE_SHIFT
    if not dsisr & DSISR_PRTABLE_FAULT:
        gpa |= ea & 0xFFF
    memslot = kvm.gfn_to_memslot(gfn)
    if memslot is None:
        if dsisr & (DSISR_PRTABLE_FAULT | DSISR_BADACCESS | DSISR_SET_RC):
            kvmppc_core_queue_data_storage(vcpu, ea, dsisr)
            return RESUME_GUEST
        return kvmppc_hv_emulate_mmio(vcpu, gpa, ea, writing)
    kvm_ro = False
    if memslot.flags & KVM_MEM_READONLY:
        if writing:
            kvmppc_core_queue_data_storage(vcpu, ea, DSISR_ISSTORE | DSISR_PROTFAULT)
            return RESUME_GUEST
        kvm_ro = True
    if dsisr & DSISR_SET_RC:
        await kvm.mmu_lock.lock()
        if kvmppc_hv_handle_set_rc(mmu, False, writing, gpa, kvm.lpid):
            dsisr &= ~DSISR_SET_RC
        kvm.mmu_lock.unlock()
        if not dsisr & (DSISR_BAD_FAULT_64S | DSISR_NOHPTE | DSISR_PROTFAULT | DSISR_SET_RC):
            return RESUME_GUEST
    ret, _, _ = await kvmppc_book3s_instantiate_page(mmu, gpa, memslot, writing, kvm_ro)
    return RESUME_GUEST if ret in (0, EAGAIN) else ret


async def l1_access(mmu: RadixMmu, gpa: int, *, writing: bool) -> int | VcpuFault:
    """An L1 load or store at guest real address ``gpa``: the hardware walks L1's table
    (no TLB here), and on an HDSI L0's handler runs (under kvm->srcu) and the access is
    retried. The host real address it reaches, or the fault that stopped it (a DSI queued
    for L1, an MMIO exit, or an error: see ``VcpuFault``)."""
    kvm = mmu.kvm
    while True:
        leaf = mmu.pgtable.find(gpa)
        dsisr = hdsi_dsisr(leaf, writing)
        if not dsisr:
            return leaf.real_address(gpa)
        vcpu = VcpuFault.hdsi(gpa, dsisr)
        idx = await kvm.srcu.read_lock()
        ret = await kvmppc_book3s_radix_page_fault(mmu, vcpu, gpa, dsisr)
        kvm.srcu.read_unlock(idx)
        if ret != RESUME_GUEST or vcpu.queued_dsi is not None:
            return vcpu
        await kvm.m.yield_point(f"L1 retries its access to {gpa:#x}")


# ---------------------------------------------------------------------- the MMU notifier
def kvm_unmap_radix(mmu: RadixMmu, memslot: Memslot, gfn: int) -> None:
    """Unmap L1 ``gfn`` (mmu_lock held): the whole leaf that maps it."""
    gpa = gfn << PAGE_SHIFT
    leaf = mmu.pgtable.find(gpa)
    if leaf is not None:
        kvmppc_unmap_pte(mmu, mmu.pgtable, gpa, leaf.shift, memslot, mmu.kvm.lpid)


def kvm_unmap_gfn_range(mmu: RadixMmu, gfns: list[int]) -> None:
    """kvm_unmap_gfn_range_hv for a radix guest (mmu_lock held): kvm_unmap_radix for each
    GFN, with the memslot that holds it."""
    for gfn in gfns:
        mmu.kvm.touch_memslots()
        kvm_unmap_radix(mmu, next(s for s in mmu.kvm.memslots if s.contains(gfn)), gfn)


async def kvm_mmu_notifier_invalidate_range_start(mmu: RadixMmu, start: int, end: int) -> int:
    """The MMU notifier for host virtual range [start, end) (with _end folded in, see the
    notes): if the range meets a memslot, kvm_unmap_gfn_range and the sequence bump, in one
    mmu_lock section. Append ``functools.partial(kvm_mmu_notifier_invalidate_range_start,
    mmu)`` to ``kvm.mm.notifiers``."""
    kvm = mmu.kvm
    gfns = kvm.hva_to_gfns(start, end)
    if not gfns:
        return 0
    await kvm.mmu_lock.lock()
    kvm_unmap_gfn_range(mmu, gfns)
    mmu.touch_seq(True)
    mmu.mmu_notifier_seq += 1
    kvm.mmu_lock.unlock()
    return 0
