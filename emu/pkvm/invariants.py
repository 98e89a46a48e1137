"""The ownership invariants of pKVM over a ``mem_protect.Hyp``: each check returns None or
what is wrong. ``INVARIANTS`` holds the full checks (every page, every table; the direct
API's and the final checks); ``OwnershipMonitor`` is the same judgement made incrementally
in a schedule, on the pages and table pages that changed since it last looked.

Legal per-page state combinations (v6.16), derived from mem_protect.c's transitions by
induction from the boot state (rows as in mem_protect's docstring; ``k`` = guest stage-2
leaves mapping the page, ``count`` = host_share_guest_count, ``refs`` = hyp_page refcount):

| row | host            | hyp             | k    | guest leaves    | count | refs           |
|-----|-----------------|-----------------|------|-----------------|-------|----------------|
| A   | OWNED           | NOPAGE          | 0    | -               | 0     | 0              |
| B   | SHARED_OWNED    | SHARED_BORROWED | 0    | -               | 0     | pins, any      |
| C   | NOPAGE          | OWNED           | 0    | -               | 0     | any (pools)    |
| D   | SHARED_OWNED    | NOPAGE          | 0    | - (FF-A share)  | 0     | 0              |
| E   | SHARED_OWNED    | NOPAGE          | >= 1 | SHARED_BORROWED | k     | 0              |
| F   | SHARED_BORROWED | SHARED_OWNED    | 0    | -               | 0     | 0 (boot only)  |

The checks:

| check            | what must hold                                                        |
|------------------|-----------------------------------------------------------------------|
| page states      | every memory page is in one of rows A-F; every guest leaf is           |
|                  | SHARED_BORROWED and maps memory                                       |
| host annotations | a memory page's host stage-2 entry is an owner annotation <=> host     |
|                  | NOPAGE; the owner is PKVM_ID_HYP                                      |
| el2 mappings     | (v6.16) mapped at EL2 <=> hyp OWNED, or SHARED_BORROWED and pinned     |
| table refcounts  | a table page's refcount = 1 + its counted entries (pgtable.py; B11)   |
| stale tlbs       | no CPU caches a stage-2 translation its owner may not use (may_access) |

State is only meaningful to the holder of its lock: a transition changes it in several
steps under host_mmu.lock and pkvm_pgd_lock (a break-before-make stores a LOCKED entry, a
donation sets the hyp state before the host's), and a VM's stage-2 under its lock. So
everything is judged when no lock is held: the monitor's key includes the locks' state,
and it looks again as soon as the last holder lets go (the refcounts hold at every point,
pgtable.py, but a broken count stays broken, so judging them then loses nothing).
``may_access`` is what an access check asks at the moment of an access.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from itertools import compress
from typing import Any

from ..hw.arm64_stage2 import LAST_LEVEL, PAGE_SHIFT, PTRS_PER_PTE, granule_shift
from ..sim import coverage
from ..sim.violations import About, prefixed
from .mem_protect import (
    MEM_BASE_PFN,
    PKVM_ID_HYP,
    Hyp,
    get_host_state,
    get_hyp_state,
    guest_get_page_state,
)
from .memory import (
    PKVM_NOPAGE,
    PKVM_PAGE_OWNED,
    PKVM_PAGE_SHARED_BORROWED,
    PKVM_PAGE_SHARED_OWNED,
    PKVM_PAGE_STATE_NAMES,
)
from .pgtable import (
    KvmPgtable,
    kvm_invalid_pte_owner,
    kvm_pgd_page_idx,
    kvm_pgtable_get_leaf,
    kvm_pte_table,
    kvm_pte_to_pfn,
    kvm_pte_valid,
    table_refcounts_ok,
)

HOST = "host"
"""``may_access``'s name for the host (a VM is named by its index)."""
HYP = "hyp"

LEGAL_PAIRS = {
    (PKVM_PAGE_OWNED, PKVM_NOPAGE): "A",
    (PKVM_PAGE_SHARED_OWNED, PKVM_PAGE_SHARED_BORROWED): "B",
    (PKVM_NOPAGE, PKVM_PAGE_OWNED): "C",
    (PKVM_PAGE_SHARED_OWNED, PKVM_NOPAGE): "D/E",
    (PKVM_PAGE_SHARED_BORROWED, PKVM_PAGE_SHARED_OWNED): "F",
}
"""(host, hyp) -> the rows it may be in."""

GuestMaps = Sequence[tuple[int, int, int]]
"""(vm index, gfn, guest state) of the guest leaves mapping one page."""


def _name(state: int) -> str:
    return PKVM_PAGE_STATE_NAMES[state]


def _is_memory(hyp: Hyp, pfn: int) -> bool:
    return MEM_BASE_PFN <= pfn < MEM_BASE_PFN + hyp.memory_pages


def _in_flux(hyp: Hyp) -> bool:
    """Some component's lock is held: its state may be half-changed."""
    return (hyp.host_mmu.lock.is_locked() or hyp.pkvm_pgd_lock.is_locked()
            or any(vm.lock.is_locked() for vm in hyp.vms))


# --- reading the tables -------------------------------------------------------------------

def page_ptes(pgt: KvmPgtable, first_pfn: int, nr_pages: int) -> list[int]:
    """The entry translating each page of [first_pfn, first_pfn + nr_pages) (a block's or
    an empty higher-level entry's value repeated for each page it covers), a table at a
    time."""
    mem = pgt.mem
    out: list[int] = []
    pfn = first_pfn
    end = first_pfn + nr_pages
    while pfn < end:
        addr = pfn << PAGE_SHIFT
        level = pgt.start_level
        pte = mem.read(pgt.pgd + kvm_pgd_page_idx(pgt, addr),
                       (addr >> granule_shift(level)) & (PTRS_PER_PTE - 1))
        while kvm_pte_table(pte, level) and level < LAST_LEVEL - 1:
            level += 1
            pte = mem.read(kvm_pte_to_pfn(pte), (addr >> granule_shift(level)) & 511)
        chunk_end = min(end, (pfn | (PTRS_PER_PTE - 1)) + 1)
        if kvm_pte_table(pte, level):
            table = mem.pages.get(kvm_pte_to_pfn(pte))
            lo, hi = pfn & 511, ((chunk_end - 1) & 511) + 1
            out.extend(table[lo:hi] if table is not None else [0] * (hi - lo))
        else:
            out.extend([pte] * (chunk_end - pfn))
        pfn = chunk_end
    return out


def table_pages(pgt: KvmPgtable) -> list[tuple[int, int, int, int, int]]:
    """(pfn, level, input address covered, parent pfn, index in the parent) of each table
    page linked in ``pgt`` (the PGD pages with parent -1)."""
    mem = pgt.mem
    span = 1 << (granule_shift(pgt.start_level) + 9)
    found = [(pgt.pgd + i, pgt.start_level, i * span, -1, -1) for i in range(pgt.pgd_pages())]
    todo = list(found)
    while todo:
        pfn, level, base, _, _ = todo.pop()
        table = mem.pages.get(pfn)
        if table is None or level == LAST_LEVEL:
            continue
        shift = granule_shift(level)
        for idx in compress(range(PTRS_PER_PTE), table):
            if kvm_pte_table(table[idx], level):
                child = (kvm_pte_to_pfn(table[idx]), level + 1, base + (idx << shift), pfn, idx)
                found.append(child)
                todo.append(child)
    return found


def valid_leaves(pgt: KvmPgtable) -> list[tuple[int, int, int]]:
    """(input address, level, pte) of every valid leaf, in address order."""
    mem = pgt.mem
    out: list[tuple[int, int, int]] = []
    for pfn, level, base, _, _ in table_pages(pgt):
        table = mem.pages.get(pfn)
        if table is None:
            continue
        shift = granule_shift(level)
        out.extend((base + (idx << shift), level, table[idx])
                   for idx in compress(range(PTRS_PER_PTE), table)
                   if kvm_pte_valid(table[idx]) and not kvm_pte_table(table[idx], level))
    out.sort()
    return out


def guest_mappings(hyp: Hyp) -> dict[int, list[tuple[int, int, int]]]:
    """pfn -> [(vm index, gfn, guest state)] of every valid guest stage-2 leaf."""
    found: dict[int, list[tuple[int, int, int]]] = {}
    for vm in hyp.vms:
        for ipa, level, pte in valid_leaves(vm.pgt):
            state = guest_get_page_state(pte)
            first = kvm_pte_to_pfn(pte)
            gfn = ipa >> PAGE_SHIFT
            for i in range(1 << (granule_shift(level) - PAGE_SHIFT)):
                found.setdefault(first + i, []).append((vm.index, gfn + i, state))
    return found


# --- one page's judgement (the full checks and the monitor share it) -----------------------

def page_state_problem(hyp: Hyp, pfn: int, maps: GuestMaps) -> str | None:
    """Is memory page ``pfn`` in one of rows A-F, with ``maps`` the guest leaves mapping it?"""
    phys = pfn << PAGE_SHIFT
    host, hyp_state = get_host_state(hyp, phys), get_hyp_state(hyp, phys)
    vmemmap = hyp.hyp_vmemmap
    count, refs = vmemmap.host_share_guest_count[pfn], vmemmap.refcount[pfn]
    row = LEGAL_PAIRS.get((host, hyp_state))
    if row == "A" and not (count or refs or maps):
        return None
    problem = _row_problem(row, maps, count, refs)
    if problem is None:
        return None
    return (f"pfn {pfn:#x}: host {_name(host)}, hyp {_name(hyp_state)}, {len(maps)} guest "
            f"mapping(s), host_share_guest_count {count}, refcount {refs}: {problem}")


def _row_problem(row: str | None, maps: GuestMaps, count: int, refs: int) -> str | None:
    if row is None:
        return "no legal (host, hyp) state pair"
    for vm, gfn, state in maps:
        if state != PKVM_PAGE_SHARED_BORROWED:
            return f"vm{vm} gfn {gfn:#x} maps it {_name(state)}"
    if row == "D/E":
        if count != len(maps):
            return "the share count differs from the guest mappings"
    elif maps or count:
        return f"row {row} has no guest mapping and no share count"
    if refs and row not in ("B", "C"):
        return "a page the hyp neither owns nor borrows has references"
    return None


def annotation_problem(hyp: Hyp, pfn: int, pte: int) -> str | None:
    """Is memory page ``pfn``'s host stage-2 entry ``pte`` an annotation exactly when the
    host's state is NOPAGE?"""
    host = get_host_state(hyp, pfn << PAGE_SHIFT)
    annotated = bool(pte) and not kvm_pte_valid(pte)
    if annotated != (host == PKVM_NOPAGE):
        what = f"annotated ({pte:#x})" if annotated else "mapped" if pte else "empty"
        return f"pfn {pfn:#x}: host state {_name(host)} but its host stage-2 entry is {what}"
    owner = kvm_invalid_pte_owner(hyp.host_mmu.pgt, pte)
    if annotated and owner != PKVM_ID_HYP:
        return (f"pfn {pfn:#x}: host stage-2 annotation {pte:#x} names owner {owner}, not "
                "the hypervisor")
    return None


def el2_problem(hyp: Hyp, pfn: int, pte: int) -> str | None:
    """v6.16: is memory page ``pfn`` mapped at EL2 (``pte``) exactly when the hyp owns it,
    or borrows it pinned? (Before v6.16 the mapping is the hyp state: nothing to judge.)"""
    if hyp.behaviour.share_hyp_maps_el2:
        return None
    state = get_hyp_state(hyp, pfn << PAGE_SHIFT)
    refs = hyp.hyp_vmemmap.refcount[pfn]
    want = state == PKVM_PAGE_OWNED or (state == PKVM_PAGE_SHARED_BORROWED and refs > 0)
    if kvm_pte_valid(pte) == want:
        return None
    return (f"pfn {pfn:#x}: hyp state {_name(state)}, refcount {refs}, but "
            f"{'mapped' if kvm_pte_valid(pte) else 'not mapped'} at EL2")


def _first_denied_to_host(hyp: Hyp, lo: int, hi: int) -> int | None:
    """The first memory page of [lo, hi) the host may not access (a block is searched at C
    speed when the host state lives in the vmemmap)."""
    if lo >= hi:
        return None
    if hyp.behaviour.host_state_in_vmemmap:
        states = hyp.hyp_vmemmap.host_state[lo:hi]
        return lo + states.index(PKVM_NOPAGE) if PKVM_NOPAGE in states else None
    return next((pfn for pfn in range(lo, hi) if not may_access(hyp, HOST, pfn)), None)


def _tlb(cpu: int, vmid: int) -> str:
    """The access name of ``cpu``'s stage-2 TLB entries of ``vmid`` (``hw.arm64_tlb``): what
    a stale entry's violation is about."""
    return f"tlb:cpu{cpu}:vmid{vmid}"


def tlb_problem(hyp: Hyp) -> str | None:
    """Does any CPU's TLB hold a stage-2 translation its owner may not use now? Host entries
    are judged on the memory pages they cover (MMIO is always the host's)."""
    mem_end = MEM_BASE_PFN + hyp.memory_pages
    by_vmid = {vm.vmid: vm.index for vm in hyp.vms}
    for cpu, tlb in enumerate(hyp.tlbs.s2):
        for (vmid, level, key), pte in tlb.items():
            first = kvm_pte_to_pfn(pte)
            pages = 1 << (granule_shift(level) - PAGE_SHIFT)
            if vmid == 0:
                pfn = _first_denied_to_host(hyp, max(first, MEM_BASE_PFN),
                                            min(first + pages, mem_end))
                if pfn is not None:
                    return About(f"cpu{cpu}'s TLB maps host IPA {pfn << PAGE_SHIFT:#x}, a "
                                 "page the host may not access", _tlb(cpu, vmid))
                continue
            vm = by_vmid[vmid]
            gfn = key << (granule_shift(level) - PAGE_SHIFT)
            for i in range(pages):
                if not may_access(hyp, vm, gfn + i, first + i):
                    return About(f"cpu{cpu}'s TLB maps vm{vm} gfn {gfn + i:#x} to pfn "
                                 f"{first + i:#x}, which it may not access", _tlb(cpu, vmid))
    return None


# --- the full checks ------------------------------------------------------------------------

def check_page_states(hyp: Hyp) -> str | None:
    """Every memory page is in one of rows A-F (the module docstring)."""
    if _in_flux(hyp):
        return None
    guests = guest_mappings(hyp)
    for pfn in hyp.memory_pfns():
        problem = page_state_problem(hyp, pfn, guests.get(pfn, ()))
        if problem is not None:
            return problem
    outside = [pfn for pfn in guests if not _is_memory(hyp, pfn)]
    if outside:
        return f"pfn {outside[0]:#x} is not memory but a guest maps it: {guests[outside[0]]}"
    return None


def check_host_annotations(hyp: Hyp) -> str | None:
    """A memory page's host stage-2 entry is an owner annotation (PKVM_ID_HYP) exactly when
    the host's state is NOPAGE."""
    if _in_flux(hyp):
        return None
    ptes = page_ptes(hyp.host_mmu.pgt, MEM_BASE_PFN, hyp.memory_pages)
    for pfn, pte in zip(hyp.memory_pfns(), ptes, strict=True):
        problem = annotation_problem(hyp, pfn, pte)
        if problem is not None:
            return problem
    return None


def check_el2_mappings(hyp: Hyp) -> str | None:
    """v6.16: a memory page is mapped at EL2 exactly when the hyp owns it, or borrows it
    and it is pinned."""
    if hyp.behaviour.share_hyp_maps_el2 or _in_flux(hyp):
        return None
    ptes = page_ptes(hyp.pkvm_pgtable, MEM_BASE_PFN, hyp.memory_pages)
    for pfn, pte in zip(hyp.memory_pfns(), ptes, strict=True):
        problem = el2_problem(hyp, pfn, pte)
        if problem is not None:
            return problem
    return None


def _pgt_names(hyp: Hyp) -> list[str]:
    return ["host stage-2", "EL2 stage-1"] + [f"vm{vm.index} stage-2" for vm in hyp.vms]


def check_table_refcounts(hyp: Hyp) -> str | None:
    """Every page table's pages: refcount = 1 + counted entries, each linked once (B11)."""
    if _in_flux(hyp):
        return None
    for name, pgt in zip(_pgt_names(hyp), hyp.page_tables(), strict=True):
        problem = table_refcounts_ok(pgt)
        if problem is not None:
            return prefixed(f"{name}: ", problem)
    return None


def check_tlbs(hyp: Hyp) -> str | None:
    """No CPU's TLB keeps a stage-2 translation its owner may not use any more (a stale
    entry a missing TLBI left behind, used or not)."""
    return None if _in_flux(hyp) else tlb_problem(hyp)


Check = Callable[[Hyp], "str | None"]

INVARIANTS: tuple[tuple[str, Check], ...] = (
    ("pkvm page states", check_page_states),
    ("pkvm host annotations", check_host_annotations),
    ("pkvm el2 mappings", check_el2_mappings),
    ("pkvm table refcounts", check_table_refcounts),
    ("pkvm stale tlbs", check_tlbs),
)
"""(name, full check) of every invariant."""


def check_all(hyp: Hyp) -> str | None:
    """Every invariant once, in full (the direct API's and the tests' check)."""
    for name, check in INVARIANTS:
        problem = check(hyp)
        if problem is not None:
            return prefixed(f"{name}: ", problem)
    return None


# --- access ------------------------------------------------------------------------------

def may_access(hyp: Hyp, who: str | int, pfn_or_gfn: int, pfn: int | None = None) -> bool:
    """May ``who`` access this page now? The host (``HOST``; ``pfn_or_gfn`` a pfn): MMIO, or a
    memory page it owns or borrows (host state not NOPAGE). The hypervisor (``HYP``): a page
    it owns or borrows. A guest (its VM index; ``pfn_or_gfn`` a gfn, ``pfn`` the frame the
    access reached, if known): its stage-2 maps the gfn (to ``pfn``) as SHARED_BORROWED and
    the host shares that page with guests (host SHARED_OWNED, share count >= 1)."""
    if who == HOST:
        if not _is_memory(hyp, pfn_or_gfn):
            return pfn_or_gfn < MEM_BASE_PFN
        return get_host_state(hyp, pfn_or_gfn << PAGE_SHIFT) != PKVM_NOPAGE
    if who == HYP:
        return get_hyp_state(hyp, pfn_or_gfn << PAGE_SHIFT) in (
            PKVM_PAGE_OWNED, PKVM_PAGE_SHARED_BORROWED)
    vm = hyp.vms[int(who)]
    ret, pte, level = kvm_pgtable_get_leaf(vm.pgt, pfn_or_gfn << PAGE_SHIFT)
    if ret or not kvm_pte_valid(pte) or guest_get_page_state(pte) != PKVM_PAGE_SHARED_BORROWED:
        return False
    offset = pfn_or_gfn & ((1 << (granule_shift(level) - PAGE_SHIFT)) - 1)
    mapped = kvm_pte_to_pfn(pte) + offset
    if pfn is not None and pfn != mapped:
        return False
    if not _is_memory(hyp, mapped):
        return False
    return (get_host_state(hyp, mapped << PAGE_SHIFT) == PKVM_PAGE_SHARED_OWNED
            and hyp.hyp_vmemmap.host_share_guest_count[mapped] > 0)


# --- the incremental form -----------------------------------------------------------------

TableInfo = tuple[int, int, int, int, int]
"""(page-table index in Hyp.page_tables(), level, input address, parent pfn, parent idx)."""


class OwnershipMonitor:
    """Every invariant of ``INVARIANTS``, judged after each step of a schedule on what
    changed since the last look: ``Hyp``'s table memory and vmemmap log their stores while
    a monitor watches; each logged table entry is mapped back to the addresses it
    translates (the monitor keeps a map of table pages and of the guests' leaves), and
    only the pages and table pages touched are judged, with the same per-page judgements
    as the full checks. A store into a table page it does not know, or the zeroing of a
    linked one, makes it start over with the full checks (``sync``)."""

    def __init__(self, hyp: Hyp) -> None:
        self.hyp = hyp
        self.pgts = hyp.page_tables()
        self.tables: dict[int, TableInfo] = {}
        self.gmap: list[dict[int, tuple[int, int]]] = [{} for _ in hyp.vms]
        """Per VM: gfn -> (pfn, guest state) of its valid leaves."""
        self.rmap: dict[int, dict[tuple[int, int], int]] = {}
        """pfn -> {(vm, gfn): guest state}."""
        self.tlb_version = -1
        hyp.mem.log = []
        hyp.hyp_vmemmap.log = []
        self.synced = False
        self.syncs = 0
        """How often it started over with the full checks."""

    def key(self) -> Hashable:
        hyp = self.hyp
        return (len(hyp.mem.log or ()), len(hyp.hyp_vmemmap.log or ()), hyp.tlbs.version,
                hyp.host_mmu.lock.is_locked(), hyp.pkvm_pgd_lock.is_locked(),
                tuple(vm.lock.is_locked() for vm in hyp.vms))

    def check(self) -> str | None:
        hyp = self.hyp
        if _in_flux(hyp):
            return None
        if not self.synced:
            return self.sync()
        mem_log, vm_log = hyp.mem.log, hyp.hyp_vmemmap.log
        if not mem_log and not vm_log and hyp.tlbs.version == self.tlb_version:
            return None
        pfns = {p for p in vm_log if _is_memory(hyp, p)}
        tables = {p for p in vm_log if p in self.tables}
        for tpfn, idx in mem_log:
            if not self._entry_changed(tpfn, idx, pfns, tables):
                return self.sync()
        mem_log.clear()
        vm_log.clear()
        return self._judge(sorted(pfns), sorted(tables))

    def sync(self) -> str | None:
        """Rebuild the maps from the tables and judge everything (the full checks); on the
        state boot left, what the first monitor of its BootImage found."""
        hyp = self.hyp
        hyp.mem.log.clear()
        hyp.hyp_vmemmap.log.clear()
        self.synced = True
        self.syncs += 1
        self.tlb_version = hyp.tlbs.version
        image = hyp.boot_image
        booted = (image is not None and hyp.mem.version == image.mem_version
                  and hyp.hyp_vmemmap.version == image.vmemmap_version
                  and hyp.tlbs.version == 0)
        if booted and image.monitor is not None:
            tables, problem = image.monitor
            self.tables = dict(tables)
            self.gmap = [{} for _ in hyp.vms]
            self.rmap = {}
            return problem
        self.tables = {}
        for i, pgt in enumerate(self.pgts):
            for pfn, level, base, ppfn, pidx in table_pages(pgt):
                self.tables[pfn] = (i, level, base, ppfn, pidx)
        self.gmap = [{} for _ in hyp.vms]
        self.rmap = {}
        for vm in hyp.vms:
            for ipa, level, pte in valid_leaves(vm.pgt):
                self._add_leaf(vm.index, ipa >> PAGE_SHIFT, level, pte, set())
        problem = check_all(hyp)
        if booted and not self.rmap:
            image.monitor = (dict(self.tables), problem)
        return problem

    def _linked(self, pfn: int) -> bool:
        """Is table page ``pfn`` still in its page table where the monitor saw it linked?"""
        info = self.tables.get(pfn)
        while info is not None:
            _, level, _, ppfn, pidx = info
            if ppfn < 0:
                return True
            pte = self.hyp.mem.read(ppfn, pidx)
            if not kvm_pte_table(pte, level - 1) or kvm_pte_to_pfn(pte) != pfn:
                return False
            pfn, info = ppfn, self.tables.get(ppfn)
        return False

    def _entry_changed(self, tpfn: int, idx: int, pfns: set[int], tables: set[int]) -> bool:
        """Note what the store to entry ``idx`` of table page ``tpfn`` (idx < 0: its zeroing)
        changed; False if the monitor cannot tell (it must sync)."""
        info = self.tables.get(tpfn)
        if info is None or not self._linked(tpfn):
            # a page no table links: its stores translate nothing (a zeroed page is a free
            # one); a store into a page never seen linked is not understood
            return idx < 0 or (info is not None)
        if idx < 0:
            return False
        i, level, base, _, _ = info
        tables.add(tpfn)
        shift = granule_shift(level)
        addr = base + (idx << shift)
        pte = self.hyp.mem.read(tpfn, idx)
        if kvm_pte_table(pte, level):
            self.tables[kvm_pte_to_pfn(pte)] = (i, level + 1, addr, tpfn, idx)
            tables.add(kvm_pte_to_pfn(pte))
        first, last = addr >> PAGE_SHIFT, (addr + (1 << shift)) >> PAGE_SHIFT
        if i < 2:  # the host stage-2 (idmap) and the EL2 stage-1 (hyp VA = PA)
            lo = max(first, MEM_BASE_PFN)
            pfns.update(range(lo, max(lo, min(last, MEM_BASE_PFN + self.hyp.memory_pages))))
            return True
        vm = i - 2
        gmap = self.gmap[vm]
        old = [g for g in gmap if first <= g < last] if last - first > len(gmap) else \
            [g for g in range(first, last) if g in gmap]
        for gfn in old:
            pfn, _ = gmap.pop(gfn)
            del self.rmap[pfn][(vm, gfn)]
            pfns.add(pfn)
        if kvm_pte_valid(pte) and not kvm_pte_table(pte, level):
            self._add_leaf(vm, first, level, pte, pfns)
        return True

    def _add_leaf(self, vm: int, gfn: int, level: int, pte: int, pfns: set[int]) -> None:
        state = guest_get_page_state(pte)
        first = kvm_pte_to_pfn(pte)
        for i in range(1 << (granule_shift(level) - PAGE_SHIFT)):
            self.gmap[vm][gfn + i] = (first + i, state)
            self.rmap.setdefault(first + i, {})[(vm, gfn + i)] = state
            pfns.add(first + i)

    def _judge(self, pfns: list[int], tables: list[int]) -> str | None:
        hyp = self.hyp
        for pfn in pfns:
            if not _is_memory(hyp, pfn):
                if self.rmap.get(pfn):
                    return (f"pkvm page states: pfn {pfn:#x} is not memory but a guest maps "
                            f"it: {sorted(self.rmap[pfn])}")
                continue
            maps = [(vm, gfn, st) for (vm, gfn), st in sorted(self.rmap.get(pfn, {}).items())]
            phys = pfn << PAGE_SHIFT
            for name, problem in (
                    ("page states", page_state_problem(hyp, pfn, maps)),
                    ("host annotations", annotation_problem(
                        hyp, pfn, kvm_pgtable_get_leaf(hyp.host_mmu.pgt, phys)[1])),
                    ("el2 mappings", el2_problem(
                        hyp, pfn, kvm_pgtable_get_leaf(hyp.pkvm_pgtable, phys)[1]))):
                if problem is not None:
                    return f"pkvm {name}: {problem}"
        refcount = hyp.hyp_vmemmap.refcount
        for pfn in tables:
            if not self._linked(pfn):
                continue
            i, level, _, _, _ = self.tables[pfn]
            pgt = self.pgts[i]
            table = hyp.mem.pages.get(pfn) or ()
            lk = pgt.break_pte
            counted = len(table) - table.count(0) - (table.count(lk) if lk and table else 0)
            if refcount[pfn] != 1 + counted:
                return (f"pkvm table refcounts: {_pgt_names(hyp)[i]}: table page {pfn:#x} "
                        f"(level {level}) has refcount {refcount[pfn]}, but 1 + {counted} "
                        "counted entries")
        self.tlb_version = hyp.tlbs.version
        problem = tlb_problem(hyp)
        return None if problem is None else prefixed("pkvm stale tlbs: ", problem)


def register(m: Any, hyp: Hyp) -> OwnershipMonitor:
    """Watch ``hyp`` on machine ``m`` with an ``OwnershipMonitor``: after every step (keyed)
    and once more at the end; and, when the run collects coverage, with ``PageRows``."""
    monitor = OwnershipMonitor(hyp)
    m.invariant("pkvm ownership", monitor.check, key=monitor.key)
    m.final("pkvm ownership", monitor.check)
    if m.coverage.on:
        rows = PageRows(hyp)
        for transition, fn in ROW_TRANSITIONS.items():
            m.declare(PKVM_TRANSITION, [transition], f"no {fn} took a page this way")
        m.invariant("coverage: pkvm page-state transitions", rows.observe, key=rows.key)
        m.final("coverage: pkvm page-state transitions", rows.observe)
    return monitor


PKVM_TRANSITION = "pkvm-transition"
ROW_TRANSITIONS = {
    "A -> B": "__pkvm_host_share_hyp", "B -> A": "__pkvm_host_unshare_hyp",
    "B -> B pinned": "hyp_pin_shared_mem", "B pinned -> B": "hyp_unpin_shared_mem",
    "A -> C": "__pkvm_host_donate_hyp", "C -> A": "__pkvm_hyp_donate_host",
    "A -> D": "__pkvm_host_share_ffa", "D -> A": "__pkvm_host_unshare_ffa",
    "A -> E (k=1)": "__pkvm_host_share_guest",
    "E (k=1) -> E (k>1)": "__pkvm_host_share_guest (a second guest)",
    "E (k>1) -> E (k=1)": "__pkvm_host_unshare_guest (one of several guests)",
    "E (k=1) -> A": "__pkvm_host_unshare_guest",
}
"""Coverage: the moves between the rows of the module docstring's table that the
transitions make, with the function that makes each (B split by pins, E by guests)."""


class PageRows:
    """Coverage (``sim.coverage``, kind ``pkvm-transition``): the row each memory page is in,
    looked at between steps while no component's lock is held, and every move of a page
    from one row to another. It reads; it never judges (that is ``OwnershipMonitor``'s)."""

    def __init__(self, hyp: Hyp) -> None:
        self.hyp = hyp
        self.rows: dict[int, str] = {}

    def key(self) -> Hashable:
        hyp = self.hyp
        return (hyp.hyp_vmemmap.version, hyp.mem.version, _in_flux(hyp))

    def row(self, pfn: int) -> str | None:
        hyp = self.hyp
        phys = pfn << PAGE_SHIFT
        row = LEGAL_PAIRS.get((get_host_state(hyp, phys), get_hyp_state(hyp, phys)))
        vmemmap = hyp.hyp_vmemmap
        if row == "B" and vmemmap.refcount[pfn]:
            return "B pinned"
        if row == "D/E":
            count = vmemmap.host_share_guest_count[pfn]
            return "D" if not count else "E (k=1)" if count == 1 else "E (k>1)"
        return row

    def observe(self) -> None:
        hyp = self.hyp
        if _in_flux(hyp):
            return
        rows = self.rows
        for pfn in hyp.memory_pfns():
            now = self.row(pfn)
            before = rows.get(pfn)
            if now != before:
                if before is not None and now is not None:
                    coverage.current.cover(PKVM_TRANSITION, f"{before} -> {now}")
                rows[pfn] = now
