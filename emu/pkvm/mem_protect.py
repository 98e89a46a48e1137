"""pKVM's ownership transitions at EL2 (arch/arm64/kvm/hyp/nvhe/mem_protect.c), v6.16,
function by function, and the host's memory abort path that lazily idmaps the host stage-2.

Components and their locks, always taken in this order and released in reverse
(enum pkvm_component_id is the locking order):

| component | lock                        | its view of a page                              |
|-----------|-----------------------------|-------------------------------------------------|
| host      | host_mmu.lock               | host_state in hyp_vmemmap; host stage-2 idmap    |
| hyp       | pkvm_pgd_lock               | hyp state in hyp_vmemmap; EL2 stage-1 mappings  |
| guest     | vm->lock (one per VM)       | guest stage-2 leaves, state in SW bits 56:55    |

A page's legal state combinations (v6.16; derived from the transitions below, by induction
from the boot state; ``count`` is host_share_guest_count, ``pins`` the hyp_page refcount of
a page the hyp borrows, ``k`` the guest leaves mapping the page):

| row | host            | hyp             | guest leaves       | count | pins | entered by  |
|-----|-----------------|-----------------|--------------------|-------|------|-------------|
| A   | OWNED           | NOPAGE          | none               | 0     | 0    | boot, undos |
| B   | SHARED_OWNED    | SHARED_BORROWED | none               | 0     | >= 0 | share_hyp   |
| C   | NOPAGE          | OWNED           | none               | 0     | any  | donate_hyp  |
| D   | SHARED_OWNED    | NOPAGE          | none               | 0     | 0    | share_ffa   |
| E   | SHARED_OWNED    | NOPAGE          | k SHARED_BORROWED  | k >= 1| 0    | share_guest |
| F   | SHARED_BORROWED | SHARED_OWNED    | none               | 0     | 0    | boot only   |

(C also at boot; F only from fix_host_ownership, for hyp pages shared with the host)
and, whatever the row: the host stage-2 entry of a memory page is a nonzero invalid
annotation exactly when the host state is NOPAGE (row C), with owner id PKVM_ID_HYP; a page
is mapped at EL2 exactly when hyp OWNED, or SHARED_BORROWED and pinned (before v6.16: any
SHARED_BORROWED page, the share mapped it at once). ``invariants.py`` checks these.

Every transition checks, then applies, holding its components' locks across both; an apply
step that fails after its checks passed is the kernel's WARN_ON, reported as
``ctx.fail("apply-failed", ...)``; a BUG_ON as ``ctx.fail("bug-on", ...)``. Return codes
are the kernel's (negative errno).

Release keys (``releases.behaviour(ctx.release)``): before v6.16 the hyp state lives in the
EL2 stage-1 PTE software bits (NOPAGE: no valid mapping), share_hyp maps the page at EL2 at
once and unshare unmaps it, and the hyp-side checks of host-initiated transitions run only
with CONFIG_NVHE_EL2_DEBUG (off here); before v6.14 the host state lives in the host
stage-2 PTE software bits (NOPAGE: an annotation), and unshare_hyp checks the pin before
the (debug-only) hyp state. The code below is v6.16's, keyed on those fields; the v5.17-v6.13
do_share/do_unshare framework is not reproduced, only the order of its checks.

Quirks: ``check-apply-unlocked`` drops and retakes the locks between check and apply (no
release had it), ``unshare-ignores-pin`` drops unshare_hyp's -EBUSY, ``abort-bug-on`` is the
pre-02949f36bc7b abort path that BUGs when __get_fault_info's AT walk fails.

Modelled machine (reconstructed where the kernel leaves it to firmware): one memblock of
``memory_pages`` pages at MEM_BASE_PFN, MMIO below it (pfns [0, mmio_pages)), the EL2
linear map with hyp_physvirt_offset = 0 (a page's hyp VA is its physical address). The
hypervisor's own pages sit at the top of memory (its host stage-2 pool, its stage-1 pool,
each VM's PGD and each vCPU's memcache), as __pkvm_init and fix_host_ownership leave them:
host NOPAGE behind an owner annotation, hyp OWNED and mapped at EL2. The host's stage-1 is
an identity VA -> IPA map the host program may change (``HostStage1``): it is what the AT
walk of __get_fault_info reads. CONFIG_NVHE_EL2_DEBUG is off, so assert_host_shared_guest
is empty and the hyp_assert_lock_held()s are compiled out. FF-A:
__pkvm_host_share_ffa/unshare_ffa as mem_protect.c has them; the FF-A proxy (ffa.c) only
unshares ranges the secure world recorded for a share, which ``ffa_mem_share`` /
``ffa_mem_reclaim`` model with a handle table.

For speed (not semantics): boot is run once per configuration and later Hyps start from a
copy of its result (``BootImage``); the table memory and vmemmap can log their stores
(``TrackedTableMemory``, ``TrackedVmemmap``) for the incremental invariant checker.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import EmuError
from ..hw.arm64_stage2 import (
    ADDRESS_SIZE_FAULT,
    PAGE_SHIFT,
    PAGE_SIZE,
    TableMemory,
    output_address,
    start_level_for,
)
from ..hw.arm64_tlb import Arm64Tlbs, translate_stepwise
from ..sim import accesses
from ..sim.sequential import Sequential
from .errno_base import E2BIG, EAGAIN, EBUSY, EFAULT, EINVAL, ENOENT, ENOMEM, EPERM
from .memory import (
    PKVM_NOPAGE,
    PKVM_PAGE_OWNED,
    PKVM_PAGE_SHARED_BORROWED,
    PKVM_PAGE_SHARED_OWNED,
    HypPool,
    HypVmemmap,
    hyp_alloc_pages,
    hyp_pool_init,
    pkvm_getstate,
    pkvm_mkstate,
)
from .pgtable import (
    KVM_PGTABLE_LAST_LEVEL,
    KVM_PGTABLE_PROT_RWX,
    KVM_PGTABLE_PROT_W,
    KVM_PGTABLE_S2_IDMAP,
    KVM_PGTABLE_S2_NOFWB,
    KVM_PGTABLE_WALK_LEAF,
    PAGE_HYP,
    PKVM_HOST_MEM_PROT,
    PKVM_HOST_MMIO_PROT,
    KvmPgtable,
    KvmPgtableMmOps,
    KvmPgtableVisitCtx,
    KvmPgtableWalker,
    __kvm_pgtable_stage2_init,
    host_s2_mm_ops,
    kvm_granule_size,
    kvm_level_supports_block_mapping,
    kvm_pgd_pages,
    kvm_pgtable_get_leaf,
    kvm_pgtable_hyp_init,
    kvm_pgtable_hyp_map,
    kvm_pgtable_hyp_pte_prot,
    kvm_pgtable_hyp_unmap,
    kvm_pgtable_stage2_map,
    kvm_pgtable_stage2_mkyoung,
    kvm_pgtable_stage2_pte_prot,
    kvm_pgtable_stage2_relax_perms,
    kvm_pgtable_stage2_set_owner,
    kvm_pgtable_stage2_test_clear_young,
    kvm_pgtable_stage2_unmap,
    kvm_pgtable_stage2_wrprotect,
    kvm_pgtable_walk,
    kvm_pte_to_phys,
    kvm_pte_valid,
)
from .releases import Behaviour, behaviour

PKVM_ID_HOST = 0
PKVM_ID_HYP = 1
PKVM_ID_GUEST = 2

ULONG_MAX = (1 << 64) - 1
U32_MAX = (1 << 32) - 1
MEM_BASE_PFN = 512
"""The first pfn of the memblock (2 MiB); MMIO lives below it."""
HOST_IA_BITS = 40
"""The host stage-2's input size (PARange; a 3-level walk from level 1 over a PGD of two
concatenated pages)."""
HYP_VA_BITS = 39
"""The EL2 stage-1's VA size (3 levels)."""
GUEST_IA_BITS = 36
"""A guest stage-2's input size (3 levels, one PGD page)."""

_OP_AT = "at s1e1r (host stage-1)"
_OP_HOST_WALK = "host stage-2 walk"
_OP_GUEST_WALK = "guest stage-2 walk"
_OP_HOST_S1 = "host stage-1 pte store"
HOST_ABORT = "host abort on cpu"
"""Liveness monitor (``Machine.hot``): a host access that took a stage-2 fault to EL2 is
retried until it reaches memory (the abort resolved) or the host's own stage-1 fails it."""


# --- the state EL2 keeps ------------------------------------------------------------------

class TrackedTableMemory(TableMemory):
    """Table memory that can log its stores for an incremental checker: ``log`` is None (no
    logging) or a list of (table pfn, entry index) per store, (pfn, -pages) per zeroing."""

    __slots__ = ("log",)

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[int, int]] | None = None

    def write(self, pfn: int, idx: int, desc: int) -> None:
        if self.log is not None:
            self.log.append((pfn, idx))
        TableMemory.write(self, pfn, idx, desc)

    def zero(self, pfn: int, nr_pages: int = 1) -> None:
        if self.log is not None:
            self.log.append((pfn, -nr_pages))
        TableMemory.zero(self, pfn, nr_pages)


class TrackedVmemmap(HypVmemmap):
    """``hyp_vmemmap`` that can log the pfns whose state, share count or refcount change
    (``log``: None, or a list of pfns)."""

    __slots__ = ("log",)

    def __init__(self, nr_pages: int) -> None:
        super().__init__(nr_pages)
        self.log: list[int] | None = None

    def _note(self, pfn: int) -> None:
        if self.log is not None:
            self.log.append(pfn)

    def set_host_state(self, phys: int, state: int) -> None:
        self._note(phys >> PAGE_SHIFT)
        HypVmemmap.set_host_state(self, phys, state)

    def set_hyp_state(self, phys: int, state: int) -> None:
        self._note(phys >> PAGE_SHIFT)
        HypVmemmap.set_hyp_state(self, phys, state)

    def set_host_share_guest_count(self, phys: int, count: int) -> None:
        self._note(phys >> PAGE_SHIFT)
        HypVmemmap.set_host_share_guest_count(self, phys, count)

    def hyp_page_ref_inc(self, pfn: int) -> None:
        self._note(pfn)
        HypVmemmap.hyp_page_ref_inc(self, pfn)

    def hyp_page_ref_dec(self, pfn: int) -> None:
        self._note(pfn)
        HypVmemmap.hyp_page_ref_dec(self, pfn)

    def hyp_set_page_refcounted(self, pfn: int) -> None:
        self._note(pfn)
        HypVmemmap.hyp_set_page_refcounted(self, pfn)


class KvmHypMemcache:
    """struct kvm_hyp_memcache: a stack of page frames (the kernel links them through the
    pages themselves); ``pages[-1]`` is the head."""

    __slots__ = ("pages",)

    def __init__(self, pages: list[int] | None = None) -> None:
        self.pages: list[int] = pages if pages is not None else []

    @property
    def nr_pages(self) -> int:
        return len(self.pages)

    def push(self, pfn: int) -> None:
        self.pages.append(pfn)

    def pop(self) -> int | None:
        return self.pages.pop() if self.pages else None


class GuestS2MmOps(KvmPgtableMmOps):
    """A guest stage-2's mm_ops (kvm_guest_prepare_stage2): pages come from the VM's pool
    (its PGD, and table pages freed back to it), else from the vCPU's memcache
    (guest_s2_zalloc_page)."""

    __slots__ = ()

    def zalloc_page(self, mc: Any) -> int | None:
        pfn = hyp_alloc_pages(self.pool, 0)
        if pfn is not None or mc is None:
            return pfn
        pfn = mc.pop()
        if pfn is None:
            return None
        vmemmap = self.pool.vmemmap
        self.pool.mem.zero(pfn)
        vmemmap.refcount[pfn] = 0
        vmemmap.order[pfn] = 0
        vmemmap.hyp_set_page_refcounted(pfn)  # p->refcount = 1, through the logging setter
        return pfn


class PkvmHypVcpu:
    """struct pkvm_hyp_vcpu, as far as ownership goes: its VM, its memcache (pages the host
    donated for the guest stage-2's tables), the host vCPU's memcache the hypervisor refills
    it from, and where it is loaded."""

    __slots__ = ("host_memcache", "index", "loaded_on", "memcache", "vm")

    def __init__(self, vm: PkvmHypVm, index: int) -> None:
        self.vm = vm
        self.index = index
        self.memcache = KvmHypMemcache()
        self.host_memcache = KvmHypMemcache()
        """host_vcpu->arch.pkvm_memcache: host pages offered for donation (the host program
        pushes pfns it owns)."""
        self.loaded_on: int | None = None
        """The CPU it is loaded on (hyp_vcpu->loaded_hyp_vcpu), or None."""


class PkvmHypVm:
    """struct pkvm_hyp_vm: a non-protected guest, its lock, VMID, stage-2 and pool."""

    __slots__ = ("handle", "index", "is_protected", "lock", "pgt", "pool", "vcpus", "vmid")

    def __init__(self, hyp: Hyp, index: int, nr_vcpus: int) -> None:
        self.index = index
        self.handle = HANDLE_OFFSET + index
        self.vmid = index + 1
        self.lock = hyp.ctx.spinlock(f"vm{index}.lock", "pkvm_hyp_vm.lock")
        self.pool = HypPool(hyp.hyp_vmemmap, hyp.mem)
        self.pgt = KvmPgtable(hyp.mem, hyp.tlbs, hyp.boot_ctx, vmid=self.vmid,
                              annotation_layout=hyp.behaviour.annotation_layout)
        self.is_protected = False
        self.vcpus = [PkvmHypVcpu(self, i) for i in range(nr_vcpus)]


HANDLE_OFFSET = 0x1000
"""pkvm_handle_t of the first VM (HANDLE_OFFSET in pkvm.c)."""


class HostMmu:
    """struct host_mmu: the host stage-2 and its lock."""

    __slots__ = ("lock", "pgt")

    def __init__(self, lock: Any, pgt: KvmPgtable) -> None:
        self.lock = lock
        self.pgt = pgt


class HostStage1:
    """The host kernel's stage-1 (VA page -> IPA page), identity unless the host program
    changed it: what EL2's AT S1E1R walks to resolve a faulting VA."""

    __slots__ = ("remapped", "version")

    def __init__(self) -> None:
        self.remapped: dict[int, int | None] = {}
        """VA pfn -> IPA pfn, or None where the host unmapped it."""
        self.version = 0

    def translate(self, va: int) -> int | None:
        if accesses.current.on:
            accesses.current.touch(f"host_s1:{va & ~(PAGE_SIZE - 1):#x}")
        vpfn = va >> PAGE_SHIFT
        ipa_pfn = self.remapped.get(vpfn, vpfn)
        if ipa_pfn is None:
            return None
        return (ipa_pfn << PAGE_SHIFT) | (va & (PAGE_SIZE - 1))


class Hyp:
    """The EL2 state of one machine: the host stage-2 and its pool, the hypervisor's own
    stage-1 and pool, ``hyp_vmemmap``, every CPU's TLB, the VMs, the host's stage-1 as AT
    sees it; built in the state __pkvm_init and fix_host_ownership leave.

    ``ctx`` is a ``Machine`` (in a schedule) or a ``Sequential`` (the direct API)."""

    def __init__(self, ctx: Any, memory_pages: int = 128, mmio_pages: int = 16,
                 nr_cpus: int = 2, nr_vms: int = 1, nr_vcpus: int | None = None,
                 arm64_workaround_834220: bool = True) -> None:
        if not 0 < mmio_pages <= MEM_BASE_PFN:
            raise ValueError(f"mmio_pages must be in 1..{MEM_BASE_PFN}")
        self.ctx = ctx
        self.behaviour: Behaviour = behaviour(ctx.release)
        self.quirk_abort_bug_on = ctx.quirk("abort-bug-on")
        self.quirk_check_apply_unlocked = ctx.quirk("check-apply-unlocked")
        self.quirk_unshare_ignores_pin = ctx.quirk("unshare-ignores-pin")
        self.boot_ctx = Sequential(ctx.quirks, ctx.release)
        """What the page tables run on while __pkvm_init builds them (nobody else runs)."""
        self.nr_cpus = nr_cpus
        self.mmio_pages = mmio_pages
        self.memory_pages = memory_pages
        self.mem_start = MEM_BASE_PFN << PAGE_SHIFT
        self.mem_end = (MEM_BASE_PFN + memory_pages) << PAGE_SHIFT
        self.arm64_workaround_834220 = arm64_workaround_834220
        """Erratum 834220: HPFAR_EL2 cannot be trusted on a translation fault, so every host
        abort resolves its IPA with AT (the path B12 races with)."""
        self.mem = TrackedTableMemory()
        self.tlbs = Arm64Tlbs(nr_cpus)
        self.hyp_vmemmap = TrackedVmemmap(MEM_BASE_PFN + memory_pages)
        self.hyp_vmemmap.fail = lambda kind, message: ctx.fail("bug-on", message)
        self.host_s2_pool = HypPool(self.hyp_vmemmap, self.mem)
        self.hpool = HypPool(self.hyp_vmemmap, self.mem)
        self.host_mmu = HostMmu(ctx.spinlock("host_mmu.lock"),
                                KvmPgtable(self.mem, self.tlbs, self.boot_ctx, vmid=0,
                                           annotation_layout=self.behaviour.annotation_layout))
        self.pkvm_pgd_lock = ctx.spinlock("pkvm_pgd_lock")
        self.pkvm_pgtable = KvmPgtable(self.mem, self.tlbs, self.boot_ctx)
        self.vm_table_lock = ctx.spinlock("vm_table_lock")
        self.host_s1 = HostStage1()
        self.loaded_hyp_vcpu: list[PkvmHypVcpu | None] = [None] * nr_cpus
        self.vms = [PkvmHypVm(self, i, nr_vcpus or nr_cpus) for i in range(nr_vms)]
        self.ffa_handles: dict[int, tuple[int, int]] = {}
        """The secure world's record of FF-A shares: handle -> (pfn, nr_pages)."""
        self.ffa_next_handle = 1
        self.hyp_start_pfn = 0
        """The first pfn of the hypervisor's boot pages (the top of memory)."""
        key = (memory_pages, nr_vms, len(self.vms[0].vcpus) if self.vms else 0,
               self.behaviour, ctx.quirk("pgd-refcount"))
        self.boot_image = _BOOT_IMAGES.get(key)
        """The state boot left, shared by every Hyp of this configuration (read only)."""
        if self.boot_image is None:
            self.boot_ctx.call(_pkvm_init(self))
            self.boot_image = _BOOT_IMAGES[key] = BootImage(self)
        else:
            self.boot_image.restore(self)
        for pgt in self.page_tables():
            pgt.ctx = ctx

    def page_tables(self) -> list[KvmPgtable]:
        """The host stage-2, the EL2 stage-1, then each guest's stage-2."""
        return [self.host_mmu.pgt, self.pkvm_pgtable] + [vm.pgt for vm in self.vms]

    def memory_pfns(self) -> range:
        return range(MEM_BASE_PFN, MEM_BASE_PFN + self.memory_pages)

    def host_pfns(self) -> range:
        """The memory pages the host owns at boot."""
        return range(MEM_BASE_PFN, self.hyp_start_pfn)

    def vm_by_handle(self, handle: int) -> PkvmHypVm | None:
        """get_vm_by_handle (the caller holds vm_table_lock)."""
        idx = handle - HANDLE_OFFSET
        return self.vms[idx] if 0 <= idx < len(self.vms) else None


class BootImage:
    """What boot leaves for one configuration. Boot is deterministic, so the first Hyp of a
    configuration runs it and every later one starts from a copy of its result (tables,
    vmemmap, pools, page-table roots, memcaches; the mm_ops are made anew for each Hyp).
    ``monitor`` is the invariants' view of that state, kept by the first monitor to see it."""

    __slots__ = (
        "hyp_start_pfn",
        "mem_pages",
        "mem_version",
        "memcaches",
        "monitor",
        "pgts",
        "pools",
        "vmemmap",
        "vmemmap_version",
    )

    _VMEMMAP = ("refcount", "order", "host_state", "hyp_state_comp", "host_share_guest_count")

    def __init__(self, hyp: Hyp) -> None:
        self.mem_pages = {pfn: list(t) for pfn, t in hyp.mem.pages.items()}
        self.mem_version = hyp.mem.version
        vmemmap = hyp.hyp_vmemmap
        self.vmemmap = [list(getattr(vmemmap, f)) for f in self._VMEMMAP]
        self.vmemmap_version = vmemmap.version
        self.pools = [([list(a) for a in p.free_area], p.max_order, p.range_start, p.range_end)
                      for p in _pools(hyp)]
        self.pgts = [(t.pgd, t.ia_bits, t.start_level, t.flags) for t in hyp.page_tables()]
        self.memcaches = [list(vcpu.memcache.pages) for vm in hyp.vms for vcpu in vm.vcpus]
        self.hyp_start_pfn = hyp.hyp_start_pfn
        self.monitor: Any = None

    def restore(self, hyp: Hyp) -> None:
        hyp.mem.pages = {pfn: list(t) for pfn, t in self.mem_pages.items()}
        hyp.mem.version = self.mem_version
        vmemmap = hyp.hyp_vmemmap
        for f, values in zip(self._VMEMMAP, self.vmemmap, strict=True):
            setattr(vmemmap, f, list(values))
        vmemmap.version = self.vmemmap_version
        for pool, (free, max_order, start, end) in zip(_pools(hyp), self.pools, strict=True):
            pool.free_area = [list(a) for a in free]
            pool.max_order, pool.range_start, pool.range_end = max_order, start, end
        for pgt, ops, (pgd, ia_bits, start_level, flags) in zip(
                hyp.page_tables(), _mm_ops(hyp), self.pgts, strict=True):
            pgt.pgd, pgt.ia_bits, pgt.start_level, pgt.flags = pgd, ia_bits, start_level, flags
            pgt.mm_ops = ops
        hyp.host_mmu.pgt.force_pte_cb = _host_force_pte_cb(hyp)
        vcpus = [vcpu for vm in hyp.vms for vcpu in vm.vcpus]
        for vcpu, pages in zip(vcpus, self.memcaches, strict=True):
            vcpu.memcache.pages = list(pages)
        hyp.hyp_start_pfn = self.hyp_start_pfn


_BOOT_IMAGES: dict[tuple[Any, ...], BootImage] = {}
"""Boot images by configuration (memory pages, VMs, vCPUs per VM, Behaviour, the
pgd-refcount quirk: all that boot depends on)."""


def _pools(hyp: Hyp) -> list[HypPool]:
    return [hyp.host_s2_pool, hyp.hpool] + [vm.pool for vm in hyp.vms]


def _mm_ops(hyp: Hyp) -> list[KvmPgtableMmOps]:
    """Each page table's mm_ops, in page_tables() order: the host stage-2's
    (prepare_s2_pool), the hyp's own, each guest's (kvm_guest_prepare_stage2)."""
    return [host_s2_mm_ops(hyp.host_s2_pool, hyp.ctx), KvmPgtableMmOps(hyp.hpool)] + \
        [GuestS2MmOps(vm.pool) for vm in hyp.vms]


def _host_force_pte_cb(hyp: Hyp) -> Callable[[int, int, int], bool]:
    def force_pte_cb(addr: int, end: int, prot: int) -> bool:
        return host_stage2_force_pte_cb(hyp, addr, end, prot)

    return force_pte_cb


def _guest_levels() -> int:
    return KVM_PGTABLE_LAST_LEVEL + 1 - start_level_for(GUEST_IA_BITS)


def _boot_layout(hyp: Hyp) -> tuple[int, int, int, int]:
    """(host stage-2 pool pages, hyp pool pages, pages per VM PGD, memcache pages a vCPU
    starts with), sized as host_s2_pgtable_pages() / hyp_s1_pgtable_pages() would: the
    host stage-2 at page granularity over memory and MMIO, plus room for MMIO blocks."""
    blocks = (hyp.mem_end >> (PAGE_SHIFT + 9)) + 1
    host_pool = kvm_pgd_pages(HOST_IA_BITS, start_level_for(HOST_IA_BITS)) + 2 * blocks + 8
    hyp_pool = 1 + 2 * blocks + 4
    vm_pgd = kvm_pgd_pages(GUEST_IA_BITS, start_level_for(GUEST_IA_BITS))
    return host_pool, hyp_pool, vm_pgd, 2 * (_guest_levels() - 1)


async def _pkvm_init(hyp: Hyp) -> None:
    """__pkvm_init and fix_host_ownership, then __pkvm_init_vm / __pkvm_init_vcpu for each
    VM: the hypervisor's pages at the top of memory, hyp OWNED and mapped at EL2, host NOPAGE
    behind an owner annotation."""
    host_pool, hyp_pool, vm_pgd, vcpu_mc = _boot_layout(hyp)
    nr_vcpus = sum(len(vm.vcpus) for vm in hyp.vms)
    total = host_pool + hyp_pool + len(hyp.vms) * vm_pgd + nr_vcpus * vcpu_mc
    # the pools' PGDs need aligned blocks: start the region on a 16-page boundary
    start = (MEM_BASE_PFN + hyp.memory_pages - total) & ~15
    if start <= MEM_BASE_PFN:
        raise ValueError(f"{hyp.memory_pages} pages of memory cannot hold the "
                         f"hypervisor's {total} boot pages and leave the host any")
    hyp.hyp_start_pfn = start
    end = MEM_BASE_PFN + hyp.memory_pages
    if hyp.behaviour.hyp_state_in_vmemmap:
        __hyp_set_page_state_range(hyp, start << PAGE_SHIFT, (end - start) << PAGE_SHIFT,
                                   PKVM_PAGE_OWNED)
    host_ops, hyp_ops, *guest_ops = _mm_ops(hyp)
    hyp_pool_init(hyp.hpool, start + host_pool, hyp_pool, 0)
    if kvm_pgtable_hyp_init(hyp.pkvm_pgtable, HYP_VA_BITS, hyp_ops):
        raise ValueError("the hyp pool cannot hold the EL2 stage-1 PGD")
    # page by page, as pkvm_create_mappings maps the hypervisor's sections (OWNED: no SW bits)
    if await pkvm_create_mappings_locked(hyp, start << PAGE_SHIFT, (end - start) << PAGE_SHIFT,
                                         PAGE_HYP):
        raise ValueError("the hyp pool cannot map the hypervisor's pages")
    # kvm_host_prepare_stage2
    hyp_pool_init(hyp.host_s2_pool, start, host_pool, 0)
    if __kvm_pgtable_stage2_init(hyp.host_mmu.pgt, host_ops, HOST_IA_BITS,
                                 flags=KVM_PGTABLE_S2_NOFWB | KVM_PGTABLE_S2_IDMAP,
                                 force_pte_cb=_host_force_pte_cb(hyp)):
        raise ValueError("the host stage-2 pool cannot hold its PGD")
    # fix_host_ownership: everything the hypervisor owns is annotated away from the host
    if await host_stage2_set_owner_locked(hyp, start << PAGE_SHIFT, (end - start) << PAGE_SHIFT,
                                          PKVM_ID_HYP):
        raise ValueError("the host stage-2 pool cannot annotate the hypervisor's pages")
    pfn = start + host_pool + hyp_pool
    for vm, ops in zip(hyp.vms, guest_ops, strict=True):
        # kvm_guest_prepare_stage2 over the PGD pages the host donated with __pkvm_init_vm
        hyp_pool_init(vm.pool, pfn, vm_pgd, 0)
        __kvm_pgtable_stage2_init(vm.pgt, ops, GUEST_IA_BITS)
        pfn += vm_pgd
    for vm in hyp.vms:
        for vcpu in vm.vcpus:
            vcpu.memcache.pages.extend(range(pfn, pfn + vcpu_mc))
            pfn += vcpu_mc


# --- memory ranges ---------------------------------------------------------------------------

def find_mem_range(hyp: Hyp, addr: int) -> tuple[bool, int, int]:
    """(is memory, range start, range end): the memblock holding ``addr``, or the gap
    around it (one memblock here)."""
    if addr < hyp.mem_start:
        return False, 0, hyp.mem_start
    if addr >= hyp.mem_end:
        return False, hyp.mem_end, ULONG_MAX
    return True, hyp.mem_start, hyp.mem_end


def addr_is_memory(hyp: Hyp, phys: int) -> bool:
    return find_mem_range(hyp, phys)[0]


def check_range_allowed_memory(hyp: Hyp, start: int, end: int) -> int:
    """-EINVAL if [start, end) crosses a range boundary, -EPERM if it is not memory (no
    region is MEMBLOCK_NOMAP here), else 0."""
    reg, rstart, rend = find_mem_range(hyp, start)
    if not rstart <= end - 1 < rend:
        return -EINVAL
    if not reg:
        return -EPERM
    return 0


def range_is_memory(hyp: Hyp, start: int, end: int) -> bool:
    reg, rstart, rend = find_mem_range(hyp, start)
    return reg and rstart <= end - 1 < rend


# --- locks --------------------------------------------------------------------------------------

async def host_lock_component(hyp: Hyp) -> None:
    await hyp.host_mmu.lock.lock()


def host_unlock_component(hyp: Hyp) -> None:
    hyp.host_mmu.lock.unlock()


async def hyp_lock_component(hyp: Hyp) -> None:
    await hyp.pkvm_pgd_lock.lock()


def hyp_unlock_component(hyp: Hyp) -> None:
    hyp.pkvm_pgd_lock.unlock()


async def guest_lock_component(vm: PkvmHypVm) -> None:
    await vm.lock.lock()


def guest_unlock_component(vm: PkvmHypVm) -> None:
    vm.lock.unlock()


async def _check_apply_window(hyp: Hyp, *locks: Any) -> None:
    """Quirk ``check-apply-unlocked``: the locks are dropped and retaken between a
    transition's checks and its apply step, so another CPU's transition can run in between."""
    if not hyp.quirk_check_apply_unlocked:
        return
    for lock in reversed(locks):
        lock.unlock()
    for lock in locks:
        await lock.lock()


def _require(hyp: Hyp, feature: str, fn: str) -> None:
    """A transition the modelled release does not have (a Behaviour field says which)."""
    if not getattr(hyp.behaviour, feature):
        raise EmuError(f"{fn} is not in release {hyp.ctx.release} ({feature} is False)")


def _apply(hyp: Hyp, failed: bool | int, what: str) -> None:
    """WARN_ON(apply step): the checks passed, so it must not fail."""
    if failed:
        hyp.ctx.fail("apply-failed", f"WARN_ON({what}): the apply step failed after its "
                     f"checks passed (returned {failed})")


# --- page states ----------------------------------------------------------------------------

def host_get_page_state(hyp: Hyp, pte: int) -> int:
    """The host's state read off its stage-2 entry (before v6.14): an annotation is NOPAGE,
    otherwise the software bits (an empty entry reads OWNED)."""
    if not kvm_pte_valid(pte) and pte:
        return PKVM_NOPAGE
    return pkvm_getstate(kvm_pgtable_stage2_pte_prot(pte))


def get_host_state(hyp: Hyp, phys: int) -> int:
    if hyp.behaviour.host_state_in_vmemmap:
        return hyp.hyp_vmemmap.get_host_state(phys)
    return host_get_page_state(hyp, kvm_pgtable_get_leaf(hyp.host_mmu.pgt, phys)[1])


def hyp_get_page_state(pte: int) -> int:
    """The hyp's state read off its EL2 stage-1 entry (before v6.16)."""
    if not kvm_pte_valid(pte):
        return PKVM_NOPAGE
    return pkvm_getstate(kvm_pgtable_hyp_pte_prot(pte))


def get_hyp_state(hyp: Hyp, phys: int) -> int:
    if hyp.behaviour.hyp_state_in_vmemmap:
        return hyp.hyp_vmemmap.get_hyp_state(phys)
    return hyp_get_page_state(kvm_pgtable_get_leaf(hyp.pkvm_pgtable, phys)[1])


def guest_get_page_state(pte: int) -> int:
    if not kvm_pte_valid(pte):
        return PKVM_NOPAGE
    return pkvm_getstate(kvm_pgtable_stage2_pte_prot(pte))


def __host_check_page_state_range(hyp: Hyp, addr: int, size: int, state: int) -> int:
    ret = check_range_allowed_memory(hyp, addr, addr + size)
    if ret:
        return ret
    for phys in range(addr, addr + size, PAGE_SIZE):
        if get_host_state(hyp, phys) != state:
            return -EPERM
    return 0


def __host_update_page_state(hyp: Hyp, addr: int, size: int, state: int) -> None:
    for phys in range(addr, addr + size, PAGE_SIZE):
        hyp.hyp_vmemmap.set_host_state(phys, state)


async def __host_set_page_state_range(hyp: Hyp, addr: int, size: int, state: int) -> int:
    if not hyp.behaviour.host_state_in_vmemmap:
        # before v6.14 the state is the software bits of the host's own mapping
        return await host_stage2_idmap_locked(hyp, addr, size,
                                              pkvm_mkstate(PKVM_HOST_MEM_PROT, state))
    if hyp.hyp_vmemmap.get_host_state(addr) == PKVM_NOPAGE:
        ret = await host_stage2_idmap_locked(hyp, addr, size, PKVM_HOST_MEM_PROT)
        if ret:
            return ret
    __host_update_page_state(hyp, addr, size, state)
    return 0


def __hyp_check_page_state_range(hyp: Hyp, phys: int, size: int, state: int) -> int:
    for addr in range(phys, phys + size, PAGE_SIZE):
        if get_hyp_state(hyp, addr) != state:
            return -EPERM
    return 0


def __hyp_set_page_state_range(hyp: Hyp, phys: int, size: int, state: int) -> None:
    for addr in range(phys, phys + size, PAGE_SIZE):
        hyp.hyp_vmemmap.set_hyp_state(addr, state)


async def __check_page_state_visitor(ctx: KvmPgtableVisitCtx, visit: int) -> int:
    return 0 if guest_get_page_state(ctx.old) == ctx.arg else -EPERM


async def __guest_check_page_state_range(vm: PkvmHypVm, addr: int, size: int,
                                         state: int) -> int:
    return await kvm_pgtable_walk(vm.pgt, addr, size, KvmPgtableWalker(
        __check_page_state_visitor, state, KVM_PGTABLE_WALK_LEAF))


async def pkvm_create_mappings_locked(hyp: Hyp, phys: int, size: int, prot: int) -> int:
    """Map [phys, phys + size) at its hyp VA, page by page (mm.c)."""
    for addr in range(phys, phys + size, PAGE_SIZE):
        err = await kvm_pgtable_hyp_map(hyp.pkvm_pgtable, addr, PAGE_SIZE, addr, prot)
        if err:
            return err
    return 0


# --- the host stage-2 ---------------------------------------------------------------------

async def host_stage2_unmap_dev_all(hyp: Hyp) -> int:
    """Unmap every non-memory range, to recycle the pool's pages."""
    pgt = hyp.host_mmu.pgt
    ret = await kvm_pgtable_stage2_unmap(pgt, 0, hyp.mem_start)
    if ret:
        return ret
    return await kvm_pgtable_stage2_unmap(pgt, hyp.mem_end, (1 << pgt.ia_bits) - hyp.mem_end)


async def host_stage2_try(hyp: Hyp, fn: Callable[..., Awaitable[int]], *args: Any) -> int:
    """Run ``fn``; on -ENOMEM recycle the MMIO mappings' pages and try once more. (Its
    hyp_assert_lock_held is compiled out without CONFIG_NVHE_EL2_DEBUG.)"""
    ret = await fn(*args)
    if ret == -ENOMEM:
        ret = await host_stage2_unmap_dev_all(hyp)
        if not ret:
            ret = await fn(*args)
    return ret


def host_stage2_force_pte_cb(hyp: Hyp, addr: int, end: int, prot: int) -> bool:
    """Blocks only for the default protections: any other mapping is the only record of
    its state, which a block split would lose."""
    if range_is_memory(hyp, addr, end):
        return prot != PKVM_HOST_MEM_PROT
    return prot != PKVM_HOST_MMIO_PROT


async def host_stage2_idmap_locked(hyp: Hyp, addr: int, size: int, prot: int) -> int:
    return await host_stage2_try(hyp, kvm_pgtable_stage2_map, hyp.host_mmu.pgt, addr, size,
                                 addr, prot, hyp.host_s2_pool)


async def host_stage2_set_owner_locked(hyp: Hyp, addr: int, size: int, owner_id: int) -> int:
    vmemmap = hyp.behaviour.host_state_in_vmemmap
    if vmemmap and not range_is_memory(hyp, addr, addr + size):
        return -EPERM
    ret = await host_stage2_try(hyp, kvm_pgtable_stage2_set_owner, hyp.host_mmu.pgt, addr,
                                size, hyp.host_s2_pool, owner_id)
    if ret:
        return ret
    if vmemmap:
        __host_update_page_state(hyp, addr, size,
                                 PKVM_PAGE_OWNED if owner_id == PKVM_ID_HOST else PKVM_NOPAGE)
    return 0


def host_stage2_adjust_range(hyp: Hyp, addr: int, start: int, end: int,
                             ) -> tuple[int, int, int]:
    """(ret, start, end): the largest block-mappable granule around ``addr`` inside
    [start, end) whose entry is empty; -EAGAIN if another CPU mapped it, -EPERM if it is
    annotated (someone else's page)."""
    ret, pte, level = kvm_pgtable_get_leaf(hyp.host_mmu.pgt, addr)
    if ret:
        return ret, start, end
    if kvm_pte_valid(pte):
        return -EAGAIN, start, end
    if pte:
        if hyp.behaviour.host_state_in_vmemmap and addr_is_memory(hyp, addr) and \
                hyp.hyp_vmemmap.get_host_state(addr) != PKVM_NOPAGE:
            hyp.ctx.fail("warn-on", f"WARN_ON: host stage-2 annotation at {addr:#x} but host state "
                         "is not NOPAGE")
        return -EPERM, start, end
    while level <= KVM_PGTABLE_LAST_LEVEL:
        if kvm_level_supports_block_mapping(level):
            granule = kvm_granule_size(level)
            cur = addr & ~(granule - 1)
            if start <= cur and cur + granule <= end:
                return 0, cur, cur + granule
        level += 1
    hyp.ctx.fail("warn-on", f"WARN_ON: host_stage2_adjust_range: no granule for {addr:#x}")
    return -EINVAL, start, end


async def host_stage2_idmap(hyp: Hyp, addr: int) -> int:
    is_memory, start, end = find_mem_range(hyp, addr)
    prot = PKVM_HOST_MEM_PROT if is_memory else PKVM_HOST_MMIO_PROT
    await host_lock_component(hyp)
    ret, start, end = host_stage2_adjust_range(hyp, addr, start, end)
    if not ret:
        ret = await host_stage2_idmap_locked(hyp, start, end - start, prot)
    host_unlock_component(hyp)
    return ret


async def __get_fault_info(hyp: Hyp, far: int, ipa: int) -> int | None:
    """The faulting IPA, or None when AT S1E1R of ``far`` through the host's stage-1 fails.
    HPFAR_EL2 is trusted unless erratum 834220 applies (the host's faults here are
    translation faults: its stage-2 is RWX/RW)."""
    if not hyp.arm64_workaround_834220:
        return ipa
    await hyp.ctx.point(_OP_AT)
    return hyp.host_s1.translate(far)


async def handle_host_mem_abort(hyp: Hyp, cpu: int, far: int, ipa: int) -> int:
    """The host's stage-2 fault on ``cpu`` at VA ``far`` (IPA ``ipa`` as HPFAR_EL2 says).
    The kernel returns nothing; the model returns host_stage2_idmap's code, or -EAGAIN when
    __get_fault_info failed and EL2 returned for the host to retry."""
    addr = await __get_fault_info(hyp, far, ipa)
    if addr is None:
        if hyp.quirk_abort_bug_on:
            hyp.ctx.fail("bug-on", f"BUG_ON(!__get_fault_info()): AT of {far:#x} failed on "
                         f"cpu{cpu}: the host's stage-1 changed under the abort")
        return -EAGAIN
    ret = await host_stage2_idmap(hyp, addr & ~(PAGE_SIZE - 1))
    if ret and ret != -EAGAIN:
        hyp.ctx.fail("bug-on", f"BUG_ON(ret && ret != -EAGAIN): host_stage2_idmap({addr:#x}) "
                     f"returned {ret} on cpu{cpu}: the host touched a page it does not own")
    return ret


async def host_mem_access(hyp: Hyp, cpu: int, va: int, write: bool) -> int:
    """A host load or store on ``cpu``: its stage-1 (``HostStage1``), then the stage-2
    through the TLB or a hardware walk, the abort to EL2 on a fault, and the retry. Returns
    the pfn the access reached, or -EFAULT when the host's own stage-1 does not map ``va``
    (the host kernel's fault, not EL2's)."""
    pgt = hyp.host_mmu.pgt
    while True:
        ipa = hyp.host_s1.translate(va)
        if ipa is None:
            hyp.ctx.cold(HOST_ABORT, cpu)  # the host kernel's own fault ends it
            return -EFAULT
        desc, level, _ = await translate_stepwise(
            hyp.tlbs, hyp.mem, cpu, 0, pgt.pgd, pgt.start_level, pgt.ia_bits, ipa,
            hyp.ctx.point, _OP_HOST_WALK)
        if level == ADDRESS_SIZE_FAULT:
            hyp.ctx.cold(HOST_ABORT, cpu)
            return -EFAULT
        if kvm_pte_valid(desc):
            hyp.ctx.cold(HOST_ABORT, cpu)  # the abort is resolved: the access reaches memory
            return output_address(desc, level, ipa) >> PAGE_SHIFT
        hyp.ctx.hot(HOST_ABORT, cpu, "the host's stage-2 fault must be resolved")
        await handle_host_mem_abort(hyp, cpu, va, ipa)
        await hyp.ctx.yield_point("host retries the access")


async def host_stage1_update(hyp: Hyp, va: int, ipa: int | None) -> None:
    """The host kernel changes its own stage-1: ``va``'s page now maps ``ipa``'s (None:
    unmapped). A store other CPUs' AT walks observe."""
    await hyp.ctx.point(_OP_HOST_S1)
    if accesses.current.on:
        accesses.current.touch(f"host_s1:{va & ~(PAGE_SIZE - 1):#x}", True)
    vpfn = va >> PAGE_SHIFT
    hyp.host_s1.remapped[vpfn] = None if ipa is None else ipa >> PAGE_SHIFT
    hyp.host_s1.version += 1


async def guest_mem_access(hyp: Hyp, cpu: int, vm: PkvmHypVm, gfn: int, write: bool) -> int:
    """A guest access to ``gfn`` on ``cpu``: the TLB (VMID of ``vm``) or a walk of its
    stage-2. Returns the pfn reached, or -EFAULT on a stage-2 fault (an exit the host
    handles, e.g. with __pkvm_host_share_guest), or -EPERM on a write to a read-only leaf."""
    pgt = vm.pgt
    ipa = gfn << PAGE_SHIFT
    desc, level, _ = await translate_stepwise(
        hyp.tlbs, hyp.mem, cpu, vm.vmid, pgt.pgd, pgt.start_level, pgt.ia_bits, ipa,
        hyp.ctx.point, _OP_GUEST_WALK)
    if not kvm_pte_valid(desc):
        return -EFAULT
    if write and not kvm_pgtable_stage2_pte_prot(desc) & KVM_PGTABLE_PROT_W:
        return -EPERM
    return output_address(desc, level, ipa) >> PAGE_SHIFT


# --- host <-> hyp ---------------------------------------------------------------------------

async def __pkvm_host_share_hyp(hyp: Hyp, pfn: int) -> int:
    _require(hyp, "has_hyp_share", "__pkvm_host_share_hyp")
    beh = hyp.behaviour
    phys = pfn << PAGE_SHIFT
    size = PAGE_SIZE
    await host_lock_component(hyp)
    await hyp_lock_component(hyp)
    ret = __host_check_page_state_range(hyp, phys, size, PKVM_PAGE_OWNED)
    if not ret and beh.hyp_checks_always:
        ret = __hyp_check_page_state_range(hyp, phys, size, PKVM_NOPAGE)
    if not ret:
        await _check_apply_window(hyp, hyp.host_mmu.lock, hyp.pkvm_pgd_lock)
        if beh.share_hyp_maps_el2:
            prot = pkvm_mkstate(PAGE_HYP, PKVM_PAGE_SHARED_BORROWED)
            _apply(hyp, await pkvm_create_mappings_locked(hyp, phys, size, prot),
                   "pkvm_create_mappings_locked")
        if beh.hyp_state_in_vmemmap:
            __hyp_set_page_state_range(hyp, phys, size, PKVM_PAGE_SHARED_BORROWED)
        _apply(hyp, await __host_set_page_state_range(hyp, phys, size, PKVM_PAGE_SHARED_OWNED),
               "__host_set_page_state_range(SHARED_OWNED)")
    hyp_unlock_component(hyp)
    host_unlock_component(hyp)
    return ret


async def __pkvm_host_unshare_hyp(hyp: Hyp, pfn: int) -> int:
    _require(hyp, "has_hyp_unshare", "__pkvm_host_unshare_hyp")
    beh = hyp.behaviour
    phys = pfn << PAGE_SHIFT
    size = PAGE_SIZE
    await host_lock_component(hyp)
    await hyp_lock_component(hyp)
    ret = __host_check_page_state_range(hyp, phys, size, PKVM_PAGE_SHARED_OWNED)
    pinned = bool(hyp.hyp_vmemmap.hyp_page_count(pfn)) and not hyp.quirk_unshare_ignores_pin
    if ret:
        pass
    elif beh.host_state_in_vmemmap:
        # v6.14 on: both states, then the pin
        ret = __hyp_check_page_state_range(hyp, phys, size, PKVM_PAGE_SHARED_BORROWED)
        if not ret and pinned:
            ret = -EBUSY
    else:
        # do_unshare: hyp_ack_unshare refuses a pinned page before its debug-only check
        if beh.has_pins and pinned:
            ret = -EBUSY
        elif beh.hyp_checks_always:
            ret = __hyp_check_page_state_range(hyp, phys, size, PKVM_PAGE_SHARED_BORROWED)
    if not ret:
        await _check_apply_window(hyp, hyp.host_mmu.lock, hyp.pkvm_pgd_lock)
        if beh.hyp_state_in_vmemmap:
            __hyp_set_page_state_range(hyp, phys, size, PKVM_NOPAGE)
        if beh.share_hyp_maps_el2:
            _apply(hyp, await kvm_pgtable_hyp_unmap(hyp.pkvm_pgtable, phys, size) != size,
                   "kvm_pgtable_hyp_unmap() != size")
        _apply(hyp, await __host_set_page_state_range(hyp, phys, size, PKVM_PAGE_OWNED),
               "__host_set_page_state_range(OWNED)")
    hyp_unlock_component(hyp)
    host_unlock_component(hyp)
    return ret


async def __pkvm_host_donate_hyp(hyp: Hyp, pfn: int, nr_pages: int) -> int:
    _require(hyp, "has_host_donation", "__pkvm_host_donate_hyp")
    beh = hyp.behaviour
    phys = pfn << PAGE_SHIFT
    size = PAGE_SIZE * nr_pages
    await host_lock_component(hyp)
    await hyp_lock_component(hyp)
    ret = __host_check_page_state_range(hyp, phys, size, PKVM_PAGE_OWNED)
    if not ret and beh.hyp_checks_always:
        ret = __hyp_check_page_state_range(hyp, phys, size, PKVM_NOPAGE)
    if not ret:
        await _check_apply_window(hyp, hyp.host_mmu.lock, hyp.pkvm_pgd_lock)
        if beh.hyp_state_in_vmemmap:
            __hyp_set_page_state_range(hyp, phys, size, PKVM_PAGE_OWNED)
        _apply(hyp, await pkvm_create_mappings_locked(hyp, phys, size, PAGE_HYP),
               "pkvm_create_mappings_locked")
        _apply(hyp, await host_stage2_set_owner_locked(hyp, phys, size, PKVM_ID_HYP),
               "host_stage2_set_owner_locked(PKVM_ID_HYP)")
    hyp_unlock_component(hyp)
    host_unlock_component(hyp)
    return ret


async def __pkvm_hyp_donate_host(hyp: Hyp, pfn: int, nr_pages: int) -> int:
    _require(hyp, "has_host_donation", "__pkvm_hyp_donate_host")
    beh = hyp.behaviour
    phys = pfn << PAGE_SHIFT
    size = PAGE_SIZE * nr_pages
    await host_lock_component(hyp)
    await hyp_lock_component(hyp)
    ret = __hyp_check_page_state_range(hyp, phys, size, PKVM_PAGE_OWNED)
    if not ret and beh.hyp_checks_always:
        ret = __host_check_page_state_range(hyp, phys, size, PKVM_NOPAGE)
    if not ret:
        await _check_apply_window(hyp, hyp.host_mmu.lock, hyp.pkvm_pgd_lock)
        if beh.hyp_state_in_vmemmap:
            __hyp_set_page_state_range(hyp, phys, size, PKVM_NOPAGE)
        _apply(hyp, await kvm_pgtable_hyp_unmap(hyp.pkvm_pgtable, phys, size) != size,
               "kvm_pgtable_hyp_unmap() != size")
        _apply(hyp, await host_stage2_set_owner_locked(hyp, phys, size, PKVM_ID_HOST),
               "host_stage2_set_owner_locked(PKVM_ID_HOST)")
    hyp_unlock_component(hyp)
    host_unlock_component(hyp)
    return ret


def _page_range(start: int, end: int) -> range:
    """The page-aligned hyp VAs covering [start, end)."""
    return range(start & ~(PAGE_SIZE - 1), (end + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1), PAGE_SIZE)


async def hyp_pin_shared_mem(hyp: Hyp, start: int, end: int) -> int:
    """Pin the pages of hyp VAs [start, end) the host shares with EL2 (a vCPU struct,
    say), so they cannot be unshared while EL2 uses them; v6.16 maps a page at EL2 on its
    first pin."""
    _require(hyp, "has_pins", "hyp_pin_shared_mem")
    pages = _page_range(start, end)
    phys = pages.start
    size = len(pages) * PAGE_SIZE
    await host_lock_component(hyp)
    await hyp_lock_component(hyp)
    ret = __host_check_page_state_range(hyp, phys, size, PKVM_PAGE_SHARED_OWNED)
    if not ret:
        ret = __hyp_check_page_state_range(hyp, phys, size, PKVM_PAGE_SHARED_BORROWED)
    if not ret:
        await _check_apply_window(hyp, hyp.host_mmu.lock, hyp.pkvm_pgd_lock)
        vmemmap = hyp.hyp_vmemmap
        for cur in pages:
            vmemmap.hyp_page_ref_inc(cur >> PAGE_SHIFT)
            if vmemmap.hyp_page_count(cur >> PAGE_SHIFT) == 1 and \
                    not hyp.behaviour.share_hyp_maps_el2:
                _apply(hyp, await pkvm_create_mappings_locked(hyp, cur, PAGE_SIZE, PAGE_HYP),
                       "pkvm_create_mappings_locked")
    hyp_unlock_component(hyp)
    host_unlock_component(hyp)
    return ret


async def hyp_unpin_shared_mem(hyp: Hyp, start: int, end: int) -> None:
    """Drop the pins; v6.16 unmaps a page from EL2 with its last pin."""
    _require(hyp, "has_pins", "hyp_unpin_shared_mem")
    await host_lock_component(hyp)
    await hyp_lock_component(hyp)
    vmemmap = hyp.hyp_vmemmap
    for cur in _page_range(start, end):
        if vmemmap.hyp_page_count(cur >> PAGE_SHIFT) == 1 and \
                not hyp.behaviour.share_hyp_maps_el2:
            _apply(hyp, await kvm_pgtable_hyp_unmap(hyp.pkvm_pgtable, cur, PAGE_SIZE)
                   != PAGE_SIZE, "kvm_pgtable_hyp_unmap() != PAGE_SIZE")
        vmemmap.hyp_page_ref_dec(cur >> PAGE_SHIFT)
    hyp_unlock_component(hyp)
    host_unlock_component(hyp)


# --- host <-> FF-A (the secure world) ---------------------------------------------------------

async def _host_only_transition(hyp: Hyp, pfn: int, nr_pages: int, want: int, new: int) -> int:
    _require(hyp, "has_ffa", "__pkvm_host_share_ffa/__pkvm_host_unshare_ffa")
    phys = pfn << PAGE_SHIFT
    size = PAGE_SIZE * nr_pages
    await host_lock_component(hyp)
    ret = __host_check_page_state_range(hyp, phys, size, want)
    if not ret:
        await _check_apply_window(hyp, hyp.host_mmu.lock)
        ret = await __host_set_page_state_range(hyp, phys, size, new)
    host_unlock_component(hyp)
    return ret


async def __pkvm_host_share_ffa(hyp: Hyp, pfn: int, nr_pages: int) -> int:
    return await _host_only_transition(hyp, pfn, nr_pages, PKVM_PAGE_OWNED,
                                       PKVM_PAGE_SHARED_OWNED)


async def __pkvm_host_unshare_ffa(hyp: Hyp, pfn: int, nr_pages: int) -> int:
    """Does not check that the share was FF-A's: ffa.c only reclaims recorded shares."""
    return await _host_only_transition(hyp, pfn, nr_pages, PKVM_PAGE_SHARED_OWNED,
                                       PKVM_PAGE_OWNED)


async def ffa_mem_share(hyp: Hyp, pfn: int, nr_pages: int) -> int:
    """FFA_MEM_SHARE as the proxy handles it, reduced to one range: share with the secure
    world; returns the handle the SPMC assigns (> 0), or the share's error."""
    ret = await __pkvm_host_share_ffa(hyp, pfn, nr_pages)
    if ret:
        return ret
    handle = hyp.ffa_next_handle
    hyp.ffa_next_handle += 1
    hyp.ffa_handles[handle] = (pfn, nr_pages)
    return handle


async def ffa_mem_reclaim(hyp: Hyp, handle: int) -> int:
    """FFA_MEM_RECLAIM: unshare the range the SPMC recorded under ``handle`` (-ENOENT for a
    handle it does not know; FFA_RET_INVALID_PARAMETERS in the real ABI)."""
    rng = hyp.ffa_handles.pop(handle, None)
    if rng is None:
        return -ENOENT
    ret = await __pkvm_host_unshare_ffa(hyp, *rng)
    if ret:
        hyp.ffa_handles[handle] = rng
    return ret


# --- host <-> non-protected guests ----------------------------------------------------------

def __guest_check_transition_size(phys: int, ipa: int, nr_pages: int) -> tuple[int, int]:
    """(ret, size): one page, or exactly one second-to-last-level block, aligned."""
    if nr_pages == 1:
        return 0, PAGE_SIZE
    block_size = kvm_granule_size(KVM_PGTABLE_LAST_LEVEL - 1)
    if nr_pages != block_size >> PAGE_SHIFT:
        return -EINVAL, 0
    if (phys | ipa) & (block_size - 1):
        return -EINVAL, 0
    return 0, block_size


async def __pkvm_host_share_guest(hyp: Hyp, pfn: int, gfn: int, nr_pages: int,
                                  vcpu: PkvmHypVcpu, prot: int) -> int:
    _require(hyp, "has_guest_share", "__pkvm_host_share_guest")
    vm = vcpu.vm
    phys = pfn << PAGE_SHIFT
    ipa = gfn << PAGE_SHIFT
    if prot & ~KVM_PGTABLE_PROT_RWX:
        return -EINVAL
    ret, size = __guest_check_transition_size(phys, ipa, nr_pages)
    if ret:
        return ret
    ret = check_range_allowed_memory(hyp, phys, phys + size)
    if ret:
        return ret
    await host_lock_component(hyp)
    await guest_lock_component(vm)
    ret = await __guest_check_page_state_range(vm, ipa, size, PKVM_NOPAGE)
    vmemmap = hyp.hyp_vmemmap
    if not ret:
        for p in range(phys, phys + size, PAGE_SIZE):
            state = get_host_state(hyp, p)
            count = vmemmap.host_share_guest_count[p >> PAGE_SHIFT]
            if state == PKVM_PAGE_OWNED:
                continue
            if state == PKVM_PAGE_SHARED_OWNED and count == U32_MAX:
                ret = -EBUSY
                break
            # only host to np-guest multi-sharing is tolerated
            if state == PKVM_PAGE_SHARED_OWNED and count:
                continue
            ret = -EPERM
            break
    if not ret:
        await _check_apply_window(hyp, hyp.host_mmu.lock, vm.lock)
        for p in range(phys, phys + size, PAGE_SIZE):
            vmemmap.set_host_state(p, PKVM_PAGE_SHARED_OWNED)
            vmemmap.set_host_share_guest_count(
                p, vmemmap.host_share_guest_count[p >> PAGE_SHIFT] + 1)
        _apply(hyp, await kvm_pgtable_stage2_map(
            vm.pgt, ipa, size, phys, pkvm_mkstate(prot, PKVM_PAGE_SHARED_BORROWED),
            vcpu.memcache), "kvm_pgtable_stage2_map(guest)")
    guest_unlock_component(vm)
    host_unlock_component(hyp)
    return ret


def __check_host_shared_guest(hyp: Hyp, vm: PkvmHypVm, ipa: int, size: int,
                              ) -> tuple[int, int]:
    """(ret, phys): the guest leaf at ``ipa`` is a page the host shares with it."""
    ret, pte, level = kvm_pgtable_get_leaf(vm.pgt, ipa)
    if ret:
        return ret, 0
    if not kvm_pte_valid(pte):
        return -ENOENT, 0
    if size and kvm_granule_size(level) != size:
        return -E2BIG, 0
    if not size:
        size = kvm_granule_size(level)
    if guest_get_page_state(pte) != PKVM_PAGE_SHARED_BORROWED:
        return -EPERM, 0
    phys = kvm_pte_to_phys(pte)
    ret = check_range_allowed_memory(hyp, phys, phys + size)
    if ret:
        hyp.ctx.fail("warn-on", f"WARN_ON: guest leaf at {ipa:#x} maps {phys:#x}, not memory")
        return ret, 0
    for p in range(phys, phys + size, PAGE_SIZE):
        if get_host_state(hyp, p) != PKVM_PAGE_SHARED_OWNED:
            return -EPERM, 0
        if not hyp.hyp_vmemmap.host_share_guest_count[p >> PAGE_SHIFT]:
            hyp.ctx.fail("warn-on", f"WARN_ON: page {p:#x} shared with a guest has no share count")
            return -EINVAL, 0
    return 0, phys


async def __pkvm_host_unshare_guest(hyp: Hyp, gfn: int, nr_pages: int, vm: PkvmHypVm) -> int:
    _require(hyp, "has_guest_share", "__pkvm_host_unshare_guest")
    ipa = gfn << PAGE_SHIFT
    ret, size = __guest_check_transition_size(0, ipa, nr_pages)
    if ret:
        return ret
    await host_lock_component(hyp)
    await guest_lock_component(vm)
    ret, phys = __check_host_shared_guest(hyp, vm, ipa, size)
    if not ret:
        await _check_apply_window(hyp, hyp.host_mmu.lock, vm.lock)
        ret = await kvm_pgtable_stage2_unmap(vm.pgt, ipa, size)
    if not ret:
        vmemmap = hyp.hyp_vmemmap
        for p in range(phys, phys + size, PAGE_SIZE):
            count = vmemmap.host_share_guest_count[p >> PAGE_SHIFT] - 1
            vmemmap.set_host_share_guest_count(p, count)
            if not count:
                vmemmap.set_host_state(p, PKVM_PAGE_OWNED)
    guest_unlock_component(vm)
    host_unlock_component(hyp)
    return ret


async def __pkvm_host_relax_perms_guest(hyp: Hyp, gfn: int, vcpu: PkvmHypVcpu,
                                        prot: int) -> int:
    _require(hyp, "has_guest_share", "__pkvm_host_relax_perms_guest")
    vm = vcpu.vm
    if vm.is_protected:
        return -EPERM
    if prot & ~KVM_PGTABLE_PROT_RWX:
        return -EINVAL
    await guest_lock_component(vm)
    ret = await kvm_pgtable_stage2_relax_perms(vm.pgt, gfn << PAGE_SHIFT, prot, 0)
    guest_unlock_component(vm)
    return ret


async def __pkvm_host_wrprotect_guest(hyp: Hyp, gfn: int, nr_pages: int, vm: PkvmHypVm) -> int:
    _require(hyp, "has_guest_share", "__pkvm_host_wrprotect_guest")
    if vm.is_protected:
        return -EPERM
    ipa = gfn << PAGE_SHIFT
    ret, size = __guest_check_transition_size(0, ipa, nr_pages)
    if ret:
        return ret
    await guest_lock_component(vm)
    ret = await kvm_pgtable_stage2_wrprotect(vm.pgt, ipa, size)
    guest_unlock_component(vm)
    return ret


async def __pkvm_host_test_clear_young_guest(hyp: Hyp, gfn: int, nr_pages: int, mkold: bool,
                                             vm: PkvmHypVm) -> int:
    _require(hyp, "has_guest_share", "__pkvm_host_test_clear_young_guest")
    if vm.is_protected:
        return -EPERM
    ipa = gfn << PAGE_SHIFT
    ret, size = __guest_check_transition_size(0, ipa, nr_pages)
    if ret:
        return ret
    await guest_lock_component(vm)
    young = await kvm_pgtable_stage2_test_clear_young(vm.pgt, ipa, size, mkold)
    guest_unlock_component(vm)
    return int(young)


async def __pkvm_host_mkyoung_guest(hyp: Hyp, gfn: int, vcpu: PkvmHypVcpu) -> int:
    _require(hyp, "has_guest_share", "__pkvm_host_mkyoung_guest")
    vm = vcpu.vm
    if vm.is_protected:
        return -EPERM
    await guest_lock_component(vm)
    await kvm_pgtable_stage2_mkyoung(vm.pgt, gfn << PAGE_SHIFT, 0)
    guest_unlock_component(vm)
    return 0


# --- the hyp vCPU's memcache (mm.c, pkvm.c) ------------------------------------------------

async def admit_host_page(hyp: Hyp, host_mc: KvmHypMemcache) -> int | None:
    """Take the head of the host's memcache through a full host-to-hyp donation."""
    if not host_mc.nr_pages:
        return None
    if await __pkvm_host_donate_hyp(hyp, host_mc.pages[-1], 1):
        return None
    return host_mc.pop()


async def refill_memcache(hyp: Hyp, mc: KvmHypMemcache, min_pages: int,
                          host_mc: KvmHypMemcache) -> int:
    while mc.nr_pages < min_pages:
        pfn = await admit_host_page(hyp, host_mc)
        if pfn is None:
            return -ENOMEM
        mc.push(pfn)
    return 0


async def pkvm_refill_memcache(hyp: Hyp, hyp_vcpu: PkvmHypVcpu) -> int:
    """Top the vCPU's memcache up to what one stage-2 map can need (levels - 1 pages)."""
    return await refill_memcache(hyp, hyp_vcpu.memcache, _guest_levels() - 1,
                                 hyp_vcpu.host_memcache)


# --- vCPU load / put (pkvm.c) ---------------------------------------------------------------

async def pkvm_load_hyp_vcpu(hyp: Hyp, cpu: int, handle: int,
                             vcpu_idx: int) -> PkvmHypVcpu | None:
    if hyp.loaded_hyp_vcpu[cpu] is not None:
        return None
    await hyp.vm_table_lock.lock()
    vm = hyp.vm_by_handle(handle)
    hyp_vcpu = None
    if vm is not None and 0 <= vcpu_idx < len(vm.vcpus):
        hyp_vcpu = vm.vcpus[vcpu_idx]
        # not loaded on two CPUs at once
        if hyp_vcpu.loaded_on is not None:
            hyp_vcpu = None
        else:
            hyp_vcpu.loaded_on = cpu
    hyp.vm_table_lock.unlock()
    if hyp_vcpu is not None:
        hyp.loaded_hyp_vcpu[cpu] = hyp_vcpu
    return hyp_vcpu


def pkvm_put_hyp_vcpu(hyp: Hyp, cpu: int) -> None:
    hyp_vcpu = hyp.loaded_hyp_vcpu[cpu]
    if hyp_vcpu is not None:
        hyp_vcpu.loaded_on = None
        hyp.loaded_hyp_vcpu[cpu] = None


async def get_np_pkvm_hyp_vm(hyp: Hyp, handle: int) -> PkvmHypVm | None:
    """The non-protected VM behind ``handle`` (its reference count is not modelled: VMs
    are never torn down here)."""
    await hyp.vm_table_lock.lock()
    vm = hyp.vm_by_handle(handle)
    hyp.vm_table_lock.unlock()
    return vm if vm is not None and not vm.is_protected else None
