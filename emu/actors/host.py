"""The host side of a VM: QEMU touching guest memory, hot-plugging memory, resetting.

A host program is an ``async def program(h: Host)``. A host access to a page the HV has
given to the Ultravisor faults, and the fault handler (``migrate_to_ram``) pages it out:
that is the window the share and page-out races live in. What QEMU reads must never be an
SVM's plaintext, and a fault must return with no lock held.

Every code QEMU gets back is checked against what the scenario accepts
(``returncodes.py``): ``"qemu read"`` and ``"qemu write"`` (0, or -EFAULT when the fault fails:
SIGBUS), ``"KVM_PPC_SVM_OFF"`` (0, -EBUSY, -EINVAL), ``"KVM_SET_USER_MEMORY_REGION"``
(hotplug and unplug) and ``"UV_PAGE_INVAL"`` (what the MMU notifier of a reclaim got from
the UV). Each takes ``accept=`` to override the declaration for one call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..kvm import mm
from ..kvm.hvcall import EFAULT, H_SUCCESS, KVMPPC_SECURE_INIT_DONE
from ..sim.explain import entry
from .guest_memory import ALL_GFNS
from .returncodes import AcceptSpec

if TYPE_CHECKING:
    from ..kvm.vm import KVM, Memslot
    from .platform import Platform


class Host:
    def __init__(self, machine: Platform) -> None:
        self._machine = machine
        self.m = machine.m

    def _kvm(self, lpid: int) -> KVM:
        return self._machine.hv.kvms[lpid]

    @entry(lambda f: f"qemu {f['what']} GFN {f['gfn']:#x}")
    async def _page(self, lpid: int, gfn: int, what: str):
        """Fault the host page of ``gfn`` in (QEMU's access through its mapping)."""
        kvm = self._kvm(lpid)
        await self.m.point(f"qemu {what} GFN {gfn:#x}")
        hva = kvm.gfn_to_hva(gfn)
        if hva is None:
            return None
        actor = self.m.ctl.current
        pfn = await kvm.host_fault(hva)
        if actor.held:
            self.m.fail("lock-leak", "the host page fault returns with "
                        + ", ".join(h.lock.name for h in actor.held) + " held")
        return kvm.memory.normal[pfn] if pfn > 0 else None

    def _check(self, lpid: int, call: str, args: list, rc: int, record,
               accept: AcceptSpec | None) -> None:
        self._machine.codes.check(f"qemu (VM {lpid})", call, args, rc, record.raced, accept)

    def _call(self, lpid: int, gfns: range):
        return self._machine.guest_memory(lpid).call(gfns, "qemu")

    async def read(self, lpid: int, gfn: int, *, accept: AcceptSpec | None = None
                   ) -> int | None:
        """QEMU reads a guest page (virtio, migration, a debugger): its value, or None if
        the access fails (checked as ``"qemu read"`` returning -EFAULT)."""
        with self._call(lpid, range(gfn, gfn + 1)) as record:
            frame = await self._page(lpid, gfn, "reads")
        self._check(lpid, "qemu read", [gfn], 0 if frame else -EFAULT, record, accept)
        if frame is None:
            return None
        if frame.secret and not frame.encrypted:
            self.m.fail("confidentiality", f"QEMU reads the plaintext of secure GFN {gfn:#x}")
        return frame.value

    async def write(self, lpid: int, gfn: int, value: int, *,
                    accept: AcceptSpec | None = None) -> int:
        """QEMU writes a guest page: 0, or -EFAULT if the access fails."""
        with self._call(lpid, range(gfn, gfn + 1)) as record:
            frame = await self._page(lpid, gfn, "writes")
        rc = 0 if frame else -EFAULT
        self._check(lpid, "qemu write", [gfn, value], rc, record, accept)
        if frame is not None:
            frame.value, frame.secret, frame.encrypted, frame.zero = value, False, False, False
        return rc

    async def reclaim(self, lpid: int, gfn: int, *, ksm: bool = False,
                      accept: AcceptSpec | None = None) -> int:
        """The host moves a regular page of the guest to a new frame: reclaim (swap out and
        back in), compaction, or with ``ksm`` a KSM merge (only in a mergeable VMA; H_SVM_
        INIT_START made the SVM's unmergeable). The MMU notifier invalidates it in KVM
        first; a device page, a page under migration or one with extra references stays
        (emu/kvm/mm.py). Returns what UV_PAGE_INVAL returned (H_SUCCESS if not needed)."""
        kvm = self._kvm(lpid)
        hva = kvm.gfn_to_hva(gfn)
        if hva is None:
            return H_SUCCESS
        inval = bool(kvm.secure_guest & KVMPPC_SECURE_INIT_DONE)
        with self._call(lpid, range(gfn, gfn + 1)) as record:
            _, rc = await mm.migrate_pages(kvm, hva, self._machine.costs.copy_ns, ksm=ksm)
        if inval:
            self._check(lpid, "UV_PAGE_INVAL", [lpid, gfn], rc, record, accept)
        return rc

    async def hotplug(self, lpid: int, slot_id: int, base_gfn: int, npages: int, *,
                      accept: AcceptSpec | None = None) -> Memslot:
        """device_add of a DIMM: QEMU maps it and KVM_SET_USER_MEMORY_REGION adds it."""
        kvm = self._kvm(lpid)
        slot = kvm.new_memslot(slot_id, base_gfn, npages)
        with self._call(lpid, range(base_gfn, base_gfn + npages)) as record:
            rc = await self._machine.hv.set_memory_region(kvm, slot)
        self._check(lpid, "KVM_SET_USER_MEMORY_REGION", [slot_id, base_gfn, npages], rc,
                    record, accept)
        return slot

    async def unplug(self, lpid: int, slot_id: int, *, accept: AcceptSpec | None = None
                     ) -> int:
        """device_del: KVM_SET_USER_MEMORY_REGION removes the slot, then QEMU unmaps it."""
        kvm = self._kvm(lpid)
        kvm.touch_memslots()
        slot = next(s for s in kvm.memslots if s.id == slot_id)
        with self._call(lpid, range(slot.base_gfn, slot.base_gfn + slot.npages)) as record:
            rc = await self._machine.hv.set_memory_region(kvm, slot, delete=True)
        self._check(lpid, "KVM_SET_USER_MEMORY_REGION", [slot_id, slot.base_gfn, 0], rc,
                    record, accept)
        await kvm.munmap_memslot(slot)
        return rc

    async def set_flags(self, lpid: int, slot_id: int, flags: int, *,
                        accept: AcceptSpec | None = None) -> int:
        """KVM_SET_USER_MEMORY_REGION with the same GPA, size and address but other flags
        (KVM_MR_FLAGS_ONLY: dirty logging on or off, as QEMU does for migration)."""
        kvm = self._kvm(lpid)
        kvm.touch_memslots()
        slot = next(s for s in kvm.memslots if s.id == slot_id)
        with self._call(lpid, range(slot.base_gfn, slot.base_gfn + slot.npages)) as record:
            rc = await self._machine.hv.set_memory_region(kvm, slot, change="FLAGS_ONLY",
                                                          new_flags=flags)
        self._check(lpid, "KVM_SET_USER_MEMORY_REGION", [slot_id, slot.base_gfn, flags], rc,
                    record, accept)
        return rc

    async def move(self, lpid: int, slot_id: int, new_base: int, *,
                   accept: AcceptSpec | None = None) -> int:
        """KVM_SET_USER_MEMORY_REGION with the same address and size at another GPA
        (KVM_MR_MOVE)."""
        kvm = self._kvm(lpid)
        kvm.touch_memslots()
        slot = next(s for s in kvm.memslots if s.id == slot_id)
        gfns = range(min(slot.base_gfn, new_base), max(slot.base_gfn, new_base) + slot.npages)
        with self._call(lpid, gfns) as record:
            rc = await self._machine.hv.set_memory_region(kvm, slot, change="MOVE",
                                                          new_base=new_base)
        self._check(lpid, "KVM_SET_USER_MEMORY_REGION", [slot_id, new_base, slot.npages], rc,
                    record, accept)
        return rc

    async def destroy(self, lpid: int) -> None:
        """QEMU exits: exit_mmap of its guest memory, then kvm_destroy_vm (kvm/hv.py). The
        VM's vCPUs must be done."""
        kvm = self._kvm(lpid)
        with self._call(lpid, ALL_GFNS):
            await self._machine.hv.kvm_destroy_vm(kvm)
        memory = self._machine.guest_memory(lpid)
        memory.touch_all()
        memory.expected.clear()
        memory.insecure.clear()
        memory.shared.clear()

    async def svm_off(self, lpid: int, *, accept: AcceptSpec | None = None) -> int:
        """Machine reset: KVM_PPC_SVM_OFF (0 or -EBUSY / -EINVAL)."""
        kvm = self._kvm(lpid)
        with self._call(lpid, ALL_GFNS) as record:
            rc = await self._machine.hv.kvmhv_svm_off(kvm)
        if rc == 0:
            memory = self._machine.guest_memory(lpid)
            memory.touch_all()
            memory.expected.clear()  # contents now undefined
            memory.insecure.clear()
            memory.shared.clear()
        self._check(lpid, "KVM_PPC_SVM_OFF", [lpid], rc, record, accept)
        return rc
