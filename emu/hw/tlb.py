"""TLBs: one per TLB group (emu/hw/cputhreads.py), shared by the group's threads, caching
translations tagged by LPID, and the invalidations that remove them.

An entry maps (lpid, page number, page shift) to (real address, R/W/X, R/C as filled). A
lookup returns a cached entry whatever the page table now says: that is the hazard, a stale
entry survives until something invalidates it in *its* TLB. ``tlbiel`` acts on the
executing thread's group only, ``tlbie`` on every group. The forms (ISA 3.0, R=1, the ones
kvmhv_emulate_priv_tlbie accepts):

| IS | RIC 0 (TLB)             | RIC 1 (PWC)   | RIC 2 (all)             |
|----|-------------------------|---------------|-------------------------|
| 0  | one page of one LPID    | invalid form  | invalid form            |
| 1  | not modelled (by PID)   |               |                         |
| 2  | every entry of one LPID | nothing here  | every entry of one LPID |
| 3  | every entry             | nothing here  | every entry             |

A guest's own translations go through two tables: its process-scoped table (effective
address -> guest real address) and the partition-scoped one. An entry caches the whole
translation, keyed by the effective address, and remembers the guest real page it went
through (``gra``). A process-scoped IS=0 invalidation (``prs``: the guest's own tlbiel or
tlbie) matches the key; a partition-scoped one (the hypervisor's) matches the key and every
entry derived through the guest real page, which is how the hardware lets a hypervisor
invalidate a page without knowing which effective addresses reached it. An entry filled
from a partition-scoped leaf alone has its key as its ``gra``.

RIC 3 is invalid for radix. There is no page-walk cache, partition-table cache or ERAT in
the model, so RIC=1 removes nothing and RIC=2 removes what RIC=0 does. IS=0 removes only an
entry of exactly the given page size (the least an implementation can do: not checked
against the ISA text, chosen so that a wrong page size leaves a stale entry), and tlbiel's
IS=2/3 "this congruence class" form is taken over all sets at once (callers loop over every
set anyway: flush_guest_tlb, tlbiel_all).

TLB coherence. Every fill and every tlbie/tlbiel gets a number from one clock (``epoch``);
each invalidation records, per page / LPID / everything, the epoch it ran at, wherever it
ran. An entry *used* (looked up) after an invalidation covering it ran elsewhere is exactly
seed 002's failure: software invalidated the translation, yet a thread still translates
through the old entry. ``lookup`` records each such use in ``stale_uses`` (three dict probes
a lookup), and ``stale_entries`` lists every entry that would be one. The guest-entry flush
(``flush_guest_tlb``) is housekeeping, not an announcement that a mapping changed, so it
removes entries without recording anything.

Accesses (``sim.accesses``), one object per TLB group and LPID, ``tlb:g<group>:lpid<n>``,
plus ``tlb:g<group>:all`` (which an IS=3 invalidation writes and every lookup and fill of
the group reads), and the invalidation records of an LPID, ``tlbinval:lpid<n>``, and of
everything, ``tlbinval:all``, which invalidations write and lookups and fills read (whether
an entry is stale depends on the order of its fill and an invalidation anywhere).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from ..sim import accesses
from .cputhreads import Topology
from .memory import PAGE_SHIFT, PAGE_SIZE
from .radix import PMD_SHIFT, PUD_SHIFT, Leaf, WalkFault

RIC_TLB = 0
RIC_PWC = 1
RIC_ALL = 2
IS_VA = 0
IS_PID = 1
IS_LPID = 2
IS_ALL = 3

TLB_SHIFTS = (12, PAGE_SHIFT, PMD_SHIFT, PUD_SHIFT)
"""Page sizes an entry can have (a walk of a 4 KiB-geometry table gives 12)."""

Key = tuple[int, int, int]
"""(lpid, gpa >> shift, shift)."""


@attrs.frozen
class TlbEntry:
    lpid: int
    gpn: int
    """The input address >> shift."""
    shift: int
    ra: int
    """Real address of the first byte of the page."""
    prot: int
    """PAGE_READ | PAGE_WRITE | PAGE_EXEC as filled."""
    rc: int
    """PAGE_ACCESSED | PAGE_DIRTY as filled."""
    epoch: int
    """When it was filled."""
    gra: int
    """The guest real address of the first byte of the page this translation went through
    (the key's own address for a partition-scoped entry)."""

    @property
    def key(self) -> Key:
        return self.lpid, self.gpn, self.shift

    @property
    def gpa(self) -> int:
        return self.gpn << self.shift

    @property
    def pfn(self) -> int:
        return self.ra >> PAGE_SHIFT

    def real_address(self, gpa: int) -> int:
        return self.ra | (gpa & ((1 << self.shift) - 1))


@attrs.frozen
class StaleUse:
    """Thread ``cpu`` translated through ``entry`` although an invalidation covering it
    ran (in another group) at ``invalidated``, after the entry was filled."""

    cpu: int
    entry: TlbEntry
    invalidated: int


class Tlb:
    """The TLB of one group. Every operation costs the entries it touches."""

    def __init__(self, group: int) -> None:
        self.group = group
        self.entries: dict[Key, TlbEntry] = {}
        self._by_lpid: dict[int, set[Key]] = {}
        self._by_gra: dict[Key, set[Key]] = {}
        """(lpid, guest real page >> 16, 16) -> the keys of the entries derived through it."""

    def __len__(self) -> int:
        return len(self.entries)

    def matches(self, lpid: int, gpa: int) -> list[TlbEntry]:
        """Every entry translating ``gpa`` for ``lpid``, smallest page first (more than one
        is a multi-hit)."""
        found = []
        for shift in TLB_SHIFTS:
            entry = self.entries.get((lpid, gpa >> shift, shift))
            if entry is not None:
                found.append(entry)
        return found

    def insert(self, entry: TlbEntry) -> None:
        self.remove(entry.key)
        self.entries[entry.key] = entry
        self._by_lpid.setdefault(entry.lpid, set()).add(entry.key)
        if entry.gra != entry.gpa:  # derived through a process-scoped translation
            self._by_gra.setdefault(_gra_key(entry.lpid, entry.gra), set()).add(entry.key)

    def remove(self, key: Key) -> int:
        entry = self.entries.pop(key, None)
        if entry is None:
            return 0
        self._by_lpid[key[0]].discard(key)
        if entry.gra != entry.gpa:
            self._by_gra[_gra_key(entry.lpid, entry.gra)].discard(key)
        return 1

    def remove_derived(self, lpid: int, gpa: int, shift: int) -> int:
        """Every entry of ``lpid`` derived through a guest real page in the ``1 << shift``
        bytes at ``gpa`` (aligned down)."""
        base = gpa >> shift << shift
        pages = range(base >> PAGE_SHIFT, max(base + (1 << shift) >> PAGE_SHIFT,
                                              (base >> PAGE_SHIFT) + 1))
        keys = [key for page in pages for key in sorted(self._by_gra.get(
            _gra_key(lpid, page << PAGE_SHIFT), ()))]
        return sum(self.remove(key) for key in keys)

    def remove_lpid(self, lpid: int) -> int:
        keys = sorted(self._by_lpid.get(lpid, ()))
        return sum(self.remove(key) for key in keys)

    def remove_all(self) -> int:
        n = len(self.entries)
        self.entries.clear()
        self._by_lpid.clear()
        self._by_gra.clear()
        return n


def _gra_key(lpid: int, gra: int) -> Key:
    return lpid, gra >> PAGE_SHIFT, PAGE_SHIFT


def check_form(ric: int, is_: int) -> None:
    """The invalid radix partition-scoped forms (kvmhv_emulate_priv_tlbie's list)."""
    if not (0 <= ric <= 3 and 0 <= is_ <= 3):
        raise ValueError(f"RIC={ric} IS={is_} out of range")
    if ric == 3:
        raise ValueError("RIC=3 (cluster bomb) is invalid for radix")
    if is_ == IS_PID:
        raise ValueError("IS=1 (by PID) does not apply to partition-scoped entries")
    if is_ == IS_VA and ric in (RIC_PWC, RIC_ALL):
        raise ValueError(f"IS=0 with RIC={ric} is not a form the ISA supports")


class Tlbs:
    """All of a machine's TLBs, indexed by the threads that use them."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.groups = {group: Tlb(group) for group in topology.groups()}
        self.epoch = 0
        self._inval_va: dict[Key, int] = {}
        self._inval_lpid: dict[int, int] = {}
        self._inval_gra: dict[Key, int] = {}
        """Partition-scoped IS=0 invalidations, by the guest real page they named."""
        self._inval_all = 0
        self.stale_uses: list[StaleUse] = []
        self.multi_hits: list[tuple[int, list[TlbEntry]]] = []
        """(cpu, entries): a lookup matched entries of more than one page size, a TLB
        multi-hit (bug B10's symptom): software must invalidate before a page's size
        changes."""

    def tlb(self, cpu: int) -> Tlb:
        return self.groups[self.topology.group_of(cpu)]

    @staticmethod
    def touch(group: int, lpid: int, write: bool) -> None:
        """A lookup or fill (``write``) of ``lpid``'s entries in ``group``: it reads the
        invalidation records and the group's IS=3 object too (accesses recorded only)."""
        rec = accesses.current
        rec.touch(f"tlb:g{group}:lpid{lpid}", write)
        rec.touch(f"tlb:g{group}:all")
        rec.touch(f"tlbinval:lpid{lpid}")
        rec.touch("tlbinval:all")

    def lookup(self, cpu: int, lpid: int, gpa: int) -> TlbEntry | None:
        """What ``cpu`` translates ``gpa`` through for ``lpid`` without walking: the cached
        entry, current or stale (smallest page on a multi-hit), or None on a miss."""
        if accesses.current.on:
            self.touch(self.topology.group_of(cpu), lpid, False)
        found = self.tlb(cpu).matches(lpid, gpa)
        if not found:
            return None
        if len(found) > 1:
            self.multi_hits.append((cpu, found))
        entry = found[0]
        invalidated = self.invalidated_since_fill(entry)
        if invalidated:
            self.stale_uses.append(StaleUse(cpu, entry, invalidated))
        return entry

    def fill(self, cpu: int, lpid: int, leaf: Leaf, *, ea: int | None = None,
             gra: int = 0) -> TlbEntry:
        """Cache a walk's partition-scoped leaf in ``cpu``'s TLB; with ``ea``, the
        translation of the page at effective address ``ea`` through guest real address
        ``gra``, which ``leaf`` maps (one base page, keyed by ``ea``)."""
        self.epoch += 1
        if ea is None:
            entry = TlbEntry(lpid, leaf.gpa >> leaf.shift, leaf.shift, leaf.ra, leaf.prot,
                             leaf.rc, self.epoch, leaf.gpa)
        else:
            page = ~(PAGE_SIZE - 1)
            entry = TlbEntry(lpid, ea >> PAGE_SHIFT, PAGE_SHIFT, leaf.real_address(gra) & page,
                             leaf.prot, leaf.rc, self.epoch, gra & page)
        self.tlb(cpu).insert(entry)
        if accesses.current.on:
            self.touch(self.topology.group_of(cpu), lpid, True)
        return entry

    def translate(
        self, cpu: int, lpid: int, gpa: int, walker: Callable[[int], Leaf | WalkFault]
    ) -> TlbEntry | WalkFault:
        """The MMU: a TLB hit, else walk and fill. The caller checks permissions and R/C
        (a miss on a leaf lacking them is an HDSI, not a fill, in the kernel's world)."""
        entry = self.lookup(cpu, lpid, gpa)
        if entry is not None:
            return entry
        leaf = walker(gpa)
        if isinstance(leaf, WalkFault):
            return leaf
        return self.fill(cpu, lpid, leaf)

    def _invalidate(
        self, tlbs: list[Tlb], lpid: int, ric: int, is_: int, gpa: int, shift: int, prs: bool
    ) -> int:
        check_form(ric, is_)
        if ric == RIC_PWC:
            return 0
        self.epoch += 1
        if accesses.current.on:
            rec = accesses.current
            if is_ == IS_ALL:
                rec.touch("tlbinval:all", True)
                for tlb in tlbs:
                    rec.touch(f"tlb:g{tlb.group}:all", True)
                    for n in sorted(tlb._by_lpid):
                        rec.touch(f"tlb:g{tlb.group}:lpid{n}", True)
            else:
                rec.touch(f"tlbinval:lpid{lpid}", True)
                for tlb in tlbs:
                    rec.touch(f"tlb:g{tlb.group}:lpid{lpid}", True)
        if is_ == IS_VA:
            if shift not in TLB_SHIFTS:
                raise ValueError(f"no page size 1 << {shift}")
            key = (lpid, gpa >> shift, shift)
            self._inval_va[key] = self.epoch
            if prs:
                return sum(tlb.remove(key) for tlb in tlbs)
            self._inval_gra[key] = self.epoch
            return sum(tlb.remove(key) + tlb.remove_derived(lpid, gpa, shift) for tlb in tlbs)
        if is_ == IS_LPID:
            self._inval_lpid[lpid] = self.epoch
            return sum(tlb.remove_lpid(lpid) for tlb in tlbs)
        self._inval_all = self.epoch
        return sum(tlb.remove_all() for tlb in tlbs)

    def tlbiel(
        self,
        cpu: int,
        lpid: int,
        *,
        ric: int = RIC_TLB,
        is_: int = IS_VA,
        gpa: int = 0,
        shift: int = PAGE_SHIFT,
        prs: bool = False,
    ) -> int:
        """Local invalidation: only ``cpu``'s TLB group. The number of entries removed.
        ``prs``: process-scoped (a guest's own), else partition-scoped."""
        return self._invalidate([self.tlb(cpu)], lpid, ric, is_, gpa, shift, prs)

    def tlbie(
        self,
        lpid: int,
        *,
        ric: int = RIC_TLB,
        is_: int = IS_VA,
        gpa: int = 0,
        shift: int = PAGE_SHIFT,
        prs: bool = False,
    ) -> int:
        """Broadcast invalidation (with its tlbsync/ptesync done): every TLB group."""
        return self._invalidate(list(self.groups.values()), lpid, ric, is_, gpa, shift, prs)

    def flush_guest_tlb(self, cpu: int, lpid: int) -> int:
        """flush_guest_tlb (book3s_hv_p9_entry.c), run on guest entry with LPIDR = lpid:
        tlbiel IS=2 R=1 PRS=1, RIC=2 on set 0 then RIC=0 on every other set, ptesync, ERAT
        flush: every entry of ``lpid`` in ``cpu``'s group goes (other LPIDs and other
        groups keep theirs). Not recorded as an invalidation (see the module notes)."""
        if accesses.current.on:
            accesses.current.touch(f"tlb:g{self.topology.group_of(cpu)}:lpid{lpid}", True)
        return self.tlb(cpu).remove_lpid(lpid)

    def invalidated_since_fill(self, entry: TlbEntry) -> int:
        """The epoch of the latest invalidation covering ``entry`` that ran after it was
        filled, or 0: nonzero means the entry should no longer be used."""
        latest = max(
            self._inval_all, self._inval_lpid.get(entry.lpid, 0), self._inval_va.get(entry.key, 0)
        )
        if self._inval_gra and entry.gra != entry.gpa:
            for shift in TLB_SHIFTS:
                key = (entry.lpid, entry.gra >> shift, shift)
                latest = max(latest, self._inval_gra.get(key, 0))
        return latest if latest > entry.epoch else 0

    def stale_entries(self) -> list[tuple[int, TlbEntry]]:
        """(group, entry) for every cached entry an invalidation elsewhere has overtaken."""
        return [
            (group, entry)
            for group, tlb in self.groups.items()
            for entry in tlb.entries.values()
            if self.invalidated_since_fill(entry)
        ]
