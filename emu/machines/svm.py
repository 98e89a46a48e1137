"""The POWER secure-VM machine: the POWER machine (``power.py``) with the memory controller,
the Ultravisor and the uvmem device, and VMs that may become secure. Scenarios and examples
build one of these on the engine's Machine; ``page_states`` asks a GFN's state from each
viewpoint (the HV's books, the Ultravisor's, the ground truth).

Invariants checked before every step (cheap ones; the per-hcall checks live in
``kvm/hv.py``, the per-access ones in the guest and host handles):
- a GFN is never device-backed on the HV side while the Ultravisor maps it as shared
  (incrementally: while the SVMs, their shared GFNs, the memslots and the VMAs are as the
  last pass left them, only the host PTEs of the shared GFNs are read again);
- no vCPU of a VM is in the guest while KVM_PPC_SVM_OFF tears that VM down.
On every access:
- a device page's private data (``kvmppc_uvmem_page_pvt``) is not used after
  ``page_free`` freed it (``use-after-free``);
- every return code a guest program or QEMU gets is one the scenario accepts
  (``return-code``; ``accept=`` declares them, see ``actors/returncodes.py``).
And once a schedule ends:
- a GFN is UVMEM exactly when a device page with its bitmap bit set and pvt.gpa equal to
  that GFN stands for it, and its host PTE is the device-private entry of that very page;
  a GFN whose word is not UVMEM has no device entry in its host PTE; no device page is
  left standing for nothing;
- no memslot has more than one uvmem slot, and no uvmem slot outlives its memslot.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Mapping
from typing import Any, ClassVar
from zlib import crc32

import attrs

from ..actors.memctl import MemoryController
from ..actors.returncodes import AcceptSpec
from ..actors.svm_guest import SvmGuest
from ..actors.ultravisor import SvmState, Ultravisor
from ..actors.vcpu import VCpu
from ..hw.costs import UNIT, CostModel
from ..kvm.hv import uvmem_slot_counts
from ..kvm.hvcall import KVMPPC_GFN_PFN_MASK, KVMPPC_GFN_UVMEM_PFN, PAGE_SHIFT
from ..kvm.lifecycle import declare_tables, true_gfn_state
from ..kvm.uvmem import QUIRKS, hv_gfn_state, uvmem_slot
from ..kvm.vm import KVM, NR_CPUS
from ..sim import Machine, Param
from ..sim.violations import About
from .power import PowerMachine
from .uvmem_device import CheckedUvmemDevice

DESIGNS = {
    "gfn-states": "651a631011: the HV tracks Normal / Secure (paged in or out) / Shared per "
                  "GFN and migrates the remaining Normal GFNs at INIT_DONE without a copy",
    "two-state": "seed 004's review: the HV tracks only secure / not secure; at INIT_DONE it "
                 "pages every other GFN in with UV_PAGE_IN and the UV refuses shared ones",
}

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

_CHUNK = 1 << 14
"""GFNs the end-of-schedule check compares at once."""


_TOP = 7 if sys.byteorder == "little" else 0
"""The byte of a native 8-byte word that holds its top bit."""


class _Progression:
    """Compares an array of 8-byte words with an arithmetic progression at C speed: the
    words ``first + j * step`` (j < n, each in 0..2**64-1) laid end to end are the integer
    ``first * R + step * T`` with ``R = sum(2**(64j))`` and ``T = sum(j * 2**(64j))``."""

    _cache: ClassVar[dict[int, _Progression]] = {}

    def __init__(self, n: int) -> None:
        self.n = n
        self.r = int.from_bytes(array("Q", [1]).tobytes() * n, sys.byteorder)
        self.t = int.from_bytes(array("Q", range(n)).tobytes(), sys.byteorder)

    @classmethod
    def of(cls, n: int) -> _Progression:
        run = cls._cache.get(n)
        if run is None:
            run = cls._cache[n] = cls(n)
        return run

    def matches(self, words: bytes, first: int, step: int) -> bool:
        """Are the ``n`` native words in ``words`` first, first + step, ...? (Each term must
        stay within 0..2**64-1: the caller checks the range.)"""
        last = first + step * (self.n - 1)
        if not (0 <= first < 1 << 64 and 0 <= last < 1 << 64):
            return False
        return int.from_bytes(words, sys.byteorder) == first * self.r + step * self.t


@attrs.frozen
class PageStates:
    """A GFN's state from each viewpoint (``SvmMachine.page_states``): they differ while an
    operation is in flight, and a bug is where they disagree at rest."""

    hv: str
    """The HV's books: its ``pfns[]`` word (``kvm.uvmem.hv_gfn_state``)."""
    firmware: str
    """The Ultravisor's books: what it has shared, holds or paged out
    (``Ultravisor.uv_gfn_state``)."""
    truth: str
    """Where the data is: shared by the UV, or behind a device page or a UV frame, else in
    normal memory (``kvm.lifecycle.true_gfn_state``)."""


class _SharedSeen:
    """What a pass of "never device-backed and shared" that found nothing read: the UV's
    SVMs with a copy of each one's shared GFNs, the VMs with their memslot and VMA
    generations, and the host PTE (array, index) each shared GFN resolved to."""

    __slots__ = ("kvms", "layouts", "ptes", "shared", "svms")

    def __init__(self, svms: dict[int, SvmState], kvms: dict[int, KVM]) -> None:
        self.svms, self.kvms = dict(svms), dict(kvms)
        self.shared: list[tuple[SvmState, dict[int, int]]] = []
        self.layouts: list[tuple[KVM, int, int]] = []
        self.ptes: list[tuple[array, int]] = []


class SvmMachine(PowerMachine):
    """A POWER machine with the Ultravisor, its memory controller and the uvmem device:
    VMs that may become secure, and guests that make ucalls (``SvmGuest``)."""

    def __init__(self, m: Machine, *, design: str = "gfn-states", uv: str = "faithful",
                 quirks: tuple[str, ...] = (),
                 esm_pagein: str = "necessary", secure_pages: int = 1 << 16,
                 costs: CostModel = UNIT, pcpus: int = 0,
                 accept: Mapping[str, AcceptSpec] | None = None) -> None:
        super().__init__(m, costs=costs, pcpus=pcpus, accept=accept)
        self.design = design
        self.quirks = tuple(q for q in quirks if q in QUIRKS)
        self.esm_pagein = esm_pagein
        self.memctl = MemoryController(m, costs.copy_ns)
        self.uv = Ultravisor(m, self.memory, self.memctl, design, costs.hcall_ns, uv)
        self.uv.hv = self.hv
        self.dev = CheckedUvmemDevice(m, secure_pages)
        self._shared_seen: _SharedSeen | None = None
        declare_tables(m)
        m.invariant("never device-backed and shared", self._shared_not_device)
        m.invariant("no vCPU in the guest during SVM_OFF", self._teardown_alone)
        m.final("device pages match the GFN states", self._device_pages_match)
        m.final("one uvmem slot per memslot", self._uvmem_slots_counted)
        m.state_fingerprint(self._fingerprint)

    def _fingerprint(self) -> tuple:
        """The HV's secure-memory state, for liveness (``Machine.state_fingerprint``): the
        device pages in use, and each VM's life-cycle flags and GFN state words, as
        checksums (small, and hashed the same in every process)."""
        return crc32(self.dev.bitmap), tuple(
            (k.secure_guest, tuple(crc32(s.pfns) for s in k.uvmem_pfns))
            for k in self.hv.kvms.values())

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

    def guest(self, vcpu: VCpu) -> SvmGuest:
        return SvmGuest(vcpu)

    def page_states(self, lpid: int, gfn: int) -> PageStates:
        """A GFN's state ("Normal", "Secure" or "Shared") from each viewpoint: the HV's
        books, the Ultravisor's books, and where its data really is."""
        kvm = self.hv.kvms[lpid]
        return PageStates(hv=hv_gfn_state(kvm, gfn), firmware=self.uv.uv_gfn_state(lpid, gfn),
                          truth=true_gfn_state(kvm, gfn))

    # ------------------------------------------------------------------ invariants
    def _shared_not_device(self) -> str | None:
        """Incremental: if the last pass found nothing and what it read is unchanged
        (``_SharedSeen``) but for the PTEs, only those are read again; a PTE gone negative,
        or anything else changed, and the full pass runs (and names the first bad GFN)."""
        seen = self._shared_seen
        if seen is None or self.uv.svms != seen.svms or self.hv.kvms != seen.kvms:
            return self._shared_pass()
        for svm, shared in seen.shared:  # (dicts and ints compared: this runs at every step)
            if svm.shared != shared:
                return self._shared_pass()
        for kvm, slots, vmas in seen.layouts:
            if kvm.memslots_generation != slots or kvm.mm.generation != vmas:
                return self._shared_pass()
        for pte, i in seen.ptes:
            if pte[i] < 0:
                return self._shared_pass()
        return None

    def _shared_pass(self) -> str | None:
        """The full pass; when it finds nothing, it keeps what it read (``_SharedSeen``)."""
        self._shared_seen = None
        seen = _SharedSeen(self.uv.svms, self.hv.kvms)
        for lpid, svm in self.uv.svms.items():
            kvm = self.hv.kvms[lpid]
            seen.shared.append((svm, dict(svm.shared)))
            if svm.shared:
                seen.layouts.append((kvm, kvm.memslots_generation, kvm.mm.generation))
            for gfn in svm.shared:
                hva = kvm.gfn_to_hva(gfn)
                vma = kvm.mm.vma_lookup(hva) if hva is not None else None
                if vma is None:
                    continue
                pte, i = vma.pte, vma.index(hva)
                if pte[i] < 0:
                    return (f"GFN {gfn:#x} of VM {lpid} is shared with the HV but backed by a "
                            "device (secure) page")
                seen.ptes.append((pte, i))
        self._shared_seen = seen
        return None

    def _device_pages_match(self) -> str | None:
        """Each GFN's word against the device page and the host PTE: a UVMEM word names a
        live device page whose pvt stands for that GFN and whose device-private entry is
        the GFN's host PTE; any other word has no device entry there. Every device page in
        use is named by exactly one word.

        Checked in chunks of ``_CHUNK`` GFNs with array comparisons: a chunk that is one run
        of device pages (what ESM and INIT_DONE leave) or has no device page at all passes
        at C speed; any other chunk is checked GFN by GFN, so the first GFN reported is the
        same as a GFN-by-GFN walk would report."""
        dev, words = self.dev, 0
        for lpid, kvm in self.hv.kvms.items():
            for slot in kvm.memslots:
                p = uvmem_slot(kvm, slot.base_gfn)  # the slot lookups find first
                vma = kvm.mm.vma_lookup(slot.userspace_addr)
                pte, v0 = (vma.pte, vma.index(slot.userspace_addr)) if vma else ((), 0)
                base, npages = slot.base_gfn, slot.npages
                for i in range(0, npages, _CHUNK):
                    n = min(_CHUNK, npages - i)
                    passed = self._chunk_passes(lpid, p, pte, v0 + i, base + i, n)
                    if passed is None:
                        problem, passed = self._chunk_by_gfn(lpid, p, pte, v0, base, i, n)
                        if problem:
                            return problem
                    words += passed
        if dev.in_use() != words:
            return f"{dev.in_use()} device pages in use for {words} UVMEM GFNs (leaked)"
        return None

    def _chunk_passes(self, lpid: int, p: Any, pte: Any, v: int, gfn: int,
                      n: int) -> int | None:
        """The UVMEM words among GFNs ``gfn``..``gfn + n`` (host PTEs from index ``v``) if
        the chunk passes as a whole; None: check it GFN by GFN. A run is compared as one
        big integer per array (``_Progression``), a chunk without device pages by the top
        byte of every word."""
        if v + n > len(pte):
            return None
        ptes = pte[v:v + n].tobytes()
        if p is None:  # no words: no device entry (negative PTE) allowed
            return 0 if ptes[_TOP::8].isascii() else None
        j = gfn - p.base_pfn
        if j < 0 or j + n > p.nr_pfns:
            return None
        chunk = p.pfns[j:j + n].tobytes()
        w0 = p.pfns[j]
        if not w0 & KVMPPC_GFN_UVMEM_PFN:  # no device page in the chunk at all?
            return 0 if chunk[_TOP::8].isascii() and ptes[_TOP::8].isascii() else None
        d = w0 & KVMPPC_GFN_PFN_MASK  # one run: device pages d, d + 1, ... for gfn, gfn + 1
        dev = self.dev
        b = d - 1
        if not (0 <= b and b + n <= dev.npages and d + n - 1 <= KVMPPC_GFN_PFN_MASK
                and (gfn + n) << PAGE_SHIFT < 1 << 64):
            return None
        run = _Progression.of(n)
        if not (run.matches(chunk, w0, 1) and run.matches(ptes, (1 << 64) - d, -1)
                and dev.bitmap.find(0, b, b + n) < 0
                and run.matches(dev.pvt_gpa[b:b + n].tobytes(), gfn << PAGE_SHIFT,
                                1 << PAGE_SHIFT)):
            return None
        lpids = dev.pvt_lpid[b:b + n]
        try:
            if lpids != array(lpids.typecode, [lpid]) * n:
                return None
        except OverflowError:
            return None
        return n

    def _chunk_by_gfn(self, lpid: int, p: Any, pte: Any, v0: int, base: int, i0: int,
                      n: int) -> tuple[str | None, int]:
        """The chunk checked one GFN at a time: (the problem, UVMEM words)."""
        dev, words = self.dev, 0
        gpa, lpids = dev.pvt_gpa, dev.pvt_lpid
        pfns, first, stop = (p.pfns, p.base_pfn, p.base_pfn + p.nr_pfns) if p else ((), 0, 0)
        for i in range(i0, i0 + n):
            gfn = base + i
            word = pfns[gfn - first] if first <= gfn < stop else 0  # (UvmemSlot.contains)
            pte_i = pte[v0 + i] if v0 + i < len(pte) else 0
            if not word & KVMPPC_GFN_UVMEM_PFN:
                if pte_i < 0:
                    return (f"GFN {gfn:#x} of VM {lpid} has the word {word:#x} (not "
                            f"UVMEM) but its host PTE is device page {-pte_i}"), words
                continue
            words += 1
            dpfn = word & KVMPPC_GFN_PFN_MASK
            bit = dpfn - 1
            if not (0 <= bit < dev.npages and dev.bitmap[bit]
                    and gpa.get(bit) >> PAGE_SHIFT == gfn and lpids.get(bit) == lpid):
                return f"GFN {gfn:#x} of VM {lpid} is UVMEM but device page " \
                       f"{dpfn} does not stand for it", words
            if pte_i != -dpfn:
                got = f"device page {-pte_i}" if pte_i < 0 else \
                    f"normal pfn {pte_i}" if pte_i else "not populated"
                return (f"GFN {gfn:#x} of VM {lpid} is UVMEM (device page {dpfn}) "
                        f"but its host PTE is {got}"), words
        return None, words

    def _uvmem_slots_counted(self) -> str | None:
        for kvm in self.hv.kvms.values():
            problem = uvmem_slot_counts(kvm)
            if problem:
                return problem
        return None

    def _teardown_alone(self) -> str | None:
        if not self.hv.teardown:  # the common case: no VM is torn down
            return None
        for vcpu in self.vcpus:
            if vcpu.in_guest and self.hv.teardown.get(vcpu.kvm.lpid):
                # the guard SVM_OFF lacks: mmu_ready against vcpus_running
                return About(f"{vcpu.name} runs in the guest while SVM_OFF tears its VM "
                             "down", vcpu.kvm.object("mmu"), vcpu.kvm.object("vcpus_running"))
        return None
