"""Secure pages management: the HV side of ``book3s_hv_uvmem.c`` after 651a63101134 and its
series (v5.9+), function by function.

GFN life cycle (seed 000, the specification):

| from \\ op | share  | unshare | abort / terminate | H_SVM_INIT_DONE |
|-----------|--------|---------|-------------------|-----------------|
| Secure    | Shared | Secure  | Normal            | Secure          |
| Shared    | Shared | Secure  | Normal            | Shared          |
| Normal    | Shared | Secure  | Normal            | Secure          |

VM life cycle (seed 000):

| from \\ op | INIT_START | INIT_DONE | INIT_ABORT | TERMINATE |
|-----------|------------|-----------|------------|-----------|
| Normal    | Transient  | Error     | Error      | Normal    |
| Transient | Error      | Secure    | Normal     | Normal    |
| Secure    | Error      | Error     | Error      | Normal    |

GFN state encoding in ``kvmppc_uvmem_slot.pfns[]``:

| state                | word                                |
|----------------------|-------------------------------------|
| Secure, paged in     | KVMPPC_GFN_UVMEM_PFN \\| device pfn  |
| Secure, paged out    | KVMPPC_GFN_MEM_PFN                  |
| Shared               | KVMPPC_GFN_SHARED                   |
| Normal (or removed)  | 0                                   |

Locking order: ``kvm->srcu`` -> ``mmap_lock`` -> ``uvmem_lock`` -> bitmap lock. The bitmap
lock is a leaf spinlock held for a few instructions; the model updates the bitmap without a
scheduling point inside, which is exactly the exclusion it gives. ``cond_resched`` in the
INIT_DONE migration loop is a scheduling point every ``RESCHED_BATCH`` pages.

Accesses (``sim.accesses``): a GFN's state word is ``gfn:<lpid>:<gfn>``, a device page
(its bitmap bit and pvt) ``devpage:<dpfn>``, and the search for a free one reads and takes
``devpage:bitmap``.

Designs: ``gfn-states`` is the kernel's three flags. ``two-state`` is the alternative of
the review in seed 004: the HV tracks only "has a device page", and at INIT_DONE sends every
other GFN to the UV with UV_PAGE_IN, which the UV refuses for a shared GFN (that GFN then
stays shared).

Quirks (historic bugs switched back on) are tested where the kernel had them; see QUIRKS,
and ``releases.QUIRK_HISTORY`` for the commits and releases of each. ``init-start-rollback``
is the exception: that bug is still in the kernel, and the default model is its evident
fix. By default memslots are walked as ``kvm_for_each_memslot`` did before 5.17 (descending
base GFN) and a device page is freed inside ``migrate_vma_finalize`` as before 6.1;
``--kernel`` selects a release's quirks and behaviour (emu/kvm/releases.py).
"""

from __future__ import annotations

from array import array
from typing import TYPE_CHECKING

from ..hw.hostmm import touch_ptes
from ..hw.memory import PageRefs
from ..sim import accesses
from ..sim.explain import numbered
from .hvcall import (
    H_AUTHORITY,
    H_P2,
    H_P3,
    H_PAGE_IN_SHARED,
    H_PARAMETER,
    H_STATE,
    H_SUCCESS,
    H_UNSUPPORTED,
    KVMPPC_GFN_FLAG_MASK,
    KVMPPC_GFN_MEM_PFN,
    KVMPPC_GFN_PFN_MASK,
    KVMPPC_GFN_SECURE,
    KVMPPC_GFN_SHARED,
    KVMPPC_GFN_UVMEM_PFN,
    KVMPPC_SECURE_INIT_DONE,
    KVMPPC_SECURE_INIT_START,
    PAGE_SHIFT,
    PAGE_SIZE,
    U_SUCCESS,
)
from .mm import (
    MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
    MIGRATE_VMA_SELECT_SYSTEM,
    MigrateVma,
    migrate_vma_finalize,
    migrate_vma_pages,
    migrate_vma_setup,
    page_busy,
)
from .releases import QUIRK_HISTORY
from .vm import KVM, Memslot, is_error_noslot_pfn, no_faults

if TYPE_CHECKING:
    from ..hw.hostmm import VMA

RESCHED_BATCH = 512
SHARE_VS_PAGE_OUT = "share ~ page-out of the same GFN"
RESET_VS_SHARE = "KVM_PPC_SVM_OFF ~ kvmppc_share_page"
RESET_IN_SHARE_RETRY = "KVM_PPC_SVM_OFF ~ kvmppc_share_page's retry loop (uvmem_lock dropped)"
"""Coverage (``Machine.racing``): the overlaps the secure-VM scenarios' goals name."""

SHARE_RETRY = "kvmppc_share_page"
"""Liveness monitor (``Machine.hot``): a share's retry loop ('goto retry') must end."""
VM_TRANSIENT = "Transient VM"
"""Liveness monitor: a VM that UV_ESM's H_SVM_INIT_START left Transient (failed or not: the
flag is set first) leaves it by H_SVM_INIT_DONE, H_SVM_INIT_ABORT, KVM_PPC_SVM_OFF or its
destruction. A failed INIT_DONE ends the UV's part ("the VM must be terminated" by its
owner, QEMU, which a scenario may not have): cold there too. Hot from UV_ESM only: a raw
INIT_START (a guest program that stops mid-boot) promises nothing."""


def share_key(kvm: KVM, gfn: int) -> str:
    """A share in progress: its GFN and its caller (two may share one GFN at once)."""
    return f"GFN {gfn:#x} of VM {kvm.lpid} ({kvm.m.ctl.current.name})"

QUIRKS = {
    "page-out-lock-leak":
        "B1, fixed by e032e3b55b6f: svm_page_out returns with uvmem_lock held when "
        "migrate_vma_setup fails; every later page-in/out hangs. Caught by: no lock held "
        "when an hcall or fault returns.",
    "single-flag-gfn-tracking":
        "B2, the tracking before 651a63101134: only the device-page flag is kept, so shared "
        "and paged-out GFNs look Normal and INIT_DONE re-migrates them. Caught by: life-cycle "
        "conformance and 'never device-backed and shared'.",
    "no-init-done-migration":
        "B2, before dfaa973ae960: H_SVM_INIT_DONE leaves the GFNs the UV did not request "
        "Normal. Caught by: after INIT_DONE no registered GFN is Normal.",
    "strict-abort-caller-check":
        "B4, fixed by e3326ae3d59e: H_SVM_INIT_ABORT is rejected unless it comes with MSR_S, "
        "but the UV issues it from the not-yet-secure VM, so the VM stays Transient. Caught "
        "by: VM life-cycle conformance.",
    "init-start-late-flag":
        "B5 ('H_SVM_INIT_START must call UV_RETURN'): secure_guest is set only on success, so "
        "an error return goes back with rfid into the Ultravisor's context. Caught by: the "
        "return path matches the caller.",
    "svm-off-no-guard":
        "B6: KVM_PPC_SVM_OFF without the mmu_ready / vcpus_running guard tears the VM down "
        "under a running vCPU. Caught by: no vCPU in the guest during teardown.",
    "init-start-rollback":
        "B8 (a candidate, never fixed upstream: U1 and later kernels still have it): the "
        "INIT_START error path deletes the failing memslot once per earlier slot instead of "
        "each earlier slot, leaking their UV registrations and uvmem slots; without the quirk "
        "the model runs the evident fix. Caught by: a failed INIT_START rolls back.",
    "fault-ref-no-page-lock":
        "M1, core mm from v6.1 until the trylock fix: do_swap_page takes a reference on a "
        "device page around ->migrate_to_ram without locking the page, so two host faults on "
        "one device page each see the other's reference, migrate_vma does not collect it, "
        "and both retry in lock-step. Caught by: the fault livelock check.",
    "page-in-hole-race":
        "A candidate, still upstream: kvmppc_svm_page_in of a GFN QEMU never touched (a "
        "hole: no page, so no UV_PAGE_IN) returns 0 even when migrate_vma_pages aborted the "
        "insert because a host fault filled the PTE meanwhile: H_SVM_PAGE_IN succeeds, the "
        "UV holds a zero page for the GFN, the HV frees the device page and marks the GFN "
        "paged out, and QEMU's page is what the HV will page in next. Without the quirk the "
        "page-in migrates the new page. Caught by: GFN life-cycle conformance.",
    "busy-page-fails":
        "A candidate, still upstream: a page migrate_vma does not collect only for the "
        "moment (a concurrent share's gfn_to_pfn reference, taken with uvmem_lock dropped; "
        "the host migrating it) fails H_SVM_INIT_DONE (H_STATE: the VM must be terminated) "
        "and H_SVM_PAGE_IN (H_PARAMETER: the SVM cannot get its page). Without the quirk "
        "both retry such a busy page a few times. Caught by: UV_ESM's return code; "
        "svm-access.",
    "uvmem-slot-leak":
        "A candidate, still upstream: neither KVM_PPC_SVM_OFF (kvmhv_svm_off) nor "
        "H_SVM_INIT_ABORT frees the VM's uvmem slots, and the next H_SVM_INIT_START adds one "
        "more per memslot (kvmppc_uvmem_slot_init never looks for an old one), so every reset "
        "or aborted ESM leaks a slot and its pfns[] array; without the quirk the model frees "
        "them (the evident fix). VM destroy (kvmppc_core_destroy_vm_hv) frees none either. "
        "Caught by: one uvmem slot per memslot.",
    "flags-only-drops-pages":
        "The kernel's behaviour (a candidate): a flags-only change of a secure VM's memslot "
        "(KVM_MEM_LOG_DIRTY_PAGES toggled) makes kvmppc_core_commit_memory_region_hv call "
        "kvmppc_radix_flush_memslot, which drops every device page of the slot with "
        "skip_page_out and clears its pfns[] words: the HV's books say Normal for GFNs the "
        "UV still holds secure. Without the quirk a secure VM's pages are left alone. Caught "
        "by: a flags-only change leaves every GFN's state as it was.",
    "init-start-unserialised":
        "The kernel's behaviour (a candidate): H_SVM_INIT_START walks the memslots holding "
        "only kvm->srcu, so a slot QEMU hot-plugs meanwhile is registered twice, by the walk "
        "and by kvmppc_uvmem_memslot_create in the commit hook; the loser's error path frees "
        "the first uvmem slot on the list with that base, which may be the winner's. Without "
        "the quirk INIT_START holds slots_lock across the walk. Caught by: UV_ESM's return "
        "code; a device page's GFN says UVMEM.",
    "page-in-fail-leaves-uvmem":
        "A candidate, still upstream: when UV_PAGE_IN fails inside kvmppc_svm_page_in the "
        "kernel jumps to out_finalize with *mig.dst unset: the device page stays allocated "
        "and the GFN flagged UVMEM while the host PTE is the normal page again. The UV's "
        "retry is refused ('already UVMEM': H_PARAMETER) and a later share of the GFN "
        "retries forever (kvmppc_share_page's 'goto retry'). Without the quirk the page-in "
        "releases the device page and restores the GFN's word. Caught by: the share's "
        "liveness; UV_UNSHARE_PAGE's return code.",
    "mr-move-unhandled":
        "The kernel's behaviour (a candidate): KVM_MR_MOVE of a secure VM's memslot falls "
        "into 'default: /* TODO: Handle KVM_MR_MOVE */': the uvmem slot and the UV "
        "registration stay at the old GPA, the moved slot has none. Without the quirk a move "
        "is a delete and a create. Caught by: the UV's slots equal the HV's.",
}

assert set(QUIRK_HISTORY) == set(QUIRKS), "every quirk needs its history in releases.py"

# ---------------------------------------------------------------------- data structures
class UvmemSlot:
    """struct kvmppc_uvmem_slot: one word of state per GFN of a memslot."""

    def __init__(self, slot: Memslot) -> None:
        self.id = slot.id
        self.base_pfn = slot.base_gfn
        self.nr_pfns = slot.npages
        self.pfns = array("Q", bytes(8 * slot.npages))

    def contains(self, gfn: int) -> bool:
        return self.base_pfn <= gfn < self.base_pfn + self.nr_pfns


PVT_VALID, PVT_SKIP_PAGE_OUT, PVT_REMOVE_GFN = 1, 2, 4


class UvmemDevice:
    """kvmppc_uvmem_pgmap and its bitmap: the ZONE_DEVICE pages that stand for secure
    pages on the HV side, each with its ``kvmppc_uvmem_page_pvt`` (gpa, skip_page_out,
    remove_gfn), kept in arrays indexed by device pfn so a 100 GB guest stays small."""

    def __init__(self, npages: int) -> None:
        self.npages = npages
        self.bitmap = bytearray(npages)
        self._hint = 0
        self.pvt_gpa = array("Q", bytes(8 * npages))
        self.pvt_flags = bytearray(npages)
        self.pvt_lpid = array("L", [0]) * npages  # ("L" is 8 bytes on LP64, not 4)
        self.kvms: dict[int, KVM] = {}
        self.refs = PageRefs(self.page_free, "device")
        """The references a host fault holds across migrate_to_ram (v6.1+): page_free runs
        at the last reference, migrate_vma_finalize's or the fault's put_page."""
        self.locked: dict[int, bool] = {}
        """Device pfns whose page lock a host fault holds (do_swap_page's trylock_page)."""

    def in_use(self) -> int:
        return self.npages - self.bitmap.count(0)

    # dev_pagemap_ops.migrate_to_ram
    async def migrate_to_ram(self, vma: VMA, addr: int, dpfn: int) -> int:
        """kvmppc_uvmem_migrate_to_ram: a host fault on a device page pages it out."""
        bit = dpfn - 1
        kvm = self.kvms[self.pvt_lpid[bit]]
        fault_page = dpfn if self.refs.count(dpfn) else 0  # v6.1+
        ret = await kvmppc_svm_page_out(vma, addr, addr + PAGE_SIZE, PAGE_SHIFT, kvm,
                                        self.pvt_gpa[bit], fault_page)
        return 1 if ret else 0  # VM_FAULT_SIGBUS

    # dev_pagemap_ops.page_free
    def page_free(self, dpfn: int) -> None:
        """kvmppc_uvmem_page_free: before v6.1 with uvmem_lock held (reached from
        migrate_vma_finalize); since v6.1, on the host-fault path, from do_swap_page's
        put_page after migrate_to_ram returned, with no uvmem lock (the kernel's comment
        "Gets called with kvm->arch.uvmem_lock held" is stale there). It takes only the
        bitmap lock, then updates the GFN's state word."""
        bit = dpfn - 1
        if accesses.current.on:
            touch_devpages(dpfn, dpfn + 1)
        self.bitmap[bit] = 0
        self._hint = min(self._hint, bit)
        kvm = self.kvms[self.pvt_lpid[bit]]
        if kvm.destroyed:  # pvt->kvm holds no reference on the VM
            kvm.m.fail("use-after-free", f"kvmppc_uvmem_page_free of device page {dpfn} walks "
                       f"pvt->kvm->arch.uvmem_pfns of VM {kvm.lpid}, freed by kvm_destroy_vm")
        gfn = self.pvt_gpa[bit] >> PAGE_SHIFT
        if self.pvt_flags[bit] & PVT_REMOVE_GFN:
            kvmppc_gfn_remove(gfn, kvm)
        else:
            kvmppc_gfn_secure_mem_pfn(gfn, kvm)
        self.pvt_flags[bit] = 0


# ---------------------------------------------------------------------- GFN state words
numbered("gfn", "gfn", "gfns")  # "GFN 0x5" in a message numbers gfn:<lpid>:0x5


def touch_gfns(kvm: KVM, first: int, end: int, write: bool) -> None:
    """The step reads (or writes) the state words of GFNs [first, end) (only called when
    accesses are recorded: ``accesses.current.on``)."""
    for gfn in range(first, end):
        accesses.current.touch(f"gfn:{kvm.lpid}:{gfn:#x}", write)


def touch_devpages(first: int, end: int) -> None:
    """The step takes or frees device pages [first, end) (accesses recorded only)."""
    rec = accesses.current
    rec.touch("devpage:bitmap", True)
    for dpfn in range(first, end):
        rec.touch(f"devpage:{dpfn}", True)


def uvmem_slot(kvm: KVM, gfn: int) -> UvmemSlot | None:
    """The uvmem slot covering ``gfn`` (the first on the list, as every lookup takes)."""
    for p in kvm.uvmem_pfns:
        if p.contains(gfn):
            return p
    return None


def kvmppc_uvmem_slot_lookup(kvm: KVM, gfn: int) -> int:
    """The pfns[] word of a GFN (0 if no uvmem slot covers it)."""
    if accesses.current.on:
        touch_gfns(kvm, gfn, gfn + 1, False)
    p = uvmem_slot(kvm, gfn)
    return p.pfns[gfn - p.base_pfn] if p else 0


def kvmppc_mark_gfn(gfn: int, kvm: KVM, flag: int, uvmem_pfn: int) -> None:
    p = uvmem_slot(kvm, gfn)
    if p is None:
        return
    if accesses.current.on:
        touch_gfns(kvm, gfn, gfn + 1, True)
    if kvm.design == "two-state" or kvm.quirk("single-flag-gfn-tracking"):
        flag &= KVMPPC_GFN_UVMEM_PFN  # only "has a device page" is tracked
    p.pfns[gfn - p.base_pfn] = (uvmem_pfn | flag) if flag == KVMPPC_GFN_UVMEM_PFN else flag


def kvmppc_gfn_secure_uvmem_pfn(gfn: int, uvmem_pfn: int, kvm: KVM) -> None:
    kvmppc_mark_gfn(gfn, kvm, KVMPPC_GFN_UVMEM_PFN, uvmem_pfn)


def kvmppc_gfn_secure_mem_pfn(gfn: int, kvm: KVM) -> None:
    kvmppc_mark_gfn(gfn, kvm, KVMPPC_GFN_MEM_PFN, 0)


def kvmppc_gfn_shared(gfn: int, kvm: KVM) -> None:
    kvmppc_mark_gfn(gfn, kvm, KVMPPC_GFN_SHARED, 0)


def kvmppc_gfn_remove(gfn: int, kvm: KVM) -> None:
    kvmppc_mark_gfn(gfn, kvm, 0, 0)


def kvmppc_gfn_is_uvmem_pfn(gfn: int, kvm: KVM) -> int | None:
    """The device pfn if the GFN is secure and backed by a device page, else None."""
    word = kvmppc_uvmem_slot_lookup(kvm, gfn)
    return word & KVMPPC_GFN_PFN_MASK if word & KVMPPC_GFN_UVMEM_PFN else None


def kvmppc_next_nontransitioned_gfn(memslot: Memslot, kvm: KVM, gfn: int) -> int | None:
    """The first GFN from ``gfn`` on with no flag set (uvmem_lock held); None if none or if
    no uvmem slot covers ``gfn`` (300981abddcb: the cursor of a failed search is not a
    slot)."""
    p = uvmem_slot(kvm, gfn)
    if p is None:
        return None
    pfns, base = p.pfns, p.base_pfn
    for i in range(gfn - base, p.nr_pfns):
        if not pfns[i] & KVMPPC_GFN_FLAG_MASK:
            if accesses.current.on:
                touch_gfns(kvm, gfn, base + i + 1, False)
            return base + i
    if accesses.current.on:
        touch_gfns(kvm, gfn, base + p.nr_pfns, False)
    return None


def hv_gfn_state(kvm: KVM, gfn: int) -> str:
    """A GFN's state in the seed's words as the HV's books (its ``pfns[]`` word) say;
    ``SvmMachine.page_states`` sets it beside the firmware's view and the truth."""
    word = kvmppc_uvmem_slot_lookup(kvm, gfn)
    if word & KVMPPC_GFN_SECURE:
        return "Secure"
    return "Shared" if word & KVMPPC_GFN_SHARED else "Normal"


def vm_state(kvm: KVM) -> str:
    if kvm.secure_guest & KVMPPC_SECURE_INIT_DONE:
        return "Secure"
    return "Transient" if kvm.secure_guest & KVMPPC_SECURE_INIT_START else "Normal"


def failed_on(kvm: KVM, obj: str) -> None:
    """The failing code this thread's hcall returns is decided by the state of ``obj`` (an
    access name): the code's cause, which the return-code check names for the deciding pair
    (``KVM.rc_causes``). A code carries no cause itself: codes stay plain ints."""
    ctl = kvm.m.ctl
    kvm.rc_causes[ctl.current.name] = (obj, ctl.step)


def _busy_page(kvm: KVM, vma: VMA, hva: int) -> str | None:
    """The normal page at ``hva`` when references beyond its mapping keep it from being
    collected (``page_busy``): its references' name, ``page:normal:<pfn>``. Read outside
    the steps' accesses: this names a cause, the kernel reads nothing more."""
    if not vma.start <= hva < vma.end:
        return None
    pte = vma.pte[vma.index(hva)]
    return f"page:normal:{pte:#x}" if pte > 0 and kvm.memory.normal.refs.counts.get(pte) \
        else None


def _vma_covering(kvm: KVM, start: int, end: int) -> VMA | None:
    """find_vma_intersection, and the checks every caller makes: one VMA covers it all."""
    vma = kvm.mm.find_vma_intersection(start, end)
    if vma is None or vma.start > start or vma.end < end:
        return None
    return vma


# ---------------------------------------------------------------------- slots
async def kvmppc_uvmem_slot_init(kvm: KVM, slot: Memslot) -> int:
    p = UvmemSlot(slot)
    await kvm.uvmem_lock.lock()
    kvm.uvmem_pfns.insert(0, p)  # list_add
    kvm.uvmem_lock.unlock()
    return 0


async def kvmppc_uvmem_slot_free(kvm: KVM, slot: Memslot) -> None:
    await kvm.uvmem_lock.lock()
    for p in kvm.uvmem_pfns:
        if p.base_pfn == slot.base_gfn:
            kvm.uvmem_pfns.remove(p)
            break
    kvm.uvmem_lock.unlock()


async def kvmppc_memslot_page_merge(kvm: KVM, memslot: Memslot, merge: bool) -> int:
    """ksm_madvise(MADV_MERGEABLE / MADV_UNMERGEABLE) over the slot's VMAs."""
    start = kvm.gfn_to_hva(memslot.base_gfn)
    if start is None:
        return H_STATE
    end = start + memslot.npages * PAGE_SIZE
    await kvm.mm.mmap_lock.mmap_write_lock()
    ret = 0
    while True:
        vma = kvm.mm.find_vma_intersection(start, end)
        if vma is None:
            ret = H_STATE
            break
        vma.mergeable = merge
        start = vma.end
        if end <= vma.end:
            break
    kvm.mm.mmap_lock.mmap_write_unlock()
    return ret


async def __kvmppc_uvmem_memslot_delete(kvm: KVM, memslot: Memslot) -> None:
    await kvm.uv.uv_unregister_mem_slot(kvm.lpid, memslot.id)
    await kvmppc_uvmem_slot_free(kvm, memslot)
    await kvmppc_memslot_page_merge(kvm, memslot, True)


async def __kvmppc_uvmem_memslot_create(kvm: KVM, memslot: Memslot) -> int:
    ret = H_PARAMETER
    if await kvmppc_memslot_page_merge(kvm, memslot, False):
        return ret
    if await kvmppc_uvmem_slot_init(kvm, memslot) == 0:
        ret = await kvm.uv.uv_register_mem_slot(kvm.lpid, memslot.base_gfn << PAGE_SHIFT,
                                            memslot.npages * PAGE_SIZE, 0, memslot.id)
        if ret >= 0:
            return 0
        ret = H_PARAMETER
        await kvmppc_uvmem_slot_free(kvm, memslot)
    await kvmppc_memslot_page_merge(kvm, memslot, True)
    return ret


# ---------------------------------------------------------------------- H_SVM_INIT_START
async def kvmppc_h_svm_init_start(kvm: KVM) -> int:
    """The kernel walks the memslots under ``kvm->srcu`` only: a slot QEMU publishes after
    the flag is set but before the walk reaches it is registered by both the walk and the
    commit hook (``init-start-unserialised``). The evident fix, run without the quirk:
    ``uvmem_walk_pending`` from the flag to the end of the walk (the hook leaves a new slot
    to the walk) and ``slots_lock`` across the walk (taken before ``srcu_read_lock``, as
    kvm_set_memory_region orders them), so a memory-region change commits wholly before the
    walk (which registers its slot) or after it (the hook does). The flag stays first (B5)."""
    if not kvm.quirk("init-start-late-flag"):
        kvm.secure_guest = KVMPPC_SECURE_INIT_START  # first: errors return via UV_RETURN (B5)
    if not kvm.radix:  # (no UV bitmap cannot happen here: the device exists)
        return H_UNSUPPORTED
    if not kvm.svm_enabled:
        return H_AUTHORITY
    if kvm.quirk("init-start-unserialised"):
        return await _init_start_walk(kvm)
    kvm.uvmem_walk_pending = True
    await kvm.slots_lock.lock()
    ret = await _init_start_walk(kvm)
    kvm.uvmem_walk_pending = False
    kvm.slots_lock.unlock()
    return ret


async def _init_start_walk(kvm: KVM) -> int:
    """Register every memslot with the UV; on failure, roll back the earlier ones."""
    srcu_idx = await kvm.srcu.read_lock()
    ret = H_SUCCESS
    kvm.touch_memslots()
    slots = kvm.memslots
    failed = None
    for memslot in slots:
        ret = await __kvmppc_uvmem_memslot_create(kvm, memslot)
        if ret:
            failed = memslot
            failed_on(kvm, kvm.object("memslots"))  # the slots this walk read
            break
    if ret:
        for m in slots:
            if m is failed or kvm.behaviour.init_start_rollback == "none":
                break  # (before v5.9 there was no rollback: earlier slots stay registered)
            # U1 deletes `memslot` (the failing slot) here, once per earlier slot (B8)
            await __kvmppc_uvmem_memslot_delete(
                kvm, failed if kvm.quirk("init-start-rollback") else m)
    elif kvm.quirk("init-start-late-flag"):
        kvm.secure_guest = KVMPPC_SECURE_INIT_START
    kvm.srcu.read_unlock(srcu_idx)
    return ret


# ---------------------------------------------------------------------- page-out
async def __kvmppc_svm_page_out(vma: VMA, start: int, end: int, page_shift: int, kvm: KVM,
                                gpa: int, fault_page: int = 0) -> int:
    """Provision a normal page and copy the secure content out with UV_PAGE_OUT (unless
    skip_page_out). Caller holds uvmem_lock. ``fault_page``: the device page whose host
    fault calls this (v6.1+), whose reference is then expected."""
    uv = kvm.uv
    ret = U_SUCCESS
    if kvmppc_gfn_is_uvmem_pfn(gpa >> page_shift, kvm) is None:
        return ret  # already paged out
    kvm.m.racing(SHARE_VS_PAGE_OUT, "kvmppc_share_page", gpa=gpa)
    mig = MigrateVma(vma, start, MIGRATE_VMA_SELECT_DEVICE_PRIVATE, fault_page)
    if await migrate_vma_setup(kvm, mig):
        return -1
    if mig.src >= 0 or not mig.migrate:
        migrate_vma_finalize(kvm, mig)
        return ret
    dev = kvm.uvmem_dev
    bit = -mig.src - 1
    dpage = kvm.memory.normal.alloc()
    if not dev.pvt_flags[bit] & PVT_SKIP_PAGE_OUT:
        ret = await uv.uv_page_out(kvm.lpid, dpage << page_shift, gpa, 0, page_shift)
    if ret == U_SUCCESS:
        mig.dst = dpage
    else:
        kvm.memory.normal.free(dpage)
        migrate_vma_finalize(kvm, mig)
        return ret
    await migrate_vma_pages(kvm, mig)
    migrate_vma_finalize(kvm, mig)
    return ret


async def kvmppc_svm_page_out(vma: VMA, start: int, end: int, page_shift: int, kvm: KVM,
                              gpa: int, fault_page: int = 0) -> int:
    await kvm.uvmem_lock.lock()
    ret = await __kvmppc_svm_page_out(vma, start, end, page_shift, kvm, gpa, fault_page)
    if ret == -1 and kvm.quirk("page-out-lock-leak"):
        return ret  # B1: the setup-failure path forgot the unlock
    kvm.uvmem_lock.unlock()
    return ret


async def kvmppc_uvmem_drop_pages(slot: Memslot, kvm: KVM, skip_page_out: bool) -> None:
    """Drop the device pages of a slot: page each one out directly (content copied back
    unless ``skip_page_out``) and clear every GFN's state (81ab595ddd3c)."""
    dev = kvm.uvmem_dev
    await kvm.mm.mmap_lock.mmap_read_lock()
    addr = slot.userspace_addr
    vma = None
    for gfn in range(slot.base_gfn, slot.base_gfn + slot.npages):
        if vma is None or addr >= vma.end:
            vma = kvm.mm.vma_lookup(addr)
            if vma is None:
                break  # "Can't find VMA for gfn"
        await kvm.uvmem_lock.lock()
        uvmem_pfn = kvmppc_gfn_is_uvmem_pfn(gfn, kvm)
        if uvmem_pfn is not None:
            bit = uvmem_pfn - 1
            flags = dev.pvt_flags[bit] & ~PVT_SKIP_PAGE_OUT
            dev.pvt_flags[bit] = flags | PVT_REMOVE_GFN | (PVT_SKIP_PAGE_OUT * skip_page_out)
            await __kvmppc_svm_page_out(vma, addr, addr + PAGE_SIZE, PAGE_SHIFT, kvm,
                                        dev.pvt_gpa[bit])  # errors are only logged
        else:
            kvmppc_gfn_remove(gfn, kvm)
        kvm.uvmem_lock.unlock()
        addr += PAGE_SIZE
    kvm.mm.mmap_lock.mmap_read_unlock()


async def kvmppc_h_svm_init_abort(kvm: KVM) -> int:
    """Back to a Normal VM: secure contents copied back, H_PARAMETER by design (the result
    goes to the guest's UV_ESM, which thereby fails)."""
    if not kvm.secure_guest & KVMPPC_SECURE_INIT_START:
        return H_UNSUPPORTED
    if kvm.secure_guest & KVMPPC_SECURE_INIT_DONE:
        return H_STATE
    srcu_idx = await kvm.srcu.read_lock()
    kvm.touch_memslots()
    for memslot in kvm.memslots:
        await kvmppc_uvmem_drop_pages(memslot, kvm, False)
    kvm.srcu.read_unlock(srcu_idx)
    kvm.secure_guest = 0
    kvm.m.cold(VM_TRANSIENT, kvm.lpid)
    await kvm.uv.uv_svm_terminate(kvm.lpid)
    return H_PARAMETER


# ---------------------------------------------------------------------- page-in
def kvmppc_uvmem_get_page(gpa: int, kvm: KVM) -> int | None:
    """A free device pfn for ``gpa`` (uvmem_lock held), its pvt zeroed; None if none."""
    dev = kvm.uvmem_dev
    bit = dev.bitmap.find(0, dev._hint)
    if accesses.current.on:  # (none found: only the bitmap was read)
        touch_devpages(bit + 1, bit + 2 if bit >= 0 else bit + 1)
    if bit < 0:
        return None
    dev.bitmap[bit] = 1
    dev._hint = bit + 1
    dev.pvt_gpa[bit] = gpa
    dev.pvt_lpid[bit] = kvm.lpid
    dev.pvt_flags[bit] = PVT_VALID
    kvmppc_gfn_secure_uvmem_pfn(gpa >> PAGE_SHIFT, bit + 1, kvm)
    return bit + 1


async def kvmppc_svm_page_in(vma: VMA, start: int, end: int, gpa: int, kvm: KVM,
                             page_shift: int, pagein: bool) -> int:
    """Move the page to a device page; with ``pagein`` copy it to the UV with UV_PAGE_IN."""
    mig = MigrateVma(vma, start, MIGRATE_VMA_SELECT_SYSTEM)
    ret = await migrate_vma_setup(kvm, mig)
    if ret:
        return ret
    if not mig.migrate:
        migrate_vma_finalize(kvm, mig)
        return -1
    word = kvmppc_uvmem_slot_lookup(kvm, gpa >> page_shift)
    dpfn = kvmppc_uvmem_get_page(gpa, kvm)
    if dpfn is None:
        migrate_vma_finalize(kvm, mig)
        return -1
    if pagein and mig.src > 0:
        ret = await kvm.uv.uv_page_in(kvm.lpid, mig.src << page_shift, gpa, 0, page_shift)
        if ret:
            if kvm.design == "gfn-states" and kvm.quirk("page-in-fail-leaves-uvmem"):
                # the kernel jumps to out_finalize with *mig.dst unset: the device page
                # stays allocated and the GFN flagged UVMEM
                migrate_vma_finalize(kvm, mig)
                return ret
            # the evident fix (and the two-state proposal's): fail the migration, release
            # the device page and give the GFN back the state it had
            mig.dst = -dpfn
            migrate_vma_finalize(kvm, mig)
            kvmppc_mark_gfn(gpa >> page_shift, kvm, word & KVMPPC_GFN_FLAG_MASK,
                            word & KVMPPC_GFN_PFN_MASK)
            return ret
    mig.dst = -dpfn
    await migrate_vma_pages(kvm, mig)
    migrate_vma_finalize(kvm, mig)
    if not mig.done and not kvm.quirk("page-in-hole-race"):
        # The kernel returns 0 here even though migrate_vma_pages aborted the insert of a
        # hole a host fault filled meanwhile (no copy reached the UV, page_free made the
        # GFN "paged out"); the evident fix migrates the page now there
        return await kvmppc_svm_page_in(vma, start, end, gpa, kvm, page_shift, pagein)
    return ret


BUSY_RETRIES = 16
"""How often the fixed INIT_DONE and H_SVM_PAGE_IN retry a page other references or a
migration keep from migrating (a long-term pin stays: they then fail as the kernel's do)."""


def kvmppc_svm_page_in_run(vma: VMA, start: int, gfn: int, kvm: KVM,
                           limit: int) -> tuple[int, bool]:
    """``kvmppc_svm_page_in(pagein=false)`` for the run of consecutive GFNs from ``gfn`` that
    have no state yet (at most ``limit``), done as array operations.

    The kernel migrates these pages one by one under uvmem_lock and mmap_lock with no yield
    between two cond_resched() calls; doing a run at once is the same except for what
    another CPU could do inside one page's migration (no copy, so a window of a few
    instructions): fill a hole (the insert would abort) or take the notifier's mmu_lock.
    Those windows are not interleaved here (a stated convenience); the per-page function,
    which copies, has them all. Returns (GFNs moved, ok): ok is False if
    the page after the moved ones failed as kvmppc_svm_page_in would (an injected
    migrate_vma_setup failure, or no free device page); a run that ends at a GFN with state
    or at a device page ends without failing."""
    p = uvmem_slot(kvm, gfn)
    dev = kvm.uvmem_dev
    i0, v0 = gfn - p.base_pfn, vma.index(start)
    n = min(limit, p.nr_pfns - i0, len(vma.pte) - v0)
    words, ptes = p.pfns[i0:i0 + n], vma.pte[v0:v0 + n]
    inject = kvm.fail_migrate_setup is not no_faults
    any_busy = kvm.memory.normal.refs.counts or kvm.mm.migrating  # (rarely: skip the check)
    run, ok = 0, True
    for word, pte in zip(words, ptes, strict=True):
        if word:
            break
        if pte < 0 or (any_busy and page_busy(kvm, start + run * PAGE_SIZE)) or \
                (inject and kvm.fail_migrate_setup(
                MigrateVma(vma, start + run * PAGE_SIZE, MIGRATE_VMA_SELECT_SYSTEM))):
            ok = False  # not collected (a device page, a page with extra references or
            # under migration) or setup failed: -1
            break
        run += 1
    if accesses.current.on:  # the words and PTEs read: the run and the one that ended it
        touch_gfns(kvm, gfn, gfn + min(run + 1, n), False)
        touch_ptes(vma, v0, v0 + min(run + 1, n), False)
        for pte in ptes[:min(run + 1, n)]:  # (their references: page_busy, skipped or not)
            if pte > 0:
                kvm.memory.normal.refs.touch(pte)
        accesses.current.touch("devpage:bitmap", True)
    done, b, bitmap = 0, dev._hint, dev.bitmap
    while done < run and (b := bitmap.find(0, b)) >= 0:  # kvmppc_uvmem_get_page, in runs
        want = min(b + run - done, dev.npages)
        e = bitmap.find(1, b, want)
        e = want if e < 0 else e
        k = e - b
        bitmap[b:e] = b"\x01" * k
        gpa = (gfn + done) << PAGE_SHIFT
        dev.pvt_gpa[b:e] = array("Q", range(gpa, gpa + (k << PAGE_SHIFT), PAGE_SIZE))
        dev.pvt_lpid[b:e] = array("L", [kvm.lpid]) * k
        dev.pvt_flags[b:e] = bytes([PVT_VALID]) * k
        p.pfns[i0 + done:i0 + done + k] = array(
            "Q", range(KVMPPC_GFN_UVMEM_PFN + b + 1, KVMPPC_GFN_UVMEM_PFN + e + 1))
        vma.pte[v0 + done:v0 + done + k] = array("q", range(-(b + 1), -(e + 1), -1))
        kvm.mm.pte_version += 1
        if accesses.current.on:
            touch_gfns(kvm, gfn + done, gfn + done + k, True)
            touch_devpages(b + 1, e + 1)
            touch_ptes(vma, v0 + done, v0 + done + k, True)
        done += k
        b = e
        dev._hint = e
    if done < run:
        ok = False  # out of device pages: kvmppc_uvmem_get_page returned NULL
    for src in ptes[:done]:  # migrate_vma_finalize frees the normal pages that moved
        if src > 0:
            kvm.memory.normal.refs.release(src)
    return done, ok


async def kvmppc_uv_migrate_mem_slot(kvm: KVM, memslot: Memslot) -> int:
    """Move every GFN of the slot that has no state yet to a device page. The gfn-states
    design does it without UV_PAGE_IN (dfaa973ae960); the two-state design pages each one in
    and leaves the ones the UV refuses (shared) as they are."""
    two_state = kvm.design == "two-state"
    gfn = memslot.base_gfn
    ret = 0
    batch = 0
    retries = 0 if kvm.quirk("busy-page-fails") else BUSY_RETRIES
    await kvm.mm.mmap_lock.mmap_read_lock()
    await kvm.uvmem_lock.lock()
    while (gfn := kvmppc_next_nontransitioned_gfn(memslot, kvm, gfn)) is not None:
        ret = H_STATE
        start = kvm.gfn_to_hva(gfn)
        if start is None:
            break
        end = start + PAGE_SIZE
        vma = _vma_covering(kvm, start, end)
        if vma is None:
            break
        if two_state:
            ret = await kvmppc_svm_page_in(vma, start, end, gfn << PAGE_SHIFT, kvm,
                                           PAGE_SHIFT, True)
            moved, ok = 1, not ret or ret == H_PARAMETER  # H_PARAMETER: the UV refused
        else:
            moved, ok = kvmppc_svm_page_in_run(vma, start, gfn, kvm, RESCHED_BATCH - batch)
            if kvm.migrate_ns and moved:  # the cost model: the time those migrations take
                await kvm.m.sleep(kvm.migrate_ns * moved)
        if not ok:
            stuck = start + (moved << PAGE_SHIFT) if not two_state else start
            if not retries or not page_busy(kvm, stuck):
                ret = H_STATE
                if (busy := _busy_page(kvm, vma, stuck)) is not None:
                    failed_on(kvm, busy)  # the holder of that reference made INIT_DONE fail
                break
            # the evident fix of busy-page-fails: a page another reference holds (a
            # share's gfn_to_pfn) is busy, not broken: let the holder finish, then go on
            retries -= 1
            kvm.uvmem_lock.unlock()
            kvm.mm.mmap_lock.mmap_read_unlock()
            await kvm.m.yield_point(f"INIT_DONE: retry busy GFN {gfn + moved:#x}")
            await kvm.mm.mmap_lock.mmap_read_lock()
            await kvm.uvmem_lock.lock()
            gfn += moved
            continue
        ret = 0
        gfn += moved
        batch += moved
        if batch >= RESCHED_BATCH:  # cond_resched()
            batch = 0
            await kvm.m.yield_point(f"cond_resched (migrating slot {memslot.id})")
    kvm.uvmem_lock.unlock()
    kvm.mm.mmap_lock.mmap_read_unlock()
    return ret


async def kvmppc_h_svm_init_done(kvm: KVM) -> int:
    if not kvm.secure_guest & KVMPPC_SECURE_INIT_START:
        return H_UNSUPPORTED
    srcu_idx = await kvm.srcu.read_lock()
    ret = H_SUCCESS
    if not kvm.quirk("no-init-done-migration"):
        kvm.touch_memslots()
        for memslot in kvm.memslots:
            if await kvmppc_uv_migrate_mem_slot(kvm, memslot):
                # The pages stay transitioned; the caller must terminate the VM. INIT_DONE
                # stays unset.
                ret = H_STATE
                break
    if ret == H_SUCCESS:
        kvm.secure_guest |= KVMPPC_SECURE_INIT_DONE
        kvm.m.cold(VM_TRANSIENT, kvm.lpid)
    kvm.srcu.read_unlock(srcu_idx)
    return ret


async def kvmppc_share_page(kvm: KVM, gpa: int, page_shift: int) -> int:
    """Share the page with the HV: if it is secure, page it out with skip_page_out (the HV
    gets a fresh page, the secure content is dropped), then hand the normal page to the UV.
    gfn_to_pfn may fault, so uvmem_lock is dropped around it: the retry loop."""
    dev = kvm.uvmem_dev
    ret = H_PARAMETER
    gfn = gpa >> page_shift

    def mark_skip(uvmem_pfn: int) -> None:
        bit = uvmem_pfn - 1  # do not drop the GFN: it becomes a shared GFN
        dev.pvt_flags[bit] = (dev.pvt_flags[bit] | PVT_SKIP_PAGE_OUT) & ~PVT_REMOVE_GFN

    kvm.m.racing(SHARE_VS_PAGE_OUT, "__kvmppc_svm_page_out", gpa=gpa)
    srcu_idx = await kvm.srcu.read_lock()
    await kvm.uvmem_lock.lock()
    if (uvmem_pfn := kvmppc_gfn_is_uvmem_pfn(gfn, kvm)) is not None:
        mark_skip(uvmem_pfn)
    sharing = share_key(kvm, gfn)
    kvm.m.hot(SHARE_RETRY, sharing, "H_SVM_PAGE_IN(H_PAGE_IN_SHARED)")
    while True:  # retry:
        kvm.uvmem_lock.unlock()
        pfn = await kvm.gfn_to_pfn(gfn)
        if is_error_noslot_pfn(pfn):
            kvm.m.cold(SHARE_RETRY, sharing)
            kvm.srcu.read_unlock(srcu_idx)
            return ret
        await kvm.uvmem_lock.lock()
        uvmem_pfn = kvmppc_gfn_is_uvmem_pfn(gfn, kvm)
        if uvmem_pfn is not None:
            # a racing page-in won: page it out again. Unreachable with the reference
            # gfn_to_pfn holds (migrate_vma does not collect such a page): README, findings
            mark_skip(uvmem_pfn)
            kvm.kvm_release_pfn_clean(pfn)
            continue
        break
    if not await kvm.uv.uv_page_in(kvm.lpid, pfn << page_shift, gpa, 0, page_shift):
        kvmppc_gfn_shared(gfn, kvm)
        ret = H_SUCCESS
    kvm.kvm_release_pfn_clean(pfn)
    kvm.uvmem_lock.unlock()
    kvm.srcu.read_unlock(srcu_idx)
    kvm.m.cold(SHARE_RETRY, sharing)
    return ret


async def kvmppc_h_svm_page_in(kvm: KVM, gpa: int, flags: int, page_shift: int) -> int:
    """H_SVM_PAGE_IN: move the page to secure memory (or share it, H_PAGE_IN_SHARED)."""
    if not kvm.secure_guest & KVMPPC_SECURE_INIT_START:
        return H_UNSUPPORTED
    if page_shift != PAGE_SHIFT:
        return H_P3
    if flags & ~H_PAGE_IN_SHARED:
        return H_P2
    if flags & H_PAGE_IN_SHARED:
        return await kvmppc_share_page(kvm, gpa, page_shift)
    ret = H_PARAMETER
    gfn = gpa >> page_shift
    retries = 0 if kvm.quirk("busy-page-fails") else BUSY_RETRIES
    srcu_idx = await kvm.srcu.read_lock()
    await kvm.mm.mmap_lock.mmap_read_lock()
    start = kvm.gfn_to_hva(gfn)
    while start is not None:
        await kvm.uvmem_lock.lock()
        busy = False
        if kvmppc_gfn_is_uvmem_pfn(gfn, kvm) is None:  # fail an already paged-in page
            end = start + (1 << page_shift)
            vma = _vma_covering(kvm, start, end)
            rc = vma and await kvmppc_svm_page_in(vma, start, end, gpa, kvm, page_shift, True)
            if vma and not rc:
                ret = H_SUCCESS
            busy = rc == -1 and retries > 0 and page_busy(kvm, start)
        kvm.uvmem_lock.unlock()
        if not busy:
            break
        # the evident fix of busy-page-fails: a page under migration or held by another
        # reference for the moment is busy, not broken; let the holder finish
        retries -= 1
        await kvm.m.yield_point(f"H_SVM_PAGE_IN: retry busy GFN {gfn:#x}")
    kvm.mm.mmap_lock.mmap_read_unlock()
    kvm.srcu.read_unlock(srcu_idx)
    return ret


async def kvmppc_h_svm_page_out(kvm: KVM, gpa: int, flags: int, page_shift: int) -> int:
    """H_SVM_PAGE_OUT: move the page from secure memory to normal memory."""
    if not kvm.secure_guest & KVMPPC_SECURE_INIT_START:
        return H_UNSUPPORTED
    if page_shift != PAGE_SHIFT:
        return H_P3
    if flags:
        return H_P2
    ret = H_PARAMETER
    gfn = gpa >> page_shift
    srcu_idx = await kvm.srcu.read_lock()
    await kvm.mm.mmap_lock.mmap_read_lock()
    start = kvm.gfn_to_hva(gfn)
    if start is not None:
        end = start + (1 << page_shift)
        vma = _vma_covering(kvm, start, end)
        if vma and not await kvmppc_svm_page_out(vma, start, end, page_shift, kvm, gpa):
            ret = H_SUCCESS
    kvm.mm.mmap_lock.mmap_read_unlock()
    kvm.srcu.read_unlock(srcu_idx)
    return ret


async def kvmppc_send_page_to_uv(kvm: KVM, gfn: int) -> int:
    """A radix fault of an INIT_DONE VM: send the page to the UV unless it is secure.
    Returns 0 (RESUME_GUEST) or -EFAULT."""
    pfn = await kvm.gfn_to_pfn(gfn)
    if is_error_noslot_pfn(pfn):
        return -14
    await kvm.uvmem_lock.lock()
    ret = U_SUCCESS
    if kvmppc_gfn_is_uvmem_pfn(gfn, kvm) is None:
        ret = await kvm.uv.uv_page_in(kvm.lpid, pfn << PAGE_SHIFT, gfn << PAGE_SHIFT, 0,
                                        PAGE_SHIFT)
    kvm.kvm_release_pfn_clean(pfn)
    kvm.uvmem_lock.unlock()
    return 0 if ret == U_SUCCESS else -14


# ---------------------------------------------------------------------- memslot commit
async def kvmppc_uvmem_memslot_create(kvm: KVM, new: Memslot) -> int:
    """Hot-plugged memory of a secure VM goes straight to Secure."""
    ret = await __kvmppc_uvmem_memslot_create(kvm, new)
    if not ret:
        ret = await kvmppc_uv_migrate_mem_slot(kvm, new)
    return ret


async def kvmppc_uvmem_memslot_delete(kvm: KVM, old: Memslot) -> None:
    await __kvmppc_uvmem_memslot_delete(kvm, old)


async def kvmppc_radix_flush_memslot(kvm: KVM, memslot: Memslot) -> None:
    """book3s_64_mmu_radix.c: a secure VM's device pages are dropped (content discarded,
    words cleared) once INIT_START is set; with INIT_DONE it returns there, else it unmaps
    the partition-scoped PTEs of the slot (nothing the model keeps)."""
    if kvm.secure_guest & KVMPPC_SECURE_INIT_START:
        await kvmppc_uvmem_drop_pages(memslot, kvm, True)
    if kvm.secure_guest & KVMPPC_SECURE_INIT_DONE:
        return
    await kvm.mmu_lock.lock()  # kvm_unmap_radix of each present PTE
    kvm.mmu_lock.unlock()
