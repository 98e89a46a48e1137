"""A KVM VM as the secure-VM code sees it: memslots, QEMU's mm, the locks, the state words.

Memslots are published under ``kvm->srcu``; a GFN resolves to a host virtual address in
QEMU's mm, whose page table says what backs it. ``gfn_to_pfn`` is get_user_pages: it takes
``mmap_lock`` for read and faults a device-private page back to RAM through the uvmem
``migrate_to_ram`` handler, which is why nothing may call it under ``uvmem_lock``. Every
reference it returns must be dropped by exactly one ``kvm_release_pfn_clean``.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from ..hw.hostmm import VMA, HostMM
from ..hw.memory import PhysicalMemory
from ..sim import Machine, accesses
from . import mm
from .hvcall import PAGE_SHIFT
from .releases import ID_HASH_BITS, Behaviour, behaviour, hash_32

if TYPE_CHECKING:
    from .ultravisor_api import UltravisorCalls
    from .uvmem import UvmemDevice, UvmemSlot

KVM_MEMSLOT_INVALID = 1 << 16
MEMSLOT_POISON = 1 << 62
"""Model-only memslot flag: ``kvm_delete_memslot`` freed the slot (kvfree), as slab
debugging poisons a freed object, so a later use through it is seen."""
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MR_CREATE, KVM_MR_DELETE, KVM_MR_MOVE, KVM_MR_FLAGS_ONLY = "CREATE", "DELETE", "MOVE", \
    "FLAGS_ONLY"
"""enum kvm_mr_change: what a KVM_SET_USER_MEMORY_REGION does to a slot."""
VPA_KINDS = ("vpa", "dtl", "slb_shadow")
KVM_PFN_NOSLOT = -1
NR_CPUS = 2048
"""CONFIG_NR_CPUS of a ppc64 book3s kernel (the Kconfig default), and so KVM_MAX_VCPUS; the
bound on a nested vcpu_token too."""


def no_faults(mig: Any) -> bool:
    """The default fault injector: migrate_vma_setup never fails."""
    return False


def is_error_noslot_pfn(pfn: int) -> bool:
    return pfn < 0


@attrs.define(eq=False)
class Memslot:
    id: int
    base_gfn: int
    npages: int
    userspace_addr: int
    flags: int = 0
    seq: int = 0
    """When it was published (the newest first within an id_hash bucket, v5.17+)."""

    def contains(self, gfn: int) -> bool:
        return self.base_gfn <= gfn < self.base_gfn + self.npages


@attrs.define(eq=False)
class KVM:
    """The parts of ``struct kvm`` / ``kvm->arch`` the uvmem code touches."""

    m: Machine
    lpid: int
    memory: PhysicalMemory
    uvmem_dev: UvmemDevice = None  # type: ignore[assignment]
    """The secure-VM platform's uvmem device and Ultravisor (None on other platforms: only
    the secure-VM code paths use them)."""
    uv: UltravisorCalls = None  # type: ignore[assignment]
    quirks: tuple[str, ...] = ()
    design: str = "gfn-states"
    migrate_ns: int = 0
    """Virtual time per page INIT_DONE moves without a copy (the cost model)."""
    svm_enabled: bool = True
    radix: bool = True
    secure_guest: int = 0
    uvmem_walk_pending: bool = False
    """The fix for ``init-start-unserialised``: H_SVM_INIT_START has set its flag and not yet
    walked the memslots, so the commit hook leaves a new slot to that walk."""
    mmu_ready: int = 1
    vcpus_running: int = 0
    memslots: list[Memslot] = attrs.Factory(list)
    memslots_generation: int = 0
    """The generation of ``memslots`` (kvm_memslots.generation): every change of the slots, or
    of a slot's flags, makes a new one, so whoever caches a translation through them knows
    when to redo it."""
    uvmem_pfns: list[UvmemSlot] = attrs.Factory(list)
    """kvm->arch.uvmem_pfns; list_add puts new slots at the head."""
    pfn_refs: dict[str, int] = attrs.Factory(dict)
    """Outstanding gfn_to_pfn references per actor."""
    rc_causes: dict[str, tuple[str, int]] = attrs.Factory(dict)
    """Thread -> the object (its access name) whose state decided the failing code the kernel
    function on that thread returns, and the step that decided it (``uvmem.failed_on``): the
    return-code check names them (``violations.About``). Not part of the trace."""
    fail_migrate_setup: Callable[[Any], bool] = no_faults
    """Fault injection: migrate_vma_setup fails for this struct migrate_vma."""
    srcu: Any = None
    mm: HostMM = None  # type: ignore[assignment]
    uvmem_lock: Any = None
    mmu_setup_lock: Any = None
    slots_lock: Any = None
    mmu_lock: Any = None
    vpa_update_lock: Any = None
    release: str | None = None
    """The kernel release modelled (``--kernel``, from the machine); None: the default."""
    behaviour: Behaviour = None  # type: ignore[assignment]
    """What the release changes besides its quirks (emu/kvm/releases.py)."""
    published: int = 0
    pinned: dict[int, list[int]] = attrs.Factory(dict)
    """Host virtual address -> the pfns of its long-term references (kvmppc_pin_guest_page:
    the VPA, DTL and SLB shadow of each vCPU). Each is a page reference migrate_vma_setup
    does not collect (emu/kvm/mm.py), so the page cannot become a device page."""
    vpas: dict[tuple[int, str], int] = attrs.Factory(dict)
    """(vCPU, "vpa" | "dtl" | "slb_shadow") -> the pinned GPA (vcpu->arch.vpa etc.)."""
    pate: bool = True
    """The partition-table entry of the LPID is valid (kvmppc_setup_partition_table at VM
    creation; UV_SVM_TERMINATE drops the SVM's; kvmhv_svm_off and kvmhv_setup_mmu rewrite
    it)."""
    destroyed: bool = False
    online_vcpus: int = 0
    """kvm->online_vcpus (a vCPU id below it names a vCPU)."""
    """kvm_destroy_vm ran: the struct kvm is freed."""

    def __attrs_post_init__(self) -> None:
        m = self.m
        if self.release is None:
            self.release = m.release
        self.behaviour = behaviour(self.release)
        self.srcu = m.srcu("kvm->srcu")
        self.mm = HostMM(m.rwsem("mmap_lock"))
        self.uvmem_lock = m.mutex("uvmem_lock")
        self.mmu_setup_lock = m.mutex("mmu_setup_lock")
        self.slots_lock = m.mutex("slots_lock")
        self.mmu_lock = m.spinlock("mmu_lock")
        self.vpa_update_lock = m.spinlock("vpa_update_lock")

    def quirk(self, name: str) -> bool:
        return name in self.quirks

    # ------------------------------------------------------------------ memslots
    def new_memslot(self, slot_id: int, base_gfn: int, npages: int) -> Memslot:
        """QEMU mmaps the backing of a slot it is about to hand to KVM."""
        hva = 0x7F00_0000_0000 + (base_gfn << PAGE_SHIFT)
        self.mm.mmap(VMA.anonymous(hva, npages))
        return Memslot(slot_id, base_gfn, npages, hva)

    def publish(self, slot: Memslot) -> None:
        """Install a memslot. ``memslots`` is kept in ``kvm_for_each_memslot`` order: before
        5.17 the array, by descending base GFN; from 5.17 ``hash_for_each`` over id_hash, by
        bucket (hash_32 of the slot id, 7 bits), the newest first within a bucket."""
        self.published += 1
        slot.seq = self.published
        if self.behaviour.memslot_walk == "id-hash":
            self._install(sorted([*self.memslots, slot],
                                 key=lambda s: (hash_32(s.id, ID_HASH_BITS), -s.seq)))
        else:
            self._install(sorted([*self.memslots, slot], key=lambda s: -s.base_gfn))

    def object(self, what: str) -> str:
        """The access relation's name of the VM's ``what`` ("mmu", "vcpus_running",
        "memslots"), ``<what>:<lpid>``: what the ``touch_*`` methods report, and what a
        check names when its violation is about it (``violations.About``)."""
        return f"{what}:{self.lpid}"

    def touch_mmu(self, write: bool = False) -> None:
        """This step reads (writes) ``mmu_ready`` and the LPID's partition-table entry
        (``pate``), ``mmu:<lpid>``."""
        if accesses.current.on:
            accesses.current.touch(self.object("mmu"), write)

    def touch_running(self, write: bool = False) -> None:
        """This step reads (writes) ``vcpus_running``, ``vcpus_running:<lpid>``."""
        if accesses.current.on:
            accesses.current.touch(self.object("vcpus_running"), write)

    def touch_memslots(self, write: bool = False) -> None:
        """This step reads (writes) the VM's memslots, ``memslots:<lpid>``: a lookup or a
        walk reads them, installing a new set or changing a slot's flags writes them."""
        if accesses.current.on:
            accesses.current.touch(self.object("memslots"), write)

    def _install(self, memslots: list[Memslot]) -> None:
        self.touch_memslots(True)
        self.memslots = memslots
        self.memslots_generation += 1

    def add_memslot(self, slot_id: int, base_gfn: int, npages: int,
                    prealloc: bool = False) -> Memslot:
        """A slot present from boot (no SRCU dance: nothing runs yet); with ``prealloc``
        QEMU populates every page up front (-mem-prealloc)."""
        slot = self.new_memslot(slot_id, base_gfn, npages)
        if prealloc:
            vma = self.mm.vma_lookup(slot.userspace_addr)
            vma.pte[:] = array("q", self.memory.normal.alloc_range(npages))
            self.mm.pte_version += 1
        self.publish(slot)
        return slot

    def remove_memslot(self, slot: Memslot) -> None:
        self._install([s for s in self.memslots if s is not slot])

    def set_memslot_flags(self, slot: Memslot, flags: int) -> None:
        """Change a slot's flags (KVM_MEMSLOT_INVALID, dirty logging) in place, where the
        kernel installs a copy with them: a new generation all the same."""
        self.touch_memslots(True)
        slot.flags = flags
        self.memslots_generation += 1

    def free_memslots(self) -> None:
        """kvm_free_memslots."""
        self._install([])

    async def munmap_memslot(self, slot: Memslot, *, exiting: bool = False) -> None:
        """QEMU unmaps a removed slot's backing (or exits: exit_mmap, whose notifier is
        ->release, which leaves KVM nothing the model keeps)."""
        vma = self.mm.vma_lookup(slot.userspace_addr)
        if vma is not None:
            await mm.do_munmap(self, vma, notify=not exiting)

    def hva_to_gfns(self, start: int, end: int) -> list[int]:
        """The GFNs whose host pages lie in [start, end), in memslot order
        (kvm_handle_hva_range)."""
        gfns = []
        self.touch_memslots()
        for slot in self.memslots:
            lo = max(start, slot.userspace_addr)
            hi = min(end, slot.userspace_addr + (slot.npages << PAGE_SHIFT))
            if lo < hi:
                first = slot.base_gfn + ((lo - slot.userspace_addr) >> PAGE_SHIFT)
                gfns.extend(range(first, first + ((hi - lo) >> PAGE_SHIFT)))
        return gfns

    def gfn_to_memslot(self, gfn: int) -> Memslot | None:
        if accesses.current.on:
            accesses.current.touch(self.object("memslots"))
        for slot in self.memslots:  # (Memslot.contains, inlined: every access comes here)
            if slot.base_gfn <= gfn < slot.base_gfn + slot.npages and \
                    not slot.flags & KVM_MEMSLOT_INVALID:
                return slot
        return None

    def gfn_to_hva(self, gfn: int) -> int | None:
        """None is KVM_HVA_ERR_BAD."""
        slot = self.gfn_to_memslot(gfn)
        if slot is None:
            return None
        return slot.userspace_addr + ((gfn - slot.base_gfn) << PAGE_SHIFT)

    # ------------------------------------------------------------------ gfn_to_pfn
    async def gfn_to_pfn(self, gfn: int) -> int:
        """get_user_pages on the GFN's host page: a reference to a normal page, faulting a
        device page back to RAM first; KVM_PFN_NOSLOT / KVM_PFN_ERR_FAULT on error."""
        hva = self.gfn_to_hva(gfn)
        if hva is None:
            return KVM_PFN_NOSLOT
        pfn = await self.host_fault(hva)
        if pfn > 0:
            self.memory.normal.refs.get_page(pfn)
            actor = self.m.ctl.current.name
            self.pfn_refs[actor] = self.pfn_refs.get(actor, 0) + 1
        return pfn

    async def host_fault(self, hva: int) -> int:
        """A host access to ``hva`` (get_user_pages, QEMU, a guest's radix access): the
        normal pfn backing it after the fault, or KVM_PFN_ERR_FAULT (emu/kvm/mm.py)."""
        return await mm.get_user_page(self, hva)

    # ------------------------------------------------------------------ long-term pins
    async def kvmppc_pin_guest_page(self, gpa: int) -> int | None:
        """book3s_64_mmu_hv.c: under srcu, the GPA's memslot (not INVALID), then
        get_user_pages_fast(FOLL_WRITE): a reference held until kvmppc_unpin_guest_page.
        The pfn, or None (NULL: the caller returns H_PARAMETER)."""
        gfn = gpa >> PAGE_SHIFT
        srcu_idx = await self.srcu.read_lock()
        hva = self.gfn_to_hva(gfn)
        pfn = await self.host_fault(hva) if hva is not None else KVM_PFN_NOSLOT
        if pfn > 0:
            self.memory.normal.refs.get_page(pfn)
            self.pinned.setdefault(hva, []).append(pfn)
        self.srcu.read_unlock(srcu_idx)
        return pfn if pfn > 0 else None

    def kvmppc_unpin_guest_page(self, gpa: int) -> None:
        """put_page of the pinned page (the memslot is looked up again; a gone slot's page
        is simply released)."""
        self.touch_memslots()
        slot = next((s for s in self.memslots if s.contains(gpa >> PAGE_SHIFT)), None)
        hva = slot.userspace_addr + (((gpa >> PAGE_SHIFT) - slot.base_gfn) << PAGE_SHIFT) \
            if slot else None
        pins = self.pinned.get(hva)
        if not pins:
            return
        self.memory.normal.refs.put_page(pins.pop())
        if not pins:
            del self.pinned[hva]

    def kvm_release_pfn_clean(self, pfn: int) -> None:
        actor = self.m.ctl.current.name
        left = self.pfn_refs.get(actor, 0) - 1
        if left < 0 or not self.memory.normal.refs.count(pfn):
            self.m.fail("pfn-refcount", f"{actor} releases pfn {pfn} it holds no reference to")
            return
        self.pfn_refs[actor] = left
        self.memory.normal.refs.put_page(pfn)


async def kvm_delete_memslot(kvm: KVM, slot: Memslot) -> None:
    """KVM_SET_USER_MEMORY_REGION deleting ``slot`` (kvm_set_memslot, v5.17+ order), under
    slots_lock: kvm_invalidate_memslot (the slot INVALID, synchronize_srcu), the new
    memslots without it (synchronize_srcu), then kvm_free_memslot. The shadow flush
    (kvm_arch_flush_shadow_memslot) belongs to the nested MMU model and is left out."""
    await kvm.slots_lock.lock()
    kvm.set_memslot_flags(slot, slot.flags | KVM_MEMSLOT_INVALID)
    await kvm.srcu.synchronize()
    kvm.remove_memslot(slot)
    await kvm.srcu.synchronize()
    slot.flags |= MEMSLOT_POISON
    kvm.slots_lock.unlock()
