"""The invariants of L0's MMU for an L1 hypervisor: plain functions returning None or what
is wrong, for a machine to register with ``m.invariant`` (they run between steps, when no
mmu_lock section is half done: those sections have no scheduling point inside).

**Shadow composition** (``shadow_composition``), for every present shadow PTE S of every
nested guest not yet freed (in the IDR or not: a vCPU may still run one that was removed):

- (A) always: an rmap entry (L1 lpid, S's L2 GPA) that the kernel's rmap walk reaches sits
  on an L1 page whose L0 PTE is present, covers S's whole host range, and allows every
  R/W/X that S allows. This is what makes every L0 unmap of that host memory remove S (the
  L0 unmap walks exactly that word, see kvmhv_remove_nest_rmap_range), so it is L0's own
  guarantee whatever L1 does. One kernel path can break it at L1's request: an L2 fault on
  a shadow PTE whose L2->L1 PTE L1 has rewritten in place, without invalidating first, ORs
  the new PTE into the old (kvmppc_create_pte), RPN included.
- (B) unless L1 has an edit of S's L2 range in flight (``l1_editing``): S is the
  composition of L1's current L2->L1 leaf (walked through L0's cached PATE,
  ``l1_gr_to_hr``) and L0's current L1->L0 leaf: no larger than L1's page, the host address
  L0's leaf gives L1's address, R/W/X and R/C within both, and its rmap entry on the first
  GFN of L0's leaf. L1 changes its tables in its own memory and then invalidates with
  H_TLB_INVALIDATE; until that returns the kernel keeps the old shadow PTE (and may even
  set R/C in it from L0's PTE for L1's *new* page), so (B) waits. An edit is in flight from
  before L1 writes the PTE (or the PATE, or the PTCR: then every lpid) until its
  H_TLB_INVALIDATE covering it returns; ``L1Edits`` keeps that list for an L1 actor.

R/C are left out of (A) for the same reason: the R/C handler sets them in S from the L0
PTE of L1's current page, which in L1's edit window is not the page S maps.

**Rmap without duplicates** (``nested_rmap_unique``): no word holds one entry twice (the
insert's scan keeps them out; quirk ``rmap-no-dedup`` drops the scan).

**L1's table is current** (``l1_pgtable_current``): every present 64K leaf of L1's table in
L0 maps the host page QEMU's page table has for that GFN (the MMU notifier keeps it so;
larger leaves exist only where a scenario installs them and are not checked).
"""

from __future__ import annotations

from collections.abc import Callable

from ..hw.memory import PAGE_SHIFT
from ..hw.radix import RADIX_PGTABLE_RANGE, Leaf, ReadFn, WalkFault, walk
from .nested import KvmNestedGuest, L1Host
from .nested_rmap import n_rmap_gpa, n_rmap_lpid
from .radix_mmu import RadixMmu

L1Editing = Callable[[int, int, int], bool]
"""(L1 lpid, start, end) -> whether L1 has an edit overlapping [start, end) of that nested
guest's L2 space in flight."""


class L1Edits:
    """The edits of L2->L1 translations L1 has begun and whose H_TLB_INVALIDATE has not yet
    returned; an ``L1Editing`` for ``shadow_composition``."""

    def __init__(self) -> None:
        self.pending: list[tuple[int | None, int, int]] = []
        self.version = 0
        """Bumped by every ``begin`` and ``end``."""

    def begin(self, lpid: int | None, start: int = 0, end: int = RADIX_PGTABLE_RANGE
              ) -> tuple[int | None, int, int]:
        """Before L1 writes: [start, end) of nested guest ``lpid`` (None: every one)."""
        edit = (lpid, start, end)
        self.pending.append(edit)
        self.version += 1
        return edit

    def end(self, edit: tuple[int | None, int, int]) -> None:
        """After the H_TLB_INVALIDATE that covers ``edit`` returned."""
        self.pending.remove(edit)
        self.version += 1

    def __call__(self, lpid: int, start: int, end: int) -> bool:
        return any((who is None or who == lpid) and lo < end and start < hi
                   for who, lo, hi in self.pending)


def _rmap_index(mmu: RadixMmu) -> dict[tuple[int, int], list[int]]:
    """(L1 lpid, L2 GPA) -> the L1 GFNs whose rmap word has that entry where the kernel's
    walk of the word reaches it."""
    index: dict[tuple[int, int], list[int]] = {}
    for slot, words in mmu.rmap.items():
        for i, word in words.items():
            for entry in word.kernel_walk():
                index.setdefault((n_rmap_lpid(entry), n_rmap_gpa(entry)), []).append(
                    slot.base_gfn + i)
    return index


def _reachable(mmu: RadixMmu, index: dict[tuple[int, int], list[int]], gp: KvmNestedGuest,
               s: Leaf) -> str | None:
    """Claim (A)."""
    gfns = index.get((gp.l1_lpid, s.gpa), [])
    for gfn in gfns:
        l0 = mmu.pgtable.find(gfn << PAGE_SHIFT)
        if l0 is not None and l0.ra <= s.ra and s.ra + s.size <= l0.ra + l0.size \
                and not s.prot & ~l0.prot:
            return None
    where = ", ".join(f"{g:#x}" for g in gfns) or "none"
    return (f"no rmap entry on an L1 page whose L0 PTE maps host {s.ra:#x} (+{s.size:#x}) "
            f"with its permissions {s.prot:#x} (entries on L1 GFNs: {where}): no L0 unmap "
            "of that memory would remove it")


def _composed(mmu: RadixMmu, index: dict[tuple[int, int], list[int]], gp: KvmNestedGuest,
              s: Leaf, read: ReadFn) -> str | None:
    """Claim (B), reading L1's memory with ``read``."""
    if not gp.l1_gr_to_hr:
        return "L0 caches no partition-table entry for its guest"
    g = walk(read, gp.l1_gr_to_hr, s.gpa)
    if isinstance(g, WalkFault):
        return f"L1's table maps nothing there (walk error {g.err})"
    if s.size > g.size:
        return f"larger than L1's {g.size:#x} page"
    l1_gpa = g.real_address(s.gpa)
    l0 = mmu.pgtable.find(l1_gpa)
    if l0 is None:
        return f"L1 maps it to L1 GPA {l1_gpa:#x}, which L0 does not map"
    if s.ra != l0.real_address(l1_gpa):
        return (f"maps host {s.ra:#x}, but L1 maps it to L1 GPA {l1_gpa:#x}, which L0 maps to "
                f"host {l0.real_address(l1_gpa):#x}")
    if s.prot & ~(g.prot & l0.prot) or s.rc & ~(g.rc & l0.rc):
        return (f"allows {s.prot:#x} R/C {s.rc:#x}, beyond L1's PTE {g.pte:#x} and L0's "
                f"{l0.pte:#x}")
    if l0.gpa >> PAGE_SHIFT not in index.get((gp.l1_lpid, s.gpa), []):
        return f"no rmap entry on L1 GFN {l0.gpa >> PAGE_SHIFT:#x}, L0's page for it"
    return None


def shadow_composition(l1: L1Host, l1_editing: L1Editing, read: ReadFn | None = None
                       ) -> str | None:
    """The shadow-composition invariant (see the module notes): claim (A) for every shadow
    PTE, (B) for those L1 is not editing. L1's memory is read only through ``read`` (default
    ``l1.read_guest``), so a caller can tell which of it the answer depends on."""
    mmu = l1.mmu
    read = read or l1.read_guest
    index = None
    for _, gp in sorted(l1.live.items()):
        for s in gp.shadow_pgtable.leaves():
            if index is None:
                index = _rmap_index(mmu)
            problem = _reachable(mmu, index, gp, s)
            if problem is None and not l1_editing(gp.l1_lpid, s.gpa, s.gpa + s.size):
                problem = _composed(mmu, index, gp, s, read)
            if problem is not None:
                return (f"shadow PTE {s.pte:#x} of nested guest {gp.l1_lpid} (shadow LPID "
                        f"{gp.shadow_lpid}) at L2 {s.gpa:#x}: {problem}")
    return None


def nested_rmap_unique(mmu: RadixMmu) -> str | None:
    """No nested rmap word holds an entry twice."""
    for slot, words in mmu.rmap.items():
        for i, word in sorted(words.items()):
            dups = word.duplicates()
            if dups:
                entries = ", ".join(f"(lpid {n_rmap_lpid(e)}, L2 {n_rmap_gpa(e):#x})"
                                    for e in dups)
                return (f"the nested rmap of L1 GFN {slot.base_gfn + i:#x} holds {entries} "
                        f"more than once ({len(word.entries())} entries)")
    return None


def l1_pgtable_current(mmu: RadixMmu) -> str | None:
    """Every 64K leaf of L1's table in L0 maps the host page now behind its GFN."""
    kvm = mmu.kvm
    for leaf in mmu.pgtable.leaves():
        if leaf.shift != PAGE_SHIFT:
            continue
        gfn = leaf.gpa >> PAGE_SHIFT
        slot = next((s for s in kvm.memslots if s.contains(gfn)), None)
        host = kvm.mm.get_pte(slot.userspace_addr + ((gfn - slot.base_gfn) << PAGE_SHIFT)) \
            if slot is not None else 0
        if host != leaf.pfn:
            return (f"L0 maps L1 GFN {gfn:#x} to host page {leaf.pfn:#x}, but QEMU's page "
                    f"there is {host:#x}: an invalidation was missed")
    return None
