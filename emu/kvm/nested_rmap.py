"""The nested rmap: which shadow PTEs of which nested guests map an L1 guest page.

Mirrors the ``RMAP_NESTED_*`` masks, ``struct rmap_nested`` and ``for_each_nest_rmap_safe``
(``arch/powerpc/include/asm/kvm_book3s_64.h``) and ``kvmhv_n_rmap_is_equal``,
``kvmhv_insert_nest_rmap``, ``kvmhv_remove_nest_rmap_list`` / ``kvmhv_free_memslot_nest_rmap``
(``llist_del_all`` then the walk) in ``arch/powerpc/kvm/book3s_hv_nested.c``, with the entry
built as in ``__kvmhv_nested_page_fault``. Unchanged from v4.20 to the newest sources read
(a 46-bit-frame layout for HPT nested guests was posted but not merged).

An entry is one u64: bits 63..52 the L1 lpid of the nested guest, bits 51..12 the L2 guest
real address of the shadow PTE (frame, not shifted down), bit 0 the single-entry tag. The
per-GFN word ``memslot->arch.rmap[gfn]`` is 0, one tagged entry, or an ``llist`` head of
``rmap_nested`` nodes whose last ``next`` is the entry that was there first, still tagged.
A word is one object of the access relation (``sim.accesses``), named by whoever makes it
(``rmap:<lpid>:<gfn>``): an insert and ``llist_del_all`` write it.
"""

from __future__ import annotations

from collections.abc import Iterator

import attrs

from ..sim import accesses

RMAP_NESTED_LPID_MASK = 0xFFF0_0000_0000_0000
RMAP_NESTED_LPID_SHIFT = 52
RMAP_NESTED_GPA_MASK = 0x000F_FFFF_FFFF_F000
RMAP_NESTED_IS_SINGLE_ENTRY = 0x1


def n_rmap_encode(lpid: int, n_gpa: int) -> int:
    """``(n_gpa & RMAP_NESTED_GPA_MASK) | ((unsigned long) l1_lpid << RMAP_NESTED_LPID_SHIFT)``
    as ``__kvmhv_nested_page_fault`` builds it (``n_gpa`` already aligned to the shadow PTE's
    size). The lpid is not masked: bits above 12 fall off the top of the u64."""
    return ((n_gpa & RMAP_NESTED_GPA_MASK) | (lpid << RMAP_NESTED_LPID_SHIFT)) & (2**64 - 1)


def n_rmap_lpid(rmap: int) -> int:
    """``(n_rmap & RMAP_NESTED_LPID_MASK) >> RMAP_NESTED_LPID_SHIFT``."""
    return (rmap & RMAP_NESTED_LPID_MASK) >> RMAP_NESTED_LPID_SHIFT


def n_rmap_gpa(rmap: int) -> int:
    """``n_rmap & RMAP_NESTED_GPA_MASK``: the L2 guest real address (the tag is dropped)."""
    return rmap & RMAP_NESTED_GPA_MASK


def n_rmap_is_equal(a: int, b: int) -> bool:
    """``kvmhv_n_rmap_is_equal``: same lpid and GPA frame; the tag bit does not count."""
    return not (a ^ b) & (RMAP_NESTED_LPID_MASK | RMAP_NESTED_GPA_MASK)


@attrs.define
class RmapWord:
    """One ``memslot->arch.rmap[gfn]`` word, shape kept visible: ``single`` is the tagged
    entry (held without its tag), which is the whole word when ``nodes`` is empty and the
    last node's ``next`` otherwise; ``nodes`` are the ``rmap_nested`` list nodes' entries,
    head first (newest first)."""

    single: int | None = None
    nodes: list[int] = attrs.Factory(list)
    name: str = attrs.field(default="rmap", kw_only=True, eq=False)
    """Its access name (``rmap:<lpid>:<gfn>``)."""

    @property
    def kind(self) -> str:
        """"empty" (word 0), "single" (word = entry | tag) or "list" (word -> nodes)."""
        if self.single is None:
            return "empty"
        return "list" if self.nodes else "single"

    def entries(self) -> tuple[int, ...]:
        """Every entry the word holds, head first, the tagged one last, without tags."""
        return (*self.nodes, self.single) if self.single is not None else ()

    def kernel_walk(self) -> Iterator[int]:
        """What ``for_each_nest_rmap_safe`` hands its body, in its order: the nodes' entries,
        then the tagged entry *with* its tag. The macro stops at an entry of 0 (its comment
        assumes none: "a nested rmap entry is always non-zero"), and a node's entry is 0 for
        L1 lpid 0 at L2 GPA 0; the tagged entry is never 0. So after a node with entry 0 the
        walk yields nothing more: the insert's dedup scan and the invalidation both stop
        there, and the older entries are neither invalidated nor freed. That cut is modelled
        here. That an L1 can reach it (L0 does not refuse lpid 0 in H_ENTER_NESTED; whether a
        Linux L1 ever allocates it was not checked) is a reading, not a confirmed report."""
        for entry in self.nodes:
            if entry == 0:
                return
            yield entry
        if self.single is not None:
            yield self.single | RMAP_NESTED_IS_SINGLE_ENTRY

    def insert(self, rmap: int, *, dedup: bool = True) -> bool:
        """``kvmhv_insert_nest_rmap`` (``kvm->mmu_lock`` held): an empty word takes ``rmap`` as
        the single tagged entry; otherwise, unless an entry the walk yields equals it
        (``n_rmap_is_equal``), a node is pushed at the head, a single entry becoming the
        list's tail. Returns False when the entry was dropped as a duplicate (the caller then
        frees its node). ``dedup=False`` skips the scan (the "rmap-no-dedup" quirk)."""
        if accesses.current.on:
            accesses.current.touch(self.name, True)
        if self.single is None:
            self.single = rmap
            return True
        if dedup and any(n_rmap_is_equal(e, rmap) for e in self.kernel_walk()):
            return False
        self.nodes.insert(0, rmap)
        return True

    def del_all(self) -> RmapWord:
        """``llist_del_all``: the word becomes 0 and the detached chain is returned. The
        kernel then walks it (``kernel_walk``) to invalidate and free each entry."""
        if accesses.current.on:
            accesses.current.touch(self.name, True)
        detached = RmapWord(self.single, self.nodes, name=self.name)
        self.single, self.nodes = None, []
        return detached

    def duplicates(self) -> tuple[int, ...]:
        """Entries held more than once (by ``n_rmap_is_equal``), each listed once: the rmap
        invariant wants this empty."""
        seen: list[int] = []
        dups: list[int] = []
        for e in self.entries():
            if any(n_rmap_is_equal(e, s) for s in seen):
                if not any(n_rmap_is_equal(e, d) for d in dups):
                    dups.append(e)
            else:
                seen.append(e)
        return tuple(dups)
