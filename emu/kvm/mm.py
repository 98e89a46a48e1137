"""Linux core mm as the secure-VM code meets it: page references, migration entries,
``migrate_vma_setup / pages / finalize`` (mm/migrate_device.c), the host page fault
(handle_mm_fault, do_swap_page), munmap, and page migration by reclaim, compaction or KSM
(migrate_pages), each telling the MMU notifiers first.

One host page, by its PTE (emu/hw/hostmm.py), and what each path does with it:

| PTE             | host fault (get_user_pages) | migrate_vma SYSTEM       | migrate_vma DEVICE |
|-----------------|-----------------------------|--------------------------|--------------------|
| none            | allocates a zero page       | a hole: inserted later   | not selected       |
| normal page     | uses it                     | collected (1)            | not selected       |
| device-private  | ->migrate_to_ram, retries   | not selected             | collected (1)      |
| migration entry | waits for it, retries       | not selected             | not selected       |

(1) unless the page has references beyond its mapping and the migrator's own
(migrate_vma_check_page): a get_user_pages reference (``gfn_to_pfn``), a long-term pin, a
host fault's reference on a device page (do_swap_page, v6.1+) other than the fault that
migrates. Such a page is "not collected": it keeps its PTE and the caller sees no
MIGRATE_PFN_MIGRATE (H_SVM_PAGE_IN then returns H_PARAMETER; page-out, drop_pages and
migrate_to_ram skip it). A collected page gets a migration entry until finalize, so a CPU,
QEMU or a fault touching it waits (migration_entry_wait) and then retries. A hole has no
entry: if a fault fills it before ``migrate_vma_pages``, the insert aborts (the PTE changed).

A page whose mapping goes is freed when its last reference goes (``refs.release`` of the
FramePool, or of the UvmemDevice for a device page, which frees through page_free). The
kernel retries a fault without bound; the model allows ``MAX_FAULT_RETRIES`` and reports a
livelock beyond.

Modelling choices, said here so they are not silent: KVM's notifier is called once per page
range, before the change (invalidate_range_start; _end does nothing the model keeps);
reclaim and KSM merge are modelled as moving the page to a new frame with its content (swap-out
then swap-in, or merging into an identical KSM page) under a migration entry; KSM's
write-protection and copy-on-write are not modelled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from ..hw.hostmm import touch_pte
from ..sim import accesses
from ..sim.violations import About
from .hvcall import PAGE_SIZE

if TYPE_CHECKING:
    from ..hw.hostmm import VMA, HostMM
    from .vm import KVM

MIGRATE_VMA_SELECT_SYSTEM = 1
MIGRATE_VMA_SELECT_DEVICE_PRIVATE = 2
MAX_FAULT_RETRIES = 64
FAULT_REF_NO_PAGE_LOCK = "fault-ref-no-page-lock"
KVM_PFN_ERR_FAULT = -2
EBUSY = -16


async def mmu_notifier_invalidate(mm: HostMM, start: int, end: int) -> int:
    """mmu_notifier_invalidate_range_start: every notifier, in registration order; 0 or the
    first error one of them met."""
    rc = 0
    for notifier in mm.notifiers:
        got = await notifier(start, end)
        rc = rc or got
    return rc


# ---------------------------------------------------------------------- migrate_vma
@attrs.define
class MigrateVma:
    """struct migrate_vma for one page."""

    vma: VMA
    start: int
    flags: int
    fault_page: int = 0
    """The device pfn whose host fault is migrating it (v6.1+: its reference is expected)."""
    src: int = 0
    """The page found at setup: >0 normal pfn, <0 device pfn, 0 none."""
    migrate: bool = False
    """MIGRATE_PFN_MIGRATE: collected and isolated."""
    entry: Any = None
    """The migration entry installed for it (a completion the waiters sleep on)."""
    dst: int = 0
    done: bool = False


def extra_references(kvm: KVM, page: int, fault_page: int = 0) -> int:
    """References beyond the mapping and the migrator's (migrate_vma_check_page's count)."""
    if page > 0:
        return kvm.memory.normal.refs.count(page)
    dpfn = -page
    return kvm.uvmem_dev.refs.count(dpfn) - (dpfn == fault_page)


def page_busy(kvm: KVM, hva: int) -> bool:
    """The normal page at ``hva`` is not collected now but may be later: it is under
    migration, or has references beyond its mapping (a long-term pin looks the same)."""
    pte = kvm.mm.get_pte(hva)
    return hva in kvm.mm.migrating or (pte > 0 and extra_references(kvm, pte) > 0)


async def migrate_vma_setup(kvm: KVM, mig: MigrateVma) -> int:
    """Tell the notifiers, then collect the page: select it by kind, check its references
    and replace it by a migration entry. 0, or -EBUSY (an injected failure)."""
    if kvm.fail_migrate_setup(mig):
        return EBUSY
    mm = kvm.mm
    await mmu_notifier_invalidate(mm, mig.start, mig.start + PAGE_SIZE)
    touch_pte(mig.start, True)  # (it may install a migration entry)
    if mig.start in mm.migrating:
        mig.src = 0  # a migration entry: not present, not device-private, not collected
        return 0
    mig.src = page = mig.vma.pte[mig.vma.index(mig.start)]
    if mig.flags == MIGRATE_VMA_SELECT_SYSTEM:
        selected = page >= 0
    else:
        selected = page < 0
    # collect: a device page another fault has locked is skipped (folio_trylock), and
    # migrate_vma_check_page refuses a page with extra references
    mig.migrate = selected and (page == 0 or (
        not extra_references(kvm, page, mig.fault_page)
        and not (page < 0 and -page != mig.fault_page and -page in kvm.uvmem_dev.locked)))
    if mig.migrate and page:
        mig.entry = mm.migrating[mig.start] = kvm.m.completion(
            f"migration entry {mig.start:#x}")
    return 0


async def migrate_vma_pages(kvm: KVM, mig: MigrateVma) -> None:
    """Install the destination. A hole is filled by migrate_vma_insert_page under the PTE
    lock, which aborts if the PTE is no longer empty (a fault filled it meanwhile)."""
    if not (mig.migrate and mig.dst):
        return
    i = mig.vma.index(mig.start)
    if mig.src == 0:
        await kvm.m.point("migrate_vma_insert_page: pte_offset_map_lock")
        touch_pte(mig.start, True)
        if mig.vma.pte[i] != 0 or mig.start in kvm.mm.migrating:
            mig.migrate = False  # the PTE changed under the migration: abort
            kvm.m.note(f"migrate_vma_insert_page: the PTE of {mig.start:#x} changed, abort")
            return
    mig.vma.pte[i] = mig.dst
    kvm.mm.pte_version += 1
    touch_pte(mig.start, True)
    mig.done = True


def migrate_vma_finalize(kvm: KVM, mig: MigrateVma) -> None:
    """Remove the migration entry (restoring the source if it did not move) and wake its
    waiters; the page that lost goes (a device page through page_free)."""
    if mig.entry is not None:
        touch_pte(mig.start, True)
        del kvm.mm.migrating[mig.start]
        mig.entry.complete_all()
    if not mig.done:
        if mig.dst < 0:
            kvm.uvmem_dev.refs.release(-mig.dst)
        elif mig.dst > 0:
            kvm.memory.normal.free(mig.dst)
        return
    if mig.src > 0:
        kvm.memory.normal.refs.release(mig.src)
    elif mig.src < 0:
        kvm.uvmem_dev.refs.release(-mig.src)


# ---------------------------------------------------------------------- the host fault
async def get_user_page(kvm: KVM, hva: int) -> int:
    """A host access to ``hva`` (get_user_pages, QEMU, a guest's radix access): take
    mmap_lock for read and fault the page in. The normal pfn, or KVM_PFN_ERR_FAULT."""
    await kvm.mm.mmap_lock.down_read()
    try:
        return await handle_mm_fault(kvm, hva)
    finally:
        kvm.mm.mmap_lock.up_read()


async def handle_mm_fault(kvm: KVM, hva: int) -> int:
    """Fault one host page in (mmap_lock held): the normal pfn now backing it, or
    KVM_PFN_ERR_FAULT. A migration entry is waited for, a device-private page is migrated
    back by its pagemap's ``migrate_to_ram``; either way the walk is retried."""
    mm = kvm.mm
    vma = mm.vma_lookup(hva)
    if vma is None:
        return KVM_PFN_ERR_FAULT
    i = vma.index(hva)
    why, tries = "", 0
    about: tuple[str, ...] = ()  # the objects the livelock is about, for explain
    while tries < MAX_FAULT_RETRIES:
        touch_pte(hva)
        entry = mm.migrating.get(hva)
        if entry is not None:
            why = "a migration entry"
            await entry.wait_for_completion()  # migration_entry_wait
        elif vma.pte[i] < 0:
            dpfn = -vma.pte[i]
            why = f"device page {dpfn}, which migrate_to_ram did not migrate"
            about = (f"page:device:{dpfn:#x}",)  # its references (hw.memory.PageRefs)
            failed = await do_swap_page_device(kvm, vma, hva, dpfn)
            if failed:
                return KVM_PFN_ERR_FAULT  # VM_FAULT_SIGBUS
            if failed is None:  # another fault holds the page lock: retry, no progress lost
                await kvm.m.yield_point("do_swap_page: trylock_page failed, retry")
                continue
        else:
            if vma.pte[i] == 0:
                vma.pte[i] = kvm.memory.normal.alloc()
                kvm.mm.pte_version += 1
                touch_pte(hva, True)
            return vma.pte[i]
        tries += 1
        await kvm.m.yield_point("handle_mm_fault: retry the walk")
    kvm.m.fail("fault-livelock", About(f"the host fault on {hva:#x} was retried "
                                       f"{MAX_FAULT_RETRIES} times, each time meeting {why}: "
                                       "it would retry forever", *about))
    return KVM_PFN_ERR_FAULT


async def do_swap_page_device(kvm: KVM, vma: VMA, hva: int, dpfn: int) -> int | None:
    """do_swap_page on a device-private entry: 0 (the walk is retried), 1 (SIGBUS), or
    None if another fault holds the page lock. Before v6.1 it calls ->migrate_to_ram and
    nothing else; from v6.1 (16ce101db85d) it holds a reference across the call, so the
    last reference, and page_free, may be this one; the trylock fix takes the page lock
    first (v6.15; quirk fault-ref-no-page-lock: without it, as v6.1..v6.12 have it)."""
    dev = kvm.uvmem_dev
    unlocked = kvm.quirk(FAULT_REF_NO_PAGE_LOCK)
    if not unlocked and kvm.behaviour.page_free != "after-fault":
        return await dev.migrate_to_ram(vma, hva, dpfn)
    if not unlocked:
        if dpfn in dev.locked:
            return None
        dev.locked[dpfn] = True
    dev.refs.get_page(dpfn)
    failed = await dev.migrate_to_ram(vma, hva, dpfn)
    if not unlocked:
        del dev.locked[dpfn]  # unlock_page, then put_page
    if dev.refs.unmapped(dpfn):
        await kvm.m.point("do_swap_page: put_page(vmf->page)")
    dev.refs.put_page(dpfn)  # page_free here if the migration let go of it
    return failed


# ---------------------------------------------------------------------- unmap and move
async def do_munmap(kvm: KVM, vma: VMA, *, notify: bool = True) -> None:
    """munmap under mmap_lock for write: tell the notifiers (unless ``notify`` is False:
    exit_mmap, whose notifier is ->release), drop the VMA, zap its pages (a page with
    references left goes at its last put_page; a device page through page_free)."""
    mm = kvm.mm
    await mm.mmap_lock.down_write()
    if notify:
        await mmu_notifier_invalidate(mm, vma.start, vma.end)
    mm.munmap(vma)
    for pte in vma.pte:
        if pte > 0:
            kvm.memory.normal.refs.release(pte)
        elif pte < 0:
            kvm.uvmem_dev.refs.release(-pte)
    mm.mmap_lock.up_write()


async def migrate_pages(kvm: KVM, hva: int, copy_ns: int, *, ksm: bool = False
                        ) -> tuple[bool, int]:
    """Move the normal page at ``hva`` to a new frame, as reclaim (swap out and in),
    compaction or a KSM merge does it: no mmap_lock (the page is found by rmap), a
    migration entry while the content is copied, the old page freed. A device page, a page
    under migration, an empty PTE or a page with extra references is left alone (-EAGAIN:
    folio_migrate_mapping's reference check); KSM leaves a VMA that is not mergeable.
    Returns (moved, what the notifiers returned)."""
    mm = kvm.mm
    vma = mm.vma_lookup(hva)
    if vma is None or (ksm and not vma.mergeable):
        return False, 0
    i = vma.index(hva)
    src = vma.pte[i]
    touch_pte(hva, True)  # (it may install a migration entry)
    if src <= 0 or hva in mm.migrating or kvm.memory.normal.refs.count(src):
        return False, 0
    entry = mm.migrating[hva] = kvm.m.completion(f"migration entry {hva:#x}")
    rc = await mmu_notifier_invalidate(mm, hva, hva + PAGE_SIZE)  # try_to_migrate
    normal = kvm.memory.normal
    moved = not normal.refs.count(src)
    if moved:
        dst = normal.alloc()
        if copy_ns:
            await kvm.m.sleep(copy_ns)  # the copy, with the migration entry installed
        if accesses.current.on:  # (the new frame, filled in place)
            accesses.current.touch(normal.name(dst), True)
        normal.frames[dst] = attrs.evolve(normal[src])  # ciphertext stays ciphertext
        vma.pte[i] = dst
        kvm.mm.pte_version += 1
        normal.refs.release(src)
    touch_pte(hva, True)
    del mm.migrating[hva]
    entry.complete_all()  # remove_migration_ptes
    return moved, rc
