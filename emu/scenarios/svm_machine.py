"""The POWER secure-VM machine: memory, memory controller, Ultravisor, the L0 HV, VMs with
their vCPUs, and QEMU. Scenarios and examples build one of these on the engine's Machine.

Invariants checked before every step (cheap ones; the per-hcall checks live in
``kvm/hv.py``, the per-access ones in the guest and host handles):
- a GFN is never device-backed on the HV side while the Ultravisor maps it as shared;
- no vCPU of a VM is in the guest while KVM_PPC_SVM_OFF tears that VM down.
On every access:
- a device page's private data (``kvmppc_uvmem_page_pvt``) is not used after
  ``page_free`` freed it (``use-after-free``);
- every return code a guest program or QEMU gets is one the scenario accepts
  (``return-code``; ``accept=`` declares them, see ``ReturnCodes`` in ``actors/vcpu.py``).
And once a schedule ends:
- a GFN is UVMEM exactly when a device page with its bitmap bit set and pvt.gpa equal to
  that GFN stands for it, and its host PTE is the device-private entry of that very page;
  a GFN whose word is not UVMEM has no device entry in its host PTE; no device page is
  left standing for nothing;
- no memslot has more than one uvmem slot, and no uvmem slot outlives its memslot.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ..actors.host import Host
from ..actors.memctl import MemoryController
from ..actors.pcpu import PCpu
from ..actors.ultravisor import Ultravisor
from ..actors.vcpu import AcceptSpec, GuestMemory, GuestProgram, ReturnCodes, VCpu
from ..hw.costs import UNIT, CostModel
from ..hw.memory import PhysicalMemory
from ..kvm.hv import Hypervisor, uvmem_slot_counts
from ..kvm.hvcall import KVMPPC_GFN_PFN_MASK, KVMPPC_GFN_UVMEM_PFN, PAGE_SHIFT
from ..kvm.uvmem import PVT_VALID, QUIRKS, UvmemDevice, uvmem_slot
from ..kvm.vm import KVM
from ..sim import Machine, Param
from ..sim.channel import Completion

DESIGNS = {
    "gfn-states": "651a631011: the HV tracks Normal / Secure (paged in or out) / Shared per "
                  "GFN and migrates the remaining Normal GFNs at INIT_DONE without a copy",
    "two-state": "seed 004's review: the HV tracks only secure / not secure; at INIT_DONE it "
                 "pages every other GFN in with UV_PAGE_IN and the UV refuses shared ones",
}

NR_CPUS = 2048
"""CONFIG_NR_CPUS of a ppc64 book3s kernel (the Kconfig default), and so KVM_MAX_VCPUS."""
KVM_USER_MEM_SLOTS = 512
"""arch/powerpc/include/asm/kvm_host.h."""
MAX_MEM_MB = 1 << 32
"""4 PiB: the 52-bit guest real address space of a radix guest."""

COMMON_PARAMS = {
    "vcpus": Param(2, "vCPUs of the SVM", minimum=1, maximum=NR_CPUS),
    "pcpus": Param(0, "pCPUs the vCPUs run on (0: one each)", minimum=0, maximum=NR_CPUS),
    "mem_mb": Param(2, "guest memory in MiB (16 GFNs of 64 KiB per MiB)", minimum=1,
                    maximum=MAX_MEM_MB),
    "design": Param("gfn-states", "HV GFN tracking design", choices=tuple(DESIGNS)),
    "uv": Param("faithful", "the Ultravisor: faithful (serialises its work on one GFN) or "
                "hostile (does not: what the HV must survive; the SVM's integrity is then "
                "not checked)", choices=("faithful", "hostile")),
}

HostProgram = Callable[[Host], Awaitable[None]]


class _CheckedPvt:
    """One array of ``kvmppc_uvmem_page_pvt`` fields, indexed by device pfn - 1, that
    reports a use after ``page_free``: a pvt is live from ``kvmppc_uvmem_get_page`` (the
    bitmap bit set) until ``page_free`` clears both the bit and PVT_VALID. Slices (the
    INIT_DONE runs, the end-of-schedule checks) are not checked."""

    def __init__(self, dev: CheckedUvmemDevice, field: str, data: Any) -> None:
        self._dev, self._field, self._data = dev, field, data

    def _live(self, i: int, what: str) -> None:
        dev = self._dev
        if not (dev.bitmap[i] or dev.raw_flags[i] & PVT_VALID):
            dev.m.fail("use-after-free", f"{what} pvt->{self._field} of device page {i + 1}, "
                       "freed by kvmppc_uvmem_page_free")

    def __getitem__(self, i):
        if isinstance(i, int):
            self._live(i, "read of")
        return self._data[i]

    def __setitem__(self, i, value) -> None:
        if isinstance(i, int):
            self._live(i, "write to")
        self._data[i] = value

    def __len__(self) -> int:
        return len(self._data)


class CheckedUvmemDevice(UvmemDevice):
    """The uvmem device with its pvt arrays checked for use after free."""

    def __init__(self, m: Machine, npages: int) -> None:
        super().__init__(npages)
        self.m = m
        self.raw_flags = self.pvt_flags
        self.pvt_gpa = _CheckedPvt(self, "gpa", self.pvt_gpa)  # type: ignore[assignment]
        self.pvt_lpid = _CheckedPvt(self, "kvm", self.pvt_lpid)  # type: ignore[assignment]
        self.pvt_flags = _CheckedPvt(self, "flags", self.raw_flags)  # type: ignore[assignment]


class SvmMachine:
    def __init__(self, m: Machine, *, design: str = "gfn-states", uv: str = "faithful",
                 quirks: tuple[str, ...] = (),
                 esm_pagein: str = "necessary", secure_pages: int = 1 << 16,
                 costs: CostModel = UNIT, pcpus: int = 0,
                 accept: Mapping[str, AcceptSpec] | None = None) -> None:
        """``accept``: the return codes the scenario accepts, call by call (``ReturnCodes``);
        None, the default of a hand-built machine: its programs check their own codes."""
        self.m = m
        self.codes = ReturnCodes(m, accept)
        self.design = design
        self.quirks = tuple(q for q in quirks if q in QUIRKS)
        self.esm_pagein = esm_pagein
        self.memory = PhysicalMemory()
        self.costs = costs
        self.memctl = MemoryController(m, costs.copy_ns)
        self.uv = Ultravisor(m, self.memory, self.memctl, design, costs.hcall_ns, uv)
        self.hv = Hypervisor(m)
        self.uv.hv = self.hv
        self.dev = CheckedUvmemDevice(m, secure_pages)
        self.vcpus: list[VCpu] = []
        self.pcpus: list[PCpu] = []
        self._npcpus = pcpus
        self._guest_memory: dict[int, GuestMemory] = {}
        m.invariant("never device-backed and shared", self._shared_not_device)
        m.invariant("no vCPU in the guest during SVM_OFF", self._teardown_alone)
        m.final("device pages match the GFN states", self._device_pages_match)
        m.final("one uvmem slot per memslot", self._uvmem_slots_counted)

    def vm(self, lpid: int = 1, slots: tuple[tuple[int, int], ...] = ((0, 32),),
           prealloc: bool = False) -> KVM:
        """A VM with memslots (base GFN, pages), ids 0, 1, ... in order; ``prealloc``:
        QEMU populates all of its memory before it boots."""
        kvm = self.hv.add(KVM(self.m, lpid, self.memory, self.dev, self.uv,
                              quirks=self.quirks, design=self.design,
                              migrate_ns=self.costs.migrate_ns))
        for slot_id, (base, npages) in enumerate(slots):
            kvm.add_memslot(slot_id, base, npages, prealloc)
        return kvm

    def vcpu(self, kvm: KVM, program: GuestProgram, start: Completion | None = None) -> VCpu:
        """A vCPU running ``program`` on the next pCPU (round robin over ``pcpus``; a new
        one each if 0); with ``start`` it enters the guest only then."""
        n = len(self.vcpus)
        if not self._npcpus or n < self._npcpus:
            self.pcpus.append(PCpu(self.m, n))
        pcpu = self.pcpus[n % len(self.pcpus)]
        vcpu = VCpu(self, kvm, sum(v.kvm is kvm for v in self.vcpus), program, pcpu, start)
        self.vcpus.append(vcpu)
        self.m.spawn(vcpu.name, vcpu.run, group=f"vm{kvm.lpid}")
        return vcpu

    def host(self, program: HostProgram, name: str = "qemu") -> None:
        host = Host(self)

        async def run() -> None:
            await program(host)

        self.m.spawn(name, run, group="host")

    def guest_memory(self, lpid: int) -> GuestMemory:
        return self._guest_memory.setdefault(lpid, GuestMemory())

    # ------------------------------------------------------------------ invariants
    def _shared_not_device(self) -> str | None:
        for lpid, svm in self.uv.svms.items():
            kvm = self.hv.kvms[lpid]
            for gfn in svm.shared:
                hva = kvm.gfn_to_hva(gfn)
                if hva is not None and kvm.mm.get_pte(hva) < 0:
                    return (f"GFN {gfn:#x} of VM {lpid} is shared with the HV but backed by a "
                            "device (secure) page")
        return None

    def _device_pages_match(self) -> str | None:
        """Each GFN's word against the device page and the host PTE: a UVMEM word names a
        live device page whose pvt stands for that GFN and whose device-private entry is
        the GFN's host PTE; any other word has no device entry there. Every device page in
        use is named by exactly one word."""
        dev, words = self.dev, 0
        gpa, lpids = dev.pvt_gpa._data, dev.pvt_lpid._data
        for lpid, kvm in self.hv.kvms.items():
            for slot in kvm.memslots:
                p = uvmem_slot(kvm, slot.base_gfn)  # the slot lookups find first
                vma = kvm.mm.vma_lookup(slot.userspace_addr)
                ptes = vma.pte[vma.index(slot.userspace_addr):] if vma else ()
                for i in range(slot.npages):
                    gfn = slot.base_gfn + i
                    word = p.pfns[gfn - p.base_pfn] if p and p.contains(gfn) else 0
                    pte = ptes[i] if i < len(ptes) else 0
                    if not word & KVMPPC_GFN_UVMEM_PFN:
                        if pte < 0:
                            return (f"GFN {gfn:#x} of VM {lpid} has the word {word:#x} (not "
                                    f"UVMEM) but its host PTE is device page {-pte}")
                        continue
                    words += 1
                    dpfn = word & KVMPPC_GFN_PFN_MASK
                    bit = dpfn - 1
                    if not (0 <= bit < dev.npages and dev.bitmap[bit]
                            and gpa[bit] >> PAGE_SHIFT == gfn and lpids[bit] == lpid):
                        return f"GFN {gfn:#x} of VM {lpid} is UVMEM but device page " \
                               f"{dpfn} does not stand for it"
                    if pte != -dpfn:
                        got = f"device page {-pte}" if pte < 0 else \
                            f"normal pfn {pte}" if pte else "not populated"
                        return (f"GFN {gfn:#x} of VM {lpid} is UVMEM (device page {dpfn}) "
                                f"but its host PTE is {got}")
        if dev.in_use() != words:
            return f"{dev.in_use()} device pages in use for {words} UVMEM GFNs (leaked)"
        return None

    def _uvmem_slots_counted(self) -> str | None:
        for kvm in self.hv.kvms.values():
            problem = uvmem_slot_counts(kvm)
            if problem:
                return problem
        return None

    def _teardown_alone(self) -> str | None:
        if not any(self.hv.teardown.values()):  # the common case: no VM is torn down
            return None
        for vcpu in self.vcpus:
            if vcpu.in_guest and self.hv.teardown.get(vcpu.kvm.lpid):
                return f"{vcpu.name} runs in the guest while SVM_OFF tears its VM down"
        return None
