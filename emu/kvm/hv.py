"""L0's entry points for secure VMs (``book3s_hv.c``): the hcall dispatcher, the return path,
KVM_PPC_SVM_OFF, memslot commit, and vCPU entry.

Every hcall goes through ``Hypervisor.hcall``, which checks on the way out what must hold
whenever an hcall returns: no lock still held, no ``gfn_to_pfn`` reference leaked, the
return path matching the caller (an hcall that came from the Ultravisor returns with
UV_RETURN, which the HV uses whenever ``secure_guest`` is set), and, for the calls the
Ultravisor issues, the seed-000 life-cycle tables.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from functools import partial
from typing import TYPE_CHECKING

import attrs

from ..sim import accesses
from ..sim.explain import entry
from . import lifecycle, uvmem
from .hvcall import (
    EBUSY,
    EFAULT,
    EINVAL,
    H_FUNCTION,
    H_PAGE_IN_SHARED,
    H_PARAMETER,
    H_REGISTER_VPA,
    H_SUCCESS,
    H_SVM_INIT_ABORT,
    H_SVM_INIT_DONE,
    H_SVM_INIT_START,
    H_SVM_PAGE_IN,
    H_SVM_PAGE_OUT,
    H_UNSUPPORTED,
    KVMPPC_SECURE_INIT_DONE,
    KVMPPC_SECURE_INIT_START,
    MASK64,
    NAMES,
    PAGE_SHIFT,
    U_SUCCESS,
    describe_hcall,
    rc_name,
)
from .vm import (
    KVM,
    KVM_MEM_LOG_DIRTY_PAGES,
    KVM_MEMSLOT_INVALID,
    KVM_MR_CREATE,
    KVM_MR_DELETE,
    KVM_MR_FLAGS_ONLY,
    KVM_MR_MOVE,
    VPA_KINDS,
    Memslot,
)

if TYPE_CHECKING:
    from ..sim import Machine

UVMEM_SLOT_LEAK = "uvmem-slot-leak"
"""The kernel's behaviour (a candidate leak, README "Findings"): neither KVM_PPC_SVM_OFF nor
H_SVM_INIT_ABORT frees the VM's uvmem slots, and the next H_SVM_INIT_START adds one more per
memslot. A quirk; without it the model frees them (the evident fix)."""
"""asm/hvcall.h; flags bits 16-18 (IBM numbering) select the subfunction."""
H_VPA_FUNC_SHIFT, H_VPA_FUNC_MASK = 63 - 18, 7
H_VPA_REG = {1: "vpa", 2: "dtl", 3: "slb_shadow"}
H_VPA_DEREG = {5: "vpa", 6: "dtl", 7: "slb_shadow"}
FLAGS_ONLY_DROPS = "flags-only-drops-pages"
MR_MOVE_UNHANDLED = "mr-move-unhandled"
GFN_OPS = ("share", "unshare")
_NOT_BUSY: tuple[AbstractSet[int], AbstractSet[int]] = (frozenset(), frozenset())
"""What an hcall other than INIT_DONE hands the conformance check for ``busy``."""
VM_OPS = {H_SVM_INIT_START: "INIT_START", H_SVM_INIT_DONE: "INIT_DONE",
          H_SVM_INIT_ABORT: "INIT_ABORT"}


def touch_hcalls(lpid: int) -> None:
    """This step opens or closes the window of an hcall or VM operation on VM ``lpid``: the
    checks' verdicts depend on which windows overlapped, so ``check:hcalls:<lpid>`` is written."""
    if accesses.current.on:
        accesses.current.touch(f"{accesses.CHECK}hcalls:{lpid}", True)


@attrs.define(eq=False)
class VmOpWindow:
    """The window of one operation on a VM, against the VM-wide operations on it."""

    ops: list[int]
    """The VM's [VM-wide operations in flight, VM-wide operations started]."""
    vm_wide: bool
    started: int
    overlapped: bool
    lpid: int

    def close(self) -> bool:
        """The operation returns: did a VM-wide operation (other than itself) overlap it?"""
        touch_hcalls(self.lpid)
        self.ops[0] -= self.vm_wide
        return self.overlapped or self.ops[1] != self.started


def uvmem_slot_counts(kvm: KVM) -> str | None:
    """The uvmem slots, counted: no memslot has more than one (a second is created by every
    H_SVM_INIT_START or memory-region commit that does not free the first), and none is
    left for a memslot that is gone. A set comparison of slot ids cannot see either."""
    kvm.touch_memslots()
    live = {(s.id, s.base_gfn, s.npages) for s in kvm.memslots}
    count: dict[tuple[int, int, int], int] = {}
    for p in kvm.uvmem_pfns:
        key = (p.id, p.base_pfn, p.nr_pfns)
        count[key] = count.get(key, 0) + 1
    for (slot_id, base, npages), n in sorted(count.items()):
        if (slot_id, base, npages) not in live:
            return (f"VM {kvm.lpid} keeps a uvmem slot for memslot {slot_id} (GFNs {base:#x}+"
                    f"{npages}), which is gone")
        if n > 1:
            return (f"VM {kvm.lpid} has {n} uvmem slots for memslot {slot_id} (GFNs {base:#x}+"
                    f"{npages}): the older ones are leaked")
    return None


class Hypervisor:
    def __init__(self, m: Machine) -> None:
        self.m = m
        self.kvms: dict[int, KVM] = {}
        self.gfn_ops: dict[tuple[int, int], list[int]] = {}
        """(lpid, gfn) -> [operations in flight, operations started]: a failed operation is
        held to "no change" only if no other operation on the GFN overlapped it."""
        self.slot_ops: dict[int, int] = {}
        """lpid -> slot operations in flight (INIT_START, memory-region changes, SVM_OFF):
        the UV's and the HV's slots need only agree when there are none."""
        self.freed_words: dict[int, str | None] = {}
        """lpid -> what was wrong with the pfns[] words of the uvmem slots the last abort
        freed (checked with the abort's other results)."""
        self.teardown: dict[int, bool] = {}
        """The lpids of the VMs KVM_PPC_SVM_OFF is tearing down (no vCPU may be in the guest
        of one): empty unless a teardown is in progress."""
        self.vm_ops: dict[int, list[int]] = {}
        """lpid -> [VM-wide operations in flight, started] (H_SVM_INIT_START, INIT_DONE,
        INIT_ABORT, KVM_PPC_SVM_OFF): they move many GFNs, or the whole VM, at once, so a
        GFN operation one of them overlapped is held only to what its success promises, and
        a VM-wide one that another overlapped is not held to the VM table (its outcome is
        not its own doing). Only a guest's own H_SVM_INIT_ABORT, or QEMU, can overlap the
        life-cycle operations the UV runs one at a time."""

    def add(self, kvm: KVM) -> KVM:
        self.kvms[kvm.lpid] = kvm
        kvm.uvmem_dev.kvms[kvm.lpid] = kvm
        kvm.mm.notifiers.append(partial(self.kvm_mmu_notifier_invalidate_range_start, kvm))
        return kvm

    # ------------------------------------------------------------------ hcalls
    @entry(lambda f: describe_hcall(f["req"], f["args"]))
    async def hcall(self, lpid: int, req: int, *args: int, msr_s: bool,
                    via_uv: bool | None = None) -> int:
        """An hcall from a guest (``msr_s``: it came through the Ultravisor, SRR1[MSR_S]).
        ``via_uv``: the Ultravisor issued it (default: ``msr_s``); only those are life-cycle
        operations."""
        kvm = self.kvms[lpid]
        via_uv = msr_s if via_uv is None else via_uv
        actor = self.m.ctl.current
        held = list(actor.held)
        refs = kvm.pfn_refs.get(actor.name, 0)
        regs = [(a & MASK64) for a in args] + [0] * (3 - len(args))
        vm_before = uvmem.vm_state(kvm)
        lifecycle.cover_gfn_states(kvm, VM_OPS.get(req) if via_uv else None)
        gfn_op, gfn, gfn_before, shared_before = self._gfn_op(kvm, req, regs)
        marks = self._gfn_marks(lpid) if gfn_op == "init_done" else None
        ops = self.gfn_ops.setdefault((lpid, gfn if gfn_op in GFN_OPS else None), [0, 0])
        overlapped = ops[0] > 0
        ops[0] += 1
        ops[1] += 1
        started = ops[1]
        window = self._window(lpid, req in VM_OPS)

        slot_op = req == H_SVM_INIT_START
        mine = self._registered_by(kvm, actor.name) if slot_op else frozenset()
        self.slot_ops[lpid] = self.slot_ops.get(lpid, 0) + slot_op
        rc = await self._dispatch(kvm, req, regs, msr_s)
        self.slot_ops[lpid] -= slot_op
        ops[0] -= 1
        vm_overlapped = window.close()
        if overlapped or ops[1] != started or vm_overlapped:
            gfn_before = ""  # another operation overlapped: only a success is checked
        if vm_overlapped:
            vm_before = ""  # so did another VM-wide one: the VM's state is not its alone
        busy = self._gfn_busy(lpid, marks) if gfn_op == "init_done" else _NOT_BUSY

        name = NAMES.get(req) or hex(req)
        if self.m.coverage.on:
            self.m.cover("hcall-rc", f"{name}|{rc_name(rc)}")
        self.no_leaks(kvm, name, held, refs)
        if msr_s and not kvm.secure_guest:
            self.m.fail("return-path", f"{name} came from the Ultravisor but returns with rfid "
                        "(secure_guest is 0), not UV_RETURN, into a context that does not exist")
        if via_uv:
            self._conformance(kvm, req, rc, vm_before, gfn_op, gfn, gfn_before, shared_before,
                              busy)
        if req == H_SVM_INIT_START:
            leaked = self._registered_by(kvm, actor.name) - mine if rc != H_SUCCESS else set()
            self._check_slots(kvm, leaked)
        return rc

    def _gfn_marks(self, lpid: int) -> dict[int, tuple[int, int]]:
        """The share and unshare operations on each GFN of VM ``lpid`` so far."""
        return {g: (ops[0], ops[1]) for (vm, g), ops in self.gfn_ops.items()
                if vm == lpid and g is not None}

    def _gfn_busy(self, lpid: int, marks: dict[int, tuple[int, int]]
                  ) -> tuple[set[int], set[int]]:
        """The GFNs a share or unshare overlapped INIT_DONE on (in flight when ``marks``
        were taken, or started since), and those of them with one still in flight now. The
        first may have been moved on (Shared to Secure, Normal to Shared), never to
        Normal; only the second may be caught mid-way (a share between its page-out and its
        UV_PAGE_IN leaves the GFN Normal for a moment)."""
        now = self._gfn_marks(lpid)
        in_flight = {g for g, (n, _) in now.items() if n}
        moved = in_flight | {g for g, (_, started) in now.items()
                             if started != marks.get(g, (0, 0))[1]} | \
            {g for g, (n, _) in marks.items() if n}
        return moved, in_flight

    def _window(self, lpid: int, vm_wide: bool) -> VmOpWindow:
        """Open the window of an operation on VM ``lpid`` (a VM-wide one if ``vm_wide``)."""
        touch_hcalls(lpid)
        ops = self.vm_ops.setdefault(lpid, [0, 0])
        overlapped = ops[0] > 0
        ops[0] += vm_wide
        ops[1] += vm_wide
        return VmOpWindow(ops, vm_wide, ops[1], overlapped, lpid)

    @staticmethod
    def _registered_by(kvm: KVM, who: str) -> set[int]:
        svm = kvm.uv.svm(kvm.lpid)
        return {i for i, by in svm.registered_by.items() if by == who} if svm else set()

    def _check_slots(self, kvm: KVM, leaked: set[int] = frozenset()) -> None:
        """The UV's registered slots equal the HV's uvmem slots; a failed INIT_START has
        unregistered every slot it registered (``leaked``: those it did not)."""
        svm = kvm.uv.svm(kvm.lpid)
        uv_ids = sorted(svm.slots) if svm else []
        kvm.touch_memslots()
        live = {(s.id, s.base_gfn) for s in kvm.memslots}
        hv_ids = sorted({p.id for p in kvm.uvmem_pfns if (p.id, p.base_pfn) in live})
        if leaked:
            self.m.fail("slots", f"H_SVM_INIT_START failed but left the slots it registered "
                        f"{sorted(leaked)} registered with the UV (incomplete rollback)")
        elif self.slot_ops.get(kvm.lpid):
            return  # another slot operation is in flight: only its end must agree
        elif svm is not None and uv_ids != hv_ids:
            self.m.fail("slots", f"the UV has slots {uv_ids} registered, the HV's uvmem slots "
                        f"are {hv_ids}")
        elif problem := uvmem_slot_counts(kvm):
            self.m.fail("slots", problem)

    def no_leaks(self, kvm: KVM, name: str, held: list, refs: int) -> None:
        """What must hold whenever an hcall or a fault returns: no lock still held that
        was not held on entry, no gfn_to_pfn reference leaked."""
        actor = self.m.ctl.current
        if actor.held != held:
            extra = ", ".join(h.lock.name for h in actor.held if h not in held)
            self.m.fail("lock-leak", f"{name} returns with {extra} held")
        if kvm.pfn_refs.get(actor.name, 0) != refs:
            self.m.fail("pfn-refcount", f"{name} returns with a gfn_to_pfn reference leaked")

    # ------------------------------------------------------------------ the radix MMU
    @entry(lambda f: f"radix fault GFN {f['gfn']:#x}")
    async def radix_page_fault(self, kvm: KVM, gfn: int) -> int:
        """kvmppc_book3s_radix_page_fault for a VM past INIT_DONE (R): the page goes to
        the UV (kvmppc_send_page_to_uv). 0 is RESUME_GUEST."""
        actor = self.m.ctl.current
        held, refs = list(actor.held), kvm.pfn_refs.get(actor.name, 0)
        self.m.note(f"radix page fault on GFN {gfn:#x}")
        srcu_idx = await kvm.srcu.read_lock()
        ret = -EFAULT
        if kvm.secure_guest & KVMPPC_SECURE_INIT_DONE:
            ret = await uvmem.kvmppc_send_page_to_uv(kvm, gfn)
        kvm.srcu.read_unlock(srcu_idx)
        self.no_leaks(kvm, "the radix page fault", held, refs)
        return ret

    async def kvm_mmu_notifier_invalidate_range_start(self, kvm: KVM, start: int,
                                                      end: int) -> int:
        """KVM's MMU notifier (core mm calls it before migrating, unmapping, reclaiming or
        merging host pages): under mmu_lock, kvm_unmap_radix of each GFN backed by the
        range. The kernel ignores what UV_PAGE_INVAL returns; the model returns the first
        failure so a host program can check it."""
        gfns = kvm.hva_to_gfns(start, end)
        if not gfns:
            return U_SUCCESS
        rc = U_SUCCESS
        await kvm.mmu_lock.lock()
        for gfn in gfns:
            got = await self.kvm_unmap_radix(kvm, gfn)
            rc = rc or got
        kvm.mmu_lock.unlock()
        return rc

    @staticmethod
    async def kvm_unmap_radix(kvm: KVM, gfn: int) -> int:
        """One GFN (mmu_lock held): a VM past INIT_DONE only tells the UV (UV_PAGE_INVAL)
        and returns; otherwise the partition-scoped PTE goes (nothing the model keeps: a
        guest access walks the host page table every time)."""
        if kvm.secure_guest & KVMPPC_SECURE_INIT_DONE:
            return await kvm.uv.uv_page_inval(kvm.lpid, gfn << PAGE_SHIFT, PAGE_SHIFT)
        return U_SUCCESS

    def _gfn_op(self, kvm: KVM, req: int, regs: list[int]
                ) -> tuple[str | None, int, str, list[int]]:
        if req == H_SVM_PAGE_IN and regs[2] == PAGE_SHIFT and not regs[1] & ~H_PAGE_IN_SHARED:
            gfn = regs[0] >> PAGE_SHIFT
            op = "share" if regs[1] & H_PAGE_IN_SHARED else "unshare"
            return op, gfn, lifecycle.true_gfn_state(kvm, gfn), []
        if req == H_SVM_INIT_DONE:
            svm = kvm.uv.svm(kvm.lpid)
            if svm is not None:
                svm.touch_all()
            return "init_done", 0, "", list(svm.shared) if svm else []
        return None, 0, "", []

    def _conformance(self, kvm: KVM, req: int, rc: int, vm_before: str, gfn_op: str | None,
                     gfn: int, gfn_before: str, shared_before: list[int],
                     busy: tuple[AbstractSet[int], AbstractSet[int]]) -> None:
        problem = None
        if req in VM_OPS and vm_before:
            problem = lifecycle.check_vm(kvm, VM_OPS[req], vm_before, rc)
        if req == H_SVM_INIT_ABORT:
            words = self.freed_words.pop(kvm.lpid, None)
            if problem is None and rc == H_PARAMETER and vm_before:
                problem = lifecycle.check_terminated(kvm, "abort") or words
        if problem is None and gfn_op in ("share", "unshare"):
            problem = lifecycle.check_gfn(kvm, gfn_op, gfn, gfn_before, rc)
        if problem is None and gfn_op == "init_done" and rc == H_SUCCESS and vm_before:
            problem = lifecycle.check_init_done(kvm, shared_before, *busy)
        if problem:
            self.m.fail("life-cycle", problem)

    async def _dispatch(self, kvm: KVM, req: int, r: list[int], msr_s: bool) -> int:
        """kvmppc_pseries_do_hcall: PAGE_IN, PAGE_OUT, INIT_START and INIT_DONE need MSR_S
        (8c47b6ff29e3); INIT_ABORT does not (e3326ae3d59e). An hcall KVM does not handle
        goes to userspace (RESUME_HOST), where QEMU answers H_FUNCTION."""
        if req == H_SVM_PAGE_IN:
            return await uvmem.kvmppc_h_svm_page_in(kvm, r[0], r[1], r[2]) if msr_s \
                else H_UNSUPPORTED
        if req == H_SVM_PAGE_OUT:
            return await uvmem.kvmppc_h_svm_page_out(kvm, r[0], r[1], r[2]) if msr_s \
                else H_UNSUPPORTED
        if req == H_SVM_INIT_START:
            return await uvmem.kvmppc_h_svm_init_start(kvm) if msr_s else H_UNSUPPORTED
        if req == H_SVM_INIT_DONE:
            return await uvmem.kvmppc_h_svm_init_done(kvm) if msr_s else H_UNSUPPORTED
        if req == H_SVM_INIT_ABORT:
            if not msr_s and kvm.quirk("strict-abort-caller-check"):
                return H_UNSUPPORTED  # B4
            rc = await uvmem.kvmppc_h_svm_init_abort(kvm)
            if rc == H_PARAMETER and not kvm.secure_guest and not kvm.quirk(UVMEM_SLOT_LEAK):
                # kvmppc_h_svm_init_abort frees no uvmem slot either, and a later ESM's
                # INIT_START adds a second one per memslot: the evident fix frees them as the
                # abort returns (here, where the pfns[] words they hold can be checked)
                srcu_idx = await kvm.srcu.read_lock()
                words = None
                kvm.touch_memslots()
                for memslot in kvm.memslots:
                    words = words or await self._free_uvmem_slot(kvm, memslot, "abort")
                kvm.srcu.read_unlock(srcu_idx)
                self.freed_words[kvm.lpid] = words
            return rc
        if req == H_REGISTER_VPA:
            return await self.do_h_register_vpa(kvm, r[0], r[1], r[2])
        return H_FUNCTION

    # ------------------------------------------------------------------ VPA
    async def do_h_register_vpa(self, kvm: KVM, flags: int, vcpuid: int, vpa: int) -> int:
        """H_REGISTER_VPA (book3s_hv.c do_h_register_vpa, then kvmppc_update_vpas at the
        vCPU's next entry, which the model runs as the hcall returns): registering pins the
        page at ``vpa`` (kvmppc_pin_guest_page, a long-term reference) and unpins the one it
        replaces; deregistering unpins. H_PARAMETER for a vCPU that does not exist, a
        subfunction that is none of the six or a page outside the guest's memory; H_RESOURCE
        (-16) for a DTL or SLB shadow without a VPA. The length and alignment checks of the
        area itself are not modelled."""
        subfunc = (flags >> H_VPA_FUNC_SHIFT) & H_VPA_FUNC_MASK
        if vcpuid >= kvm.online_vcpus or (subfunc not in H_VPA_REG and subfunc not in H_VPA_DEREG):
            return H_PARAMETER
        if subfunc in H_VPA_REG:
            kind = H_VPA_REG[subfunc]
            if kind != "vpa" and (vcpuid, "vpa") not in kvm.vpas:
                return -16  # H_RESOURCE
            if await kvm.kvmppc_pin_guest_page(vpa) is None:
                return H_PARAMETER
            await kvm.vpa_update_lock.lock()
            old = kvm.vpas.get((vcpuid, kind))
            kvm.vpas[(vcpuid, kind)] = vpa
            kvm.vpa_update_lock.unlock()
            if old is not None:
                kvm.kvmppc_unpin_guest_page(old)
            return H_SUCCESS
        kind = H_VPA_DEREG[subfunc]
        await kvm.vpa_update_lock.lock()
        old = kvm.vpas.pop((vcpuid, kind), None)
        kvm.vpa_update_lock.unlock()
        if old is not None:
            kvm.kvmppc_unpin_guest_page(old)
        return H_SUCCESS

    async def unpin_vpa_reset(self, kvm: KVM) -> None:
        """kvmhv_svm_off: for each vCPU, under its vpa_update_lock, unpin_vpa_reset of the
        DTL, the SLB shadow and the VPA (gpa 0, pinned_addr NULL), so that the next ESM can
        migrate those pages ("required for the secure SMP guest to reboot correctly")."""
        await kvm.vpa_update_lock.lock()
        for key in sorted(kvm.vpas, key=lambda k: (k[0], VPA_KINDS.index(k[1]))):
            kvm.kvmppc_unpin_guest_page(kvm.vpas[key])
        kvm.vpas.clear()
        kvm.vpa_update_lock.unlock()

    @staticmethod
    async def _free_uvmem_slot(kvm: KVM, memslot: Memslot, op: str) -> str | None:
        """Free the memslot's uvmem slot after an abort or a terminate; what is wrong with
        the pfns[] words it had (every one must be 0 by then), or None."""
        p = uvmem.uvmem_slot(kvm, memslot.base_gfn)
        problem = lifecycle.check_words(p, op) if p is not None else None
        await uvmem.kvmppc_uvmem_slot_free(kvm, memslot)
        return problem

    # ------------------------------------------------------------------ KVM_PPC_SVM_OFF
    async def kvmhv_svm_off(self, kvm: KVM) -> int:
        """Reset a secure guest: drop its pages, unregister its slots, terminate it in the
        UV. Refused with -EBUSY while a vCPU runs (the guard asked for in review, B6)."""
        vm_before = uvmem.vm_state(kvm)
        ret = 0
        self.m.racing(uvmem.RESET_VS_SHARE, "kvmppc_share_page")
        self.m.racing(uvmem.RESET_IN_SHARE_RETRY, "kvmppc_share_page", "gfn_to_pfn")
        if not kvm.secure_guest & KVMPPC_SECURE_INIT_START:
            self.m.cover(lifecycle.VM_CELLS, "Normal|TERMINATE")  # nothing to terminate
            return ret
        window = self._window(kvm.lpid, True)
        await kvm.mmu_setup_lock.lock()
        kvm.touch_mmu(True)
        mmu_was_ready = kvm.mmu_ready
        if kvm.mmu_ready and not kvm.quirk("svm-off-no-guard"):
            kvm.mmu_ready = 0
            await self.m.point("smp_mb (mmu_ready vs vcpus_running)")
            kvm.touch_running()
            kvm.touch_mmu(True)
            if kvm.vcpus_running:
                kvm.mmu_ready = 1
                kvm.mmu_setup_lock.unlock()
                window.close()
                return -EBUSY
        self.teardown[kvm.lpid] = True
        lifecycle.cover_gfn_states(kvm, "TERMINATE")
        self.slot_ops[kvm.lpid] = self.slot_ops.get(kvm.lpid, 0) + 1
        words = None
        srcu_idx = await kvm.srcu.read_lock()
        kvm.touch_memslots()
        for memslot in kvm.memslots:
            await uvmem.kvmppc_uvmem_drop_pages(memslot, kvm, True)
            await kvm.uv.uv_unregister_mem_slot(kvm.lpid, memslot.id)
            if not kvm.quirk(UVMEM_SLOT_LEAK):
                # The kernel stops here: its uvmem slot stays, and the next INIT_START adds
                # another for the same memslot (one leaked per reset; see the README). The
                # model frees it, the evident fix.
                words = words or await self._free_uvmem_slot(kvm, memslot, "terminate")
        kvm.srcu.read_unlock(srcu_idx)
        if await kvm.uv.uv_svm_terminate(kvm.lpid) != U_SUCCESS:
            ret = -EINVAL
        else:
            kvm.touch_mmu(True)
            kvm.pate = False  # the UV dropped the SVM's partition-table entry
            await self.unpin_vpa_reset(kvm)
            kvmppc_setup_partition_table(kvm)
            kvm.secure_guest = 0
            self.m.cold(uvmem.VM_TRANSIENT, kvm.lpid)
            kvm.mmu_ready = mmu_was_ready
        self.slot_ops[kvm.lpid] -= 1
        self.teardown.pop(kvm.lpid, None)
        kvm.mmu_setup_lock.unlock()
        if not window.close() and ret == 0:  # (unless an abort or another reset overlapped)
            problem = lifecycle.check_vm(kvm, "TERMINATE", vm_before, H_SUCCESS) or \
                lifecycle.check_terminated(kvm, "terminate") or words
            if problem:
                self.m.fail("life-cycle", problem)
        self._check_slots(kvm)
        return ret

    # ------------------------------------------------------------------ memslots
    async def set_memory_region(self, kvm: KVM, slot: Memslot, delete: bool = False, *,
                                change: str | None = None, new_base: int | None = None,
                                new_flags: int | None = None) -> int:
        """KVM_SET_USER_MEMORY_REGION for one slot, as kvm_set_memslot (v5.17+) orders it:
        for DELETE and MOVE, kvm_invalidate_memslot (the old slot INVALID, synchronize_srcu,
        kvm_arch_flush_shadow_memslot: kvmppc_core_flush_memslot_hv, which for a radix guest
        is kvmppc_radix_flush_memslot); then the new memslots are installed and SRCU readers
        waited for; then kvmppc_core_commit_memory_region_hv: a FLAGS_ONLY change that
        toggles dirty logging calls kvmppc_radix_flush_memslot(old); nothing more unless
        secure_guest; CREATE is kvmppc_uvmem_memslot_create (errors ignored, "@TODO"),
        DELETE kvmppc_uvmem_memslot_delete, and anything else "default: /* TODO: Handle
        KVM_MR_MOVE */". All under slots_lock."""
        change = change or (KVM_MR_DELETE if delete else KVM_MR_CREATE)
        await kvm.slots_lock.lock()
        self.slot_ops[kvm.lpid] = self.slot_ops.get(kvm.lpid, 0) + 1
        old = slot
        states: dict[int, str] = {}
        if change in (KVM_MR_DELETE, KVM_MR_MOVE):
            kvm.set_memslot_flags(slot, slot.flags | KVM_MEMSLOT_INVALID)  # readers stop using it
            await kvm.srcu.synchronize()  # ...and the old ones have left
            await uvmem.kvmppc_radix_flush_memslot(kvm, slot)  # kvm_arch_flush_shadow_memslot
            kvm.remove_memslot(slot)
            if change == KVM_MR_MOVE:
                slot = Memslot(old.id, new_base, old.npages, old.userspace_addr,
                               old.flags & ~KVM_MEMSLOT_INVALID)
                kvm.publish(slot)
        elif change == KVM_MR_FLAGS_ONLY:
            window = self._window(kvm.lpid, False)
            marks = self._gfn_marks(kvm.lpid)
            states = {g: uvmem.hv_gfn_state(kvm, g)
                      for g in range(old.base_gfn, old.base_gfn + old.npages)} \
                if kvm.secure_guest else {}
            toggled = (old.flags ^ new_flags) & KVM_MEM_LOG_DIRTY_PAGES
            kvm.set_memslot_flags(old, new_flags)  # (id, base and size stay)
        else:
            kvm.publish(slot)
        await kvm.srcu.synchronize()
        if change == KVM_MR_FLAGS_ONLY and kvm.radix and toggled:
            # a secure VM's pages mean nothing to dirty logging: the evident fix leaves them
            if not kvm.secure_guest or kvm.quirk(FLAGS_ONLY_DROPS):
                await uvmem.kvmppc_radix_flush_memslot(kvm, old)
        if kvm.secure_guest:
            if change == KVM_MR_CREATE:
                if not kvm.uvmem_walk_pending:  # (else INIT_START's walk, waiting for
                    await uvmem.kvmppc_uvmem_memslot_create(kvm, slot)  # slots_lock, does)
            elif change == KVM_MR_DELETE:
                await uvmem.kvmppc_uvmem_memslot_delete(kvm, old)
            elif change == KVM_MR_MOVE and not kvm.quirk(MR_MOVE_UNHANDLED):
                # the TODO, done the evident way: a move is a delete and a create
                await uvmem.kvmppc_uvmem_memslot_delete(kvm, old)
                await uvmem.kvmppc_uvmem_memslot_create(kvm, slot)
        self.slot_ops[kvm.lpid] -= 1
        kvm.slots_lock.unlock()
        if change == KVM_MR_FLAGS_ONLY:
            raced = window.close()  # (a VM-wide operation overlapped it)
            moved = self._gfn_busy(kvm.lpid, marks)[0]  # GFNs a share or page-in overlapped
            changed = next(((g, b, uvmem.hv_gfn_state(kvm, g)) for g, b in states.items()
                            if g not in moved and uvmem.hv_gfn_state(kvm, g) != b), None)
            if changed and not raced:
                g, before, after = changed
                self.m.fail("life-cycle", f"GFN {g:#x} {before} --FLAGS_ONLY--> {after}: a "
                            f"flags-only change of memslot {old.id} (dirty logging) must "
                            "leave every GFN's state as it was")
        self._check_slots(kvm)
        return 0

    # ------------------------------------------------------------------ VM destroy
    async def kvm_destroy_vm(self, kvm: KVM) -> None:
        """QEMU exits. exit_mm comes before exit_files in do_exit, so exit_mmap runs first:
        unmapping each memslot's backing zaps its device-private entries and page_free
        releases every device page (the words become MEM_PFN: remove_gfn is false). Then
        the last VM reference goes: kvm_destroy_vm -> kvmppc_core_destroy_vm_hv frees the
        vcores and the radix tree, calls uv_svm_terminate if secure_guest, clears the PATE
        and frees the LPID; kvm_free_memslots frees the memslots, with no uvmem hook. No
        kvmppc_uvmem_slot_free anywhere on that path: the uvmem slots leak (quirk
        uvmem-slot-leak; the model frees them, the evident fix). Then: no device page, no
        uvmem slot and no UV state may remain for the VM."""
        kvm.touch_memslots()
        for slot in list(kvm.memslots):
            await kvm.munmap_memslot(slot, exiting=True)  # exit_mmap
        await self.m.point("exit_files: the last VM reference, kvm_destroy_vm")
        await self.unpin_vpa_reset(kvm)  # kvmppc_core_vcpu_free_hv: unpin_vpa of each area
        if kvm.secure_guest:
            await kvm.uv.uv_svm_terminate(kvm.lpid)
        kvm.touch_mmu(True)
        kvm.pate = False  # kvmhv_set_ptbl_entry(lpid, 0, 0)
        if not kvm.quirk(UVMEM_SLOT_LEAK):
            kvm.touch_memslots()
            for memslot in list(kvm.memslots):
                await uvmem.kvmppc_uvmem_slot_free(kvm, memslot)
        kvm.free_memslots()
        kvm.destroyed = True
        self.m.cold(uvmem.VM_TRANSIENT, kvm.lpid)
        problem = destroyed_leftovers(kvm)
        if problem:
            self.m.fail("life-cycle", problem)


def kvmppc_setup_partition_table(kvm: KVM) -> None:
    """Write the LPID's partition-table entry (kvmhv_set_ptbl_entry; through UV_WRITE_PATE
    on an Ultravisor machine)."""
    kvm.touch_mmu(True)
    kvm.pate = True


def destroyed_leftovers(kvm: KVM) -> str | None:
    """What a destroyed VM left behind: a device page, a uvmem slot, UV state."""
    dev = kvm.uvmem_dev
    lpids = getattr(dev.pvt_lpid, "_data", dev.pvt_lpid)
    left = [b + 1 for b in range(dev.npages) if dev.bitmap[b] and lpids[b] == kvm.lpid]
    if left:
        return f"VM {kvm.lpid} is destroyed but device page {left[0]} still stands for it"
    if kvm.uvmem_pfns:
        p = kvm.uvmem_pfns[0]
        return (f"VM {kvm.lpid} is destroyed but keeps {len(kvm.uvmem_pfns)} uvmem slots "
                f"(memslot {p.id}, GFNs {p.base_pfn:#x}+{p.nr_pfns}): leaked")
    if kvm.lpid in kvm.uv.svms:
        return f"VM {kvm.lpid} is destroyed but the UV still knows it"
    if kvm.pinned:
        return f"VM {kvm.lpid} is destroyed but still pins {len(kvm.pinned)} guest pages"
    return None
