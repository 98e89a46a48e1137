"""QEMU's address space on the host: VMAs and the host page table.

Each VMA keeps one word per 64 KiB page of its range (an ``array('q')``, 8 bytes a page):
0 = not populated (a zero page on first touch), ``pfn > 0`` = a normal page frame,
``-dpfn < 0`` = a ZONE_DEVICE private page standing for a secure page (touching it from the
host faults, and the fault handler pages it out). ``mmap_lock`` guards the VMA list and the
migrations that rewrite these words. A page under migration also has a migration entry
(``migrating``): its word still names the source page, and a host access waits for the
migration to finish (the core mm in emu/kvm/mm.py keeps both). The access name of a PTE
(``sim.accesses``) is ``hostpte:<hva>``.
"""

from __future__ import annotations

from array import array
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from ..sim import accesses
from ..sim.locks import RWSem
from .memory import PAGE_SHIFT, PAGE_SIZE


@attrs.define(eq=False)
class VMA:
    start: int
    end: int
    pte: array
    mergeable: bool = True
    """KSM may merge its pages (H_SVM_INIT_START unmerges a secure VM's slots)."""

    @classmethod
    def anonymous(cls, start: int, npages: int) -> VMA:
        return cls(start, start + npages * PAGE_SIZE, array("q", [0]) * npages)  # no 2nd copy

    def index(self, hva: int) -> int:
        return (hva - self.start) >> PAGE_SHIFT


def touch_pte(hva: int, write: bool = False) -> None:
    """The step reads (or writes) the PTE of the page at ``hva``, its migration entry
    included; nothing when accesses are not recorded."""
    if accesses.current.on:
        accesses.current.touch(f"hostpte:{hva & ~(PAGE_SIZE - 1):#x}", write)


def touch_ptes(vma: VMA, first: int, end: int, write: bool) -> None:
    """The step reads (or writes) the PTEs of pages [first, end) of ``vma`` (by index;
    only called when accesses are recorded: ``accesses.current.on``)."""
    for i in range(first, end):
        accesses.current.touch(f"hostpte:{vma.start + (i << PAGE_SHIFT):#x}", write)


class HostMM:
    def __init__(self, mmap_lock: RWSem) -> None:
        self.mmap_lock = mmap_lock
        self.vmas: list[VMA] = []
        self.generation = 0
        """Bumped by every change of ``vmas`` (the kernel's vmacache_seqnum): whoever caches
        a lookup knows when to redo it."""
        self.pte_version = 0
        """Bumped by every PTE change made through ``set_pte`` (an invariant's fingerprint:
        whoever writes ``VMA.pte`` directly bumps it too)."""
        self.migrating: dict[int, Any] = {}
        """Host virtual address -> the completion its migration entry waits on."""
        self.notifiers: list[Callable[[int, int], Awaitable[int]]] = []
        """MMU notifiers (invalidate_range_start), in registration order: each is told the
        host virtual range [start, end) is about to change, and returns 0 or the first
        error code it met (the kernel ignores it; the model lets a host program check it)."""

    def mmap(self, vma: VMA) -> VMA:
        self.vmas.append(vma)
        self.vmas.sort(key=lambda v: v.start)
        self.generation += 1
        return vma

    def munmap(self, vma: VMA) -> None:
        self.vmas.remove(vma)
        self.generation += 1

    def find_vma_intersection(self, start: int, end: int) -> VMA | None:
        for vma in self.vmas:
            if vma.start < end and start < vma.end:
                return vma
        return None

    def vma_lookup(self, addr: int) -> VMA | None:
        for vma in self.vmas:  # (find_vma_intersection(addr, addr + 1), inlined)
            if vma.start <= addr < vma.end:
                return vma
        return None

    def get_pte(self, hva: int) -> int:
        vma = self.vma_lookup(hva)
        touch_pte(hva)
        return vma.pte[(hva - vma.start) >> PAGE_SHIFT] if vma else 0

    def set_pte(self, hva: int, value: int) -> None:
        vma = self.vma_lookup(hva)
        vma.pte[vma.index(hva)] = value
        self.pte_version += 1
        touch_pte(hva, True)
