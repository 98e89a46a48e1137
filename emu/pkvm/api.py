"""The direct API: a pKVM machine driven from plain Python, one call at a time.

``Pkvm(release=None, quirks=(), memory_pages=128, ...)`` builds the EL2 state of
``mem_protect.Hyp`` on a ``Sequential`` context and offers every transition as a method
returning the kernel's return code, computed by the same ``async`` code the hunts run
(``Sequential.call``)::

    >>> p = Pkvm()
    >>> pfn = p.host_pfns[0]
    >>> p.host_share_hyp(pfn), p.host_share_hyp(pfn)
    (0, -1)
    >>> p.state_names(pfn)
    ('SHARED_OWNED', 'SHARED_BORROWED')

Pages are named by pfn, guest pages by (vm index, gfn). A finding (a WARN_ON of an apply
step, a BUG_ON) raises ``sequential.Finding``. ``check()`` runs every invariant of
``invariants.py`` once.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

import attrs

from ..sim.sequential import Sequential
from . import mem_protect as mp
from .hyp_main import KVM_HOST_SMCCC_FUNC, handle_host_hcall
from .invariants import check_all, guest_mappings, may_access
from .memory import PKVM_NOPAGE, PKVM_PAGE_OWNED, PKVM_PAGE_STATE_NAMES
from .pgtable import KVM_PGTABLE_PROT_RWX, kvm_pgtable_get_leaf, kvm_pte_valid

T = TypeVar("T")

KERNEL: dict[str, Callable[..., Coroutine[Any, Any, Any]]] = {
    "__pkvm_host_donate_hyp": mp.__pkvm_host_donate_hyp,
    "__pkvm_host_mkyoung_guest": mp.__pkvm_host_mkyoung_guest,
    "__pkvm_host_relax_perms_guest": mp.__pkvm_host_relax_perms_guest,
    "__pkvm_host_share_ffa": mp.__pkvm_host_share_ffa,
    "__pkvm_host_share_guest": mp.__pkvm_host_share_guest,
    "__pkvm_host_share_hyp": mp.__pkvm_host_share_hyp,
    "__pkvm_host_test_clear_young_guest": mp.__pkvm_host_test_clear_young_guest,
    "__pkvm_host_unshare_ffa": mp.__pkvm_host_unshare_ffa,
    "__pkvm_host_unshare_guest": mp.__pkvm_host_unshare_guest,
    "__pkvm_host_unshare_hyp": mp.__pkvm_host_unshare_hyp,
    "__pkvm_host_wrprotect_guest": mp.__pkvm_host_wrprotect_guest,
    "__pkvm_hyp_donate_host": mp.__pkvm_hyp_donate_host,
}
"""The kernel functions the methods call, by name (a ``__name`` cannot be spelled inside a
class body: Python would mangle it)."""


@attrs.frozen
class PageInfo:
    """One memory page as EL2 sees it."""

    pfn: int
    host_state: int
    hyp_state: int
    refcount: int
    host_share_guest_count: int
    guests: tuple[tuple[int, int, int], ...]
    """(vm index, gfn, guest state) of each guest leaf mapping the page."""
    el2_mapped: bool


class Pkvm:
    """A pKVM machine: the host, the hypervisor, ``nr_vms`` non-protected VMs with
    ``nr_vcpus`` vCPUs each (default: one per CPU), ``nr_cpus`` CPUs."""

    def __init__(self, release: str | None = None, quirks: Iterable[str] = (),
                 memory_pages: int = 128, mmio_pages: int = 16, nr_cpus: int = 2,
                 nr_vms: int = 1, nr_vcpus: int | None = None,
                 arm64_workaround_834220: bool = True) -> None:
        self.ctx = Sequential(tuple(quirks), release)
        self.hyp = mp.Hyp(self.ctx, memory_pages=memory_pages, mmio_pages=mmio_pages,
                          nr_cpus=nr_cpus, nr_vms=nr_vms, nr_vcpus=nr_vcpus,
                          arm64_workaround_834220=arm64_workaround_834220)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.ctx.call(coro)

    # --- the machine ---------------------------------------------------------------------
    @property
    def host_pfns(self) -> range:
        """The memory pages the host owns at boot."""
        return self.hyp.host_pfns()

    @property
    def hyp_pfns(self) -> range:
        """The memory pages the hypervisor owns at boot (the top of memory)."""
        return range(self.hyp.hyp_start_pfn, mp.MEM_BASE_PFN + self.hyp.memory_pages)

    @property
    def mmio_pfns(self) -> range:
        return range(self.hyp.mmio_pages)

    def _vm(self, vm: int) -> mp.PkvmHypVm:
        return self.hyp.vms[vm]

    def _vcpu(self, vm: int, vcpu: int) -> mp.PkvmHypVcpu:
        return self.hyp.vms[vm].vcpus[vcpu]

    # --- host <-> hyp --------------------------------------------------------------------
    def host_share_hyp(self, pfn: int) -> int:
        return self._call(KERNEL["__pkvm_host_share_hyp"](self.hyp, pfn))

    def host_unshare_hyp(self, pfn: int) -> int:
        return self._call(KERNEL["__pkvm_host_unshare_hyp"](self.hyp, pfn))

    def host_donate_hyp(self, pfn: int, nr_pages: int = 1) -> int:
        return self._call(KERNEL["__pkvm_host_donate_hyp"](self.hyp, pfn, nr_pages))

    def hyp_donate_host(self, pfn: int, nr_pages: int = 1) -> int:
        return self._call(KERNEL["__pkvm_hyp_donate_host"](self.hyp, pfn, nr_pages))

    def hyp_pin_shared_mem(self, pfn: int, nr_pages: int = 1) -> int:
        """Pin the pages [pfn, pfn + nr_pages) (by their hyp VA, the linear map's)."""
        return self._call(mp.hyp_pin_shared_mem(self.hyp, pfn << mp.PAGE_SHIFT,
                                                (pfn + nr_pages) << mp.PAGE_SHIFT))

    def hyp_unpin_shared_mem(self, pfn: int, nr_pages: int = 1) -> None:
        self._call(mp.hyp_unpin_shared_mem(self.hyp, pfn << mp.PAGE_SHIFT,
                                           (pfn + nr_pages) << mp.PAGE_SHIFT))

    # --- host <-> FF-A -------------------------------------------------------------------
    def host_share_ffa(self, pfn: int, nr_pages: int = 1) -> int:
        return self._call(KERNEL["__pkvm_host_share_ffa"](self.hyp, pfn, nr_pages))

    def host_unshare_ffa(self, pfn: int, nr_pages: int = 1) -> int:
        return self._call(KERNEL["__pkvm_host_unshare_ffa"](self.hyp, pfn, nr_pages))

    def ffa_mem_share(self, pfn: int, nr_pages: int = 1) -> int:
        """Through the FF-A proxy: the secure world's handle (> 0), or the error."""
        return self._call(mp.ffa_mem_share(self.hyp, pfn, nr_pages))

    def ffa_mem_reclaim(self, handle: int) -> int:
        return self._call(mp.ffa_mem_reclaim(self.hyp, handle))

    # --- host <-> guests -----------------------------------------------------------------
    def host_share_guest(self, pfn: int, gfn: int, nr_pages: int = 1,
                         prot: int = KVM_PGTABLE_PROT_RWX, vm: int = 0, vcpu: int = 0) -> int:
        """As the hypercall does it: top up the vCPU's memcache from the host's
        (pkvm_refill_memcache), then __pkvm_host_share_guest."""
        hyp_vcpu = self._vcpu(vm, vcpu)
        ret = self._call(mp.pkvm_refill_memcache(self.hyp, hyp_vcpu))
        if ret:
            return ret
        return self._call(KERNEL["__pkvm_host_share_guest"](self.hyp, pfn, gfn, nr_pages, hyp_vcpu,
                                                     prot))

    def host_unshare_guest(self, gfn: int, nr_pages: int = 1, vm: int = 0) -> int:
        return self._call(KERNEL["__pkvm_host_unshare_guest"](self.hyp, gfn, nr_pages,
                                                              self._vm(vm)))

    def host_relax_perms_guest(self, gfn: int, prot: int, vm: int = 0, vcpu: int = 0) -> int:
        return self._call(KERNEL["__pkvm_host_relax_perms_guest"](self.hyp, gfn,
                                                           self._vcpu(vm, vcpu), prot))

    def host_wrprotect_guest(self, gfn: int, nr_pages: int = 1, vm: int = 0) -> int:
        return self._call(KERNEL["__pkvm_host_wrprotect_guest"](self.hyp, gfn, nr_pages,
                                                                self._vm(vm)))

    def host_test_clear_young_guest(self, gfn: int, nr_pages: int = 1, mkold: bool = True,
                                    vm: int = 0) -> int:
        return self._call(KERNEL["__pkvm_host_test_clear_young_guest"](self.hyp, gfn, nr_pages,
                                                                mkold, self._vm(vm)))

    def host_mkyoung_guest(self, gfn: int, vm: int = 0, vcpu: int = 0) -> int:
        return self._call(KERNEL["__pkvm_host_mkyoung_guest"](self.hyp, gfn, self._vcpu(vm, vcpu)))

    def host_topup_memcache(self, pfns: Iterable[int], vm: int = 0, vcpu: int = 0) -> None:
        """Put host pages in the host vCPU's memcache, for EL2 to take by donation."""
        for pfn in pfns:
            self._vcpu(vm, vcpu).host_memcache.push(pfn)

    # --- hypercalls, accesses --------------------------------------------------------------
    def hcall(self, cpu: int, func: str | int, *args: int) -> int:
        """The host's hypercall ``func`` (a __KVM_HOST_SMCCC_FUNC_ name or a raw SMCCC id)
        on ``cpu``: what kvm_call_hyp_nvhe() returns (hyp_main.handle_host_hcall)."""
        func_id = KVM_HOST_SMCCC_FUNC(func) if isinstance(func, str) else func
        return self._call(handle_host_hcall(self.hyp, cpu, func_id, *args))

    def vcpu_load(self, cpu: int, vm: int = 0, vcpu: int = 0) -> bool:
        """__pkvm_vcpu_load on ``cpu``: True if the vCPU is now loaded there."""
        self.hcall(cpu, "__pkvm_vcpu_load", self._vm(vm).handle, vcpu, 0)
        return self.hyp.loaded_hyp_vcpu[cpu] is self._vcpu(vm, vcpu)

    def vcpu_put(self, cpu: int) -> None:
        self.hcall(cpu, "__pkvm_vcpu_put")

    def host_access(self, cpu: int, addr: int, write: bool = False) -> int:
        """A host load/store of (VA) ``addr`` on ``cpu``: its TLB or a stage-2 walk, an
        abort to EL2 and a retry on a fault. Returns the pfn reached, or -EFAULT when the
        host's own stage-1 does not map ``addr``; a host access to a page it does not own
        is EL2's BUG_ON (a Finding)."""
        return self._call(mp.host_mem_access(self.hyp, cpu, addr, write))

    def guest_access(self, cpu: int, vm: int, gfn: int, write: bool = False) -> int:
        """A guest access: the pfn reached, -EFAULT on a stage-2 fault, -EPERM on a write
        to a read-only page."""
        return self._call(mp.guest_mem_access(self.hyp, cpu, self._vm(vm), gfn, write))

    def host_stage1_unmap(self, addr: int) -> None:
        """The host unmaps ``addr``'s page from its own stage-1 (EL2's AT then fails)."""
        self._call(mp.host_stage1_update(self.hyp, addr, None))

    def host_stage1_map(self, addr: int, ipa: int) -> None:
        self._call(mp.host_stage1_update(self.hyp, addr, ipa))

    # --- state ---------------------------------------------------------------------------
    def host_state(self, pfn: int) -> int:
        return mp.get_host_state(self.hyp, pfn << mp.PAGE_SHIFT)

    def hyp_state(self, pfn: int) -> int:
        return mp.get_hyp_state(self.hyp, pfn << mp.PAGE_SHIFT)

    def guest_state(self, vm: int, gfn: int) -> int:
        """The guest's state of ``gfn`` (NOPAGE if its stage-2 does not map it)."""
        _, pte, _ = kvm_pgtable_get_leaf(self._vm(vm).pgt, gfn << mp.PAGE_SHIFT)
        return mp.guest_get_page_state(pte)

    def state_names(self, pfn: int) -> tuple[str, str]:
        """(host state, hyp state) by name."""
        return (PKVM_PAGE_STATE_NAMES[self.host_state(pfn)],
                PKVM_PAGE_STATE_NAMES[self.hyp_state(pfn)])

    def page(self, pfn: int) -> PageInfo:
        vmemmap = self.hyp.hyp_vmemmap
        _, pte, _ = kvm_pgtable_get_leaf(self.hyp.pkvm_pgtable, pfn << mp.PAGE_SHIFT)
        return PageInfo(pfn, self.host_state(pfn), self.hyp_state(pfn), vmemmap.refcount[pfn],
                        vmemmap.host_share_guest_count[pfn],
                        tuple(guest_mappings(self.hyp).get(pfn, ())), kvm_pte_valid(pte))

    def may_access(self, who: str | int, pfn_or_gfn: int, pfn: int | None = None) -> bool:
        return may_access(self.hyp, who, pfn_or_gfn, pfn)

    def check(self) -> str | None:
        """Every invariant once: None, or the first that fails."""
        return check_all(self.hyp)

    def table(self, pfns: Iterable[int] | None = None) -> str:
        return ownership_table(self.hyp, pfns)


def ownership_table(hyp: mp.Hyp, pfns: Iterable[int] | None = None) -> str:
    """An ownership table: one line per page, its host and hyp states, refcount, guest share
    count and guest mappings (default: every memory page whose state is not the one it
    booted in, the host's or the hypervisor's)."""
    guests = guest_mappings(hyp)
    changed_only = pfns is None
    if pfns is None:
        hyp_pages = range(hyp.hyp_start_pfn, mp.MEM_BASE_PFN + hyp.memory_pages)
        pfns = [pfn for pfn in hyp.memory_pfns()
                if (mp.get_host_state(hyp, pfn << mp.PAGE_SHIFT),
                    mp.get_hyp_state(hyp, pfn << mp.PAGE_SHIFT))
                != ((PKVM_NOPAGE, PKVM_PAGE_OWNED) if pfn in hyp_pages
                    else (PKVM_PAGE_OWNED, PKVM_NOPAGE))]
    names = PKVM_PAGE_STATE_NAMES
    lines = [f"{'pfn':>8} {'host':<16}{'hyp':<16}{'refs':>5}{'count':>6}  guests"]
    vmemmap = hyp.hyp_vmemmap
    for pfn in pfns:
        maps = ", ".join(f"vm{vm}:{gfn:#x} {names[st]}" for vm, gfn, st in guests.get(pfn, ()))
        lines.append(f"{pfn:#8x} {names[mp.get_host_state(hyp, pfn << mp.PAGE_SHIFT)]:<16}"
                     f"{names[mp.get_hyp_state(hyp, pfn << mp.PAGE_SHIFT)]:<16}"
                     f"{vmemmap.refcount[pfn]:>5}{vmemmap.host_share_guest_count[pfn]:>6}"
                     f"  {maps or '-'}")
    if changed_only and len(lines) == 1:
        lines.append("(every memory page is in the state it booted in)")
    return "\n".join(lines) + "\n"
