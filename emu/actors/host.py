"""The host side of a VM: QEMU touching guest memory, hot-plugging memory, resetting.

A host program is an ``async def program(h: Host)``. A host access to a page the HV has
given to the Ultravisor faults, and the fault handler (``migrate_to_ram``) pages it out:
that is the window the share and page-out races live in. What QEMU reads must never be an
SVM's plaintext, and a fault must return with no lock held.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..kvm.hvcall import H_PARAMETER, H_SUCCESS
from ..kvm.uvmem import gfn_state, vm_state

if TYPE_CHECKING:
    from ..kvm.vm import KVM, Memslot
    from ..scenarios.svm_machine import SvmMachine


class Host:
    def __init__(self, machine: SvmMachine) -> None:
        self._machine = machine
        self.m = machine.m

    def _kvm(self, lpid: int) -> KVM:
        return self._machine.hv.kvms[lpid]

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

    async def read(self, lpid: int, gfn: int) -> int | None:
        """QEMU reads a guest page (virtio, migration, a debugger)."""
        frame = await self._page(lpid, gfn, "reads")
        if frame is None:
            return None
        if frame.secret and not frame.encrypted:
            self.m.fail("confidentiality", f"QEMU reads the plaintext of secure GFN {gfn:#x}")
        return frame.value

    async def write(self, lpid: int, gfn: int, value: int) -> int:
        frame = await self._page(lpid, gfn, "writes")
        if frame is None:
            return H_PARAMETER
        frame.value, frame.secret, frame.encrypted, frame.zero = value, False, False, False
        return H_SUCCESS

    async def reclaim(self, lpid: int, gfn: int) -> None:
        """The host reclaims (or KSM scans, or migrates) a regular page of the guest: the MMU
        notifier invalidates it in KVM (kvm_unmap_radix)."""
        kvm = self._kvm(lpid)
        hva = kvm.gfn_to_hva(gfn)
        if hva is not None and kvm.mm.get_pte(hva) > 0:  # device pages are not reclaimed
            await self._machine.hv.kvm_unmap_radix(kvm, gfn)

    async def hotplug(self, lpid: int, slot_id: int, base_gfn: int, npages: int) -> Memslot:
        """device_add of a DIMM: QEMU maps it and KVM_SET_USER_MEMORY_REGION adds it."""
        kvm = self._kvm(lpid)
        slot = kvm.new_memslot(slot_id, base_gfn, npages)
        await self._machine.hv.set_memory_region(kvm, slot)
        return slot

    async def unplug(self, lpid: int, slot_id: int) -> None:
        """device_del: KVM_SET_USER_MEMORY_REGION removes the slot, then QEMU unmaps it."""
        kvm = self._kvm(lpid)
        slot = next(s for s in kvm.memslots if s.id == slot_id)
        await self._machine.hv.set_memory_region(kvm, slot, delete=True)
        kvm.munmap_memslot(slot)

    async def svm_off(self, lpid: int) -> int:
        """Machine reset: KVM_PPC_SVM_OFF (0 or -EBUSY / -EINVAL)."""
        kvm = self._kvm(lpid)
        rc = await self._machine.hv.kvmhv_svm_off(kvm)
        if rc == 0:
            memory = self._machine.guest_memory(lpid)
            memory.expected.clear()  # contents now undefined
            memory.insecure.clear()
            memory.shared.clear()
        return rc

    def gfn_state(self, lpid: int, gfn: int) -> str:
        """The HV's view of a GFN: Secure, Shared or Normal."""
        return gfn_state(self._kvm(lpid), gfn)

    def vm_state(self, lpid: int) -> str:
        return vm_state(self._kvm(lpid))
