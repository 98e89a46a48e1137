"""arm64 TLBs: one per CPU, caching the leaves its walks found, and the broadcast TLBI
instructions that remove them.

Each CPU's TLB holds two regimes: stage-2 translations (IPA -> PA) tagged by VMID (the host
is VMID 0, each guest its own), and the EL2 stage-1 regime (the hypervisor's own VA -> PA).
An entry is the leaf descriptor as the walk found it, at its level, keyed by the input
address >> that level's granule shift, so a block is one entry. A lookup returns a cached
entry whatever the table now says: that is the hazard, a stale entry survives until a TLBI
removes it. Only valid leaves are cached (an invalid descriptor faults and is not kept).

| instruction     | removes, on every CPU (the IS forms broadcast)             |
|-----------------|------------------------------------------------------------|
| ipas2e1is       | stage-2 entries of one VMID covering one IPA (any level)   |
| vmalls12e1is    | every stage-2 entry of one VMID                            |
| vae2is, vale2is | EL2 entries covering one VA (the TTL/last-level hint ignored) |

The level hint of ``__tlbi_level`` is taken as "any level" (an entry of another size is
removed too: the least-surprising reading, never a stale entry left by a wrong hint).
``version`` is bumped by every fill and invalidation (the key of invariants reading TLBs).
Accesses (``sim.accesses``): a CPU's stage-2 entries of one VMID are one object,
``tlb:cpu<n>:vmid<v>``, its EL2 entries another, ``tlb:cpu<n>:el2``; a lookup reads it, a
fill and a TLBI (on every CPU) write it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ..sim import accesses
from .arm64_stage2 import MIN_BLOCK_LEVEL, TableMemory, granule_shift, walk, walk_stepwise

_LEVELS = tuple(range(3, MIN_BLOCK_LEVEL - 1, -1))
"""Leaf levels, smallest first (a lookup probes each)."""
_SHIFTS = tuple((level, granule_shift(level)) for level in _LEVELS)


class Arm64Tlbs:
    """Every CPU's TLB."""

    __slots__ = ("el2", "s2", "version")

    def __init__(self, ncpus: int) -> None:
        self.s2: list[dict[tuple[int, int, int], int]] = [{} for _ in range(ncpus)]
        """Per CPU: (vmid, level, ipa >> granule_shift(level)) -> leaf descriptor."""
        self.el2: list[dict[tuple[int, int], int]] = [{} for _ in range(ncpus)]
        """Per CPU: (level, va >> granule_shift(level)) -> leaf descriptor."""
        self.version = 0

    # stage-2
    def lookup_s2(self, cpu: int, vmid: int, ipa: int) -> tuple[int, int] | None:
        """(descriptor, level) cached for ``ipa`` on ``cpu``, or None (a miss)."""
        if accesses.current.on:
            accesses.current.touch(f"tlb:cpu{cpu}:vmid{vmid}")
        tlb = self.s2[cpu]
        for level, shift in _SHIFTS:
            desc = tlb.get((vmid, level, ipa >> shift))
            if desc is not None:
                return desc, level
        return None

    def fill_s2(self, cpu: int, vmid: int, ipa: int, desc: int, level: int) -> None:
        self.s2[cpu][(vmid, level, ipa >> granule_shift(level))] = desc
        self.version += 1
        if accesses.current.on:
            accesses.current.touch(f"tlb:cpu{cpu}:vmid{vmid}", True)

    def _touch_all(self, vmid: int | None) -> None:
        """A broadcast TLBI writes every CPU's entries of ``vmid`` (None: EL2's)."""
        for cpu in range(len(self.s2)):
            accesses.current.touch(f"tlb:cpu{cpu}:" + ("el2" if vmid is None else f"vmid{vmid}"),
                                   True)

    def tlbi_ipas2e1is(self, vmid: int, ipa: int) -> None:
        if accesses.current.on:
            self._touch_all(vmid)
        for tlb in self.s2:
            for level, shift in _SHIFTS:
                tlb.pop((vmid, level, ipa >> shift), None)
        self.version += 1

    def tlbi_vmalls12e1is(self, vmid: int) -> None:
        if accesses.current.on:
            self._touch_all(vmid)
        for i, tlb in enumerate(self.s2):
            self.s2[i] = {k: v for k, v in tlb.items() if k[0] != vmid}
        self.version += 1

    def s2_entries(self, vmid: int, ipa: int) -> list[tuple[int, int, int]]:
        """(cpu, descriptor, level) of every CPU's entry for ``ipa`` in ``vmid``."""
        found = []
        for cpu in range(len(self.s2)):
            hit = self.lookup_s2(cpu, vmid, ipa)
            if hit is not None:
                found.append((cpu, *hit))
        return found

    # EL2 stage-1
    def lookup_el2(self, cpu: int, va: int) -> tuple[int, int] | None:
        if accesses.current.on:
            accesses.current.touch(f"tlb:cpu{cpu}:el2")
        tlb = self.el2[cpu]
        for level, shift in _SHIFTS:
            desc = tlb.get((level, va >> shift))
            if desc is not None:
                return desc, level
        return None

    def fill_el2(self, cpu: int, va: int, desc: int, level: int) -> None:
        self.el2[cpu][(level, va >> granule_shift(level))] = desc
        self.version += 1
        if accesses.current.on:
            accesses.current.touch(f"tlb:cpu{cpu}:el2", True)

    def tlbi_vae2is(self, va: int) -> None:
        if accesses.current.on:
            self._touch_all(None)
        for tlb in self.el2:
            for level, shift in _SHIFTS:
                tlb.pop((level, va >> shift), None)
        self.version += 1

    tlbi_vale2is = tlbi_vae2is
    """The last-level form: it may keep table (walk) caches, which are not modelled."""


def translate(tlbs: Arm64Tlbs, mem: TableMemory, cpu: int, vmid: int, pgd: int,
              start_level: int, ia_bits: int, ipa: int) -> tuple[int, int, bool]:
    """A stage-2 translation on ``cpu``: the TLB, else a walk that fills it on a valid leaf.
    Returns (descriptor, level, hit); an invalid descriptor is a fault at that level."""
    cached = tlbs.lookup_s2(cpu, vmid, ipa)
    if cached is not None:
        return cached[0], cached[1], True
    desc, level = walk(mem, pgd, start_level, ia_bits, ipa)
    if desc & 1:
        tlbs.fill_s2(cpu, vmid, ipa, desc, level)
    return desc, level, False


async def translate_stepwise(tlbs: Arm64Tlbs, mem: TableMemory, cpu: int, vmid: int, pgd: int,
                             start_level: int, ia_bits: int, ipa: int,
                             point: Callable[[str], Awaitable[None]],
                             op: str = "mmu walk") -> tuple[int, int, bool]:
    """``translate`` whose walk (on a miss) takes a point (``op``) before each descriptor
    read. The
    fill happens with the last read, in one step: a walk that read a leaf before a break
    fills before the break's TLBI, which removes it, as the architecture's TLBI completion
    guarantees for walks in flight."""
    cached = tlbs.lookup_s2(cpu, vmid, ipa)
    if cached is not None:
        return cached[0], cached[1], True
    desc, level = await walk_stepwise(mem, pgd, start_level, ia_bits, ipa, point, op)
    if desc & 1:
        tlbs.fill_s2(cpu, vmid, ipa, desc, level)
    return desc, level, False


def translate_el2(tlbs: Arm64Tlbs, mem: TableMemory, cpu: int, pgd: int, start_level: int,
                  va_bits: int, va: int) -> tuple[int, int, bool]:
    """The EL2 stage-1 form of ``translate``."""
    cached = tlbs.lookup_el2(cpu, va)
    if cached is not None:
        return cached[0], cached[1], True
    desc, level = walk(mem, pgd, start_level, va_bits, va)
    if desc & 1:
        tlbs.fill_el2(cpu, va, desc, level)
    return desc, level, False
