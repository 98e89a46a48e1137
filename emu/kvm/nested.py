"""Nested guests as L0 keeps them for an L1 hypervisor (book3s_hv_nested.c, the IDR form of
v6.x, 2022 onwards): H_SET_PARTITION_TABLE, get / put / remove / release with the refcount,
the shadow LPID, the partition-table cache, and H_TLB_INVALIDATE's LPID scopes.

Life cycle of one ``kvm_nested_guest`` (refcnt = 1 while the IDR holds it, + 1 per caller of
``kvmhv_get_nested`` that has not yet called ``kvmhv_put_nested``):

| state     | event                                   | next                              |
|-----------|-----------------------------------------|-----------------------------------|
| (none)    | get_nested(create): alloc, idr_alloc,   | live, refcnt 2 (table + caller)   |
|           | idr_replace under mmu_lock              |                                   |
| (none)    | get_nested(create) loses the race       | its newgp released; the winner's  |
|           |                                         | gp gets the caller's reference    |
| live      | get_nested (found under mmu_lock)       | live, refcnt + 1                  |
| live      | put_nested                              | live, or released at refcnt 0     |
| live      | remove_nested (RIC=2 finds PATE dw0 0)  | out of the IDR, refcnt - 1        |
| refcnt 0  | release_nested: free shadow tables,     | freed: any later use is a         |
|           | clear the shadow PATE, free the LPID    | use-after-free                    |

Locks (kernel-model 2.10): ``kvm->srcu`` -> ``gp->tlb_lock`` (mutex) -> ``kvm->mmu_lock``
(spinlock: the IDR's lookups and refcounts). Allocation sleeps, so it happens outside
mmu_lock.

Quirks (candidates read from the code, not confirmed upstream; on by default in no
release profile until someone confirms them):
- ``idr-alloc-unlocked`` (C1): ``__prealloc_nested`` calls ``idr_alloc`` with no lock while
  ``idr_replace`` / ``idr_remove`` run under mmu_lock; the IDR needs its writers serialised.
  The fixed model preloads outside the lock and allocates under mmu_lock.
- ``tlbie-all-lpid-no-ref`` (C2): ``kvmhv_emulate_tlbie_all_lpid`` drops mmu_lock around
  each guest without taking a reference, so a concurrent RIC=2 can free it. The fixed model
  takes a reference under mmu_lock and puts it after.
- ``radix-dump-lockless`` (C3): the debugfs ``radix`` file walks the shadow tables without
  mmu_lock while they may be freed (emu/kvm/radix_debugfs.py).

and one historic form: ``rmap-no-dedup`` puts back the nested rmap without its duplicate
scan (emu/kvm/radix_mmu.py, ``kvmhv_insert_nest_rmap``).

Coverage (``sim.coverage``, kind ``nested-transition``): each row of the table above is an
item (``NESTED_TRANSITIONS``), reported where the kernel takes it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from ..hw.radix import (
    PRTB_MASK,
    PRTS_MASK,
    RadixTree,
    TableMemory,
    read_pate,
    read_span,
    write_span,
)
from ..sim import accesses, coverage
from .hvcall import H_PARAMETER, H_SUCCESS

KVM_MAX_NESTED_GUESTS_SHIFT = 12
"""asm/kvm_book3s_64.h: an L1 may have at most 4096 nested LPIDs."""
NESTED_QUIRKS = {
    "idr-alloc-unlocked": "C1 (candidate, since the IDR form, v5.19): __prealloc_nested calls "
                          "idr_alloc with no lock while idr_replace/idr_remove hold mmu_lock",
    "create-race-fails": "C1b (candidate, since the IDR form, v5.19): two vCPUs create the "
                         "same new nested LPID; the second's idr_alloc at that exact id "
                         "fails and its H_ENTER_NESTED returns a spurious H_PARAMETER (the "
                         "fixed model looks the guest up again)",
    "tlbie-all-lpid-no-ref": "C2 (since v4.20; a fix is in the 2026 stable queues): the "
                             "IS=3 flush drops mmu_lock around each nested guest without "
                             "holding a reference",
    "radix-dump-lockless": "C3 (candidate, since the v4.20 nested series added the shadow "
                           "tables to the debugfs radix file): debugfs_radix_read walks "
                           "them with READ_ONCE and no mmu_lock while an H_TLB_INVALIDATE "
                           "frees their table pages",
    "rmap-no-dedup": "the nested rmap without its duplicate scan: the scan was there from "
                     "the start (8cf531ed48cf, v4.20, 'Introduce rmap to track nested guest "
                     "mappings'); the quirk models its absence, an L1 that invalidates and "
                     "refaults one L2 page growing L0's rmap list without bound",
    "enter-nested-no-srcu": "B7 (360cae313702, v4.20 to v5.8; fixed in v5.9 by 'KVM: PPC: "
                            "Protect kvm_vcpu_read_guest with srcu locks', id unconfirmed): "
                            "H_ENTER_NESTED reads and writes back L1 memory outside "
                            "kvm->srcu, so a memslot delete can free a slot under the copy",
    "no-tm-sanitise": "B9 (360cae313702, v4.20 to v5.13; fixed by d9c57d3ed52a, v5.14): no "
                      "TM checks in H_ENTER_NESTED, so L2 can be entered with an MSR[TS] "
                      "L0 cannot recheckpoint (a TM Bad Thing on L0's hrfid)",
    "no-hfscr-sanitise": "7487cabc7ed2 masked L2's HFSCR with vcpu->arch.hfscr after "
                         "restore_hv_regs had put L2's own request there (L1's request "
                         "unmasked); the next commit, 8b210a880b35, masks with "
                         "hfscr_permitted; both in v5.15, so in no release",
}


def _touch(kind: str, lpid: int | None = None, write: bool = False) -> None:
    """This step reads (writes) an object of the access relation: ``lpids`` (the host's
    LPID allocator), ``idr:<L1 lpid>`` (L1's nested-guest IDR), ``ptcr:<L1 lpid>`` (its
    partition-table register), ``nested:<L1 lpid>:<nested lpid>:<shadow lpid>`` (one
    ``kvm_nested_guest``: its references, cached PATE, freed or not; two guests created
    for the same nested lpid at once have different shadow LPIDs). The name is built only
    when accesses are recorded (these run on every H_ENTER_NESTED)."""
    if accesses.current.on:
        accesses.current.touch(kind if lpid is None else f"{kind}:{lpid}", write)


class LpidPool:
    """kvmppc_alloc_lpid / kvmppc_free_lpid (book3s.c): host-global LPIDs, shared by
    ordinary VMs and shadow LPIDs, lowest free first (ida_alloc_range)."""

    def __init__(self, nr_lpids: int, reserved: tuple[int, ...] = (0,)) -> None:
        self.nr_lpids = nr_lpids
        self.used: set[int] = set(reserved)

    def alloc(self) -> int:
        """The lowest free LPID, or -1 (-ENOMEM) when none is left."""
        _touch("lpids", write=True)
        for lpid in range(self.nr_lpids):  # (small: LPIDs are 12 bits)
            if lpid not in self.used:
                self.used.add(lpid)
                return lpid
        return -1

    def free(self, lpid: int) -> None:
        _touch("lpids", write=True)
        self.used.remove(lpid)


@attrs.define(eq=False)
class KvmNestedGuest:
    """struct kvm_nested_guest."""

    l1_host: L1Host
    l1_lpid: int
    shadow_lpid: int
    shadow_pgtable: RadixTree
    tlb_lock: Any
    refcnt: int = 0
    l1_gr_to_hr: int = 0
    """PATE dw0 of L1's table for this guest (the root of its L2->L1 table); 0: none."""
    process_table: int = 0
    prev_cpu: dict[int, int] = attrs.Factory(dict)
    """vcpu_token -> the pCPU it last ran on (the kernel's short[NR_CPUS] of -1)."""
    need_tlb_flush: set[int] = attrs.Factory(set)
    """The pCPUs whose TLB must be flushed for this guest before it runs there."""
    held: int = 0
    """Model bookkeeping, not the kernel's: the references handed out (by get_nested, or
    taken by a walker) and not yet put, changed in the same step as ``refcnt``."""
    freed: bool = False


@attrs.define(eq=False)
class L1Host:
    """What ``kvm->arch`` holds for nesting: the L1's partition-table register, the IDR of
    its nested guests, and the ways to reach L1 memory and the TLBs.

    ``read_guest(addr)`` is kvm_read_guest of one doubleword of L1 memory, None when no
    visible memslot holds it, and ``write_guest(addr, value)`` kvm_write_guest of one (False
    when none does); a doubleword holds its bytes big-endian first, as memory does.
    ``flush_lpid(lpid)`` is kvmhv_flush_lpid on bare metal (radix__flush_all_lpid: a tlbie
    of every set for that LPID)."""

    kvm: Any
    """The L1's ``KVM`` (its ``srcu``, ``mmu_lock`` and ``m``)."""
    lpids: LpidPool
    tables: TableMemory
    """L0 memory for the shadow page tables."""
    read_guest: Callable[[int], int | None]
    write_guest: Callable[[int, int], bool]
    flush_lpid: Callable[[int], None]
    set_ptbl_entry: Callable[[int, int, int], None]
    """mmu_partition_table_set_entry(lpid, dw0, dw1, flush=true): L0's own partition table;
    it flushes that LPID itself, as kvmhv_set_ptbl_entry does on pseries."""
    quirks: tuple[str, ...] = ()
    l1_ptcr: int = 0
    idr: dict[int, KvmNestedGuest | None] = attrs.Factory(dict)
    """kvm->arch.kvm_nested_guest_idr: lpid -> guest (None: allocated, not yet replaced)."""
    idr_writer: str | None = None
    """The actor inside an IDR write (to catch unserialised writers)."""
    live: dict[int, KvmNestedGuest] = attrs.Factory(dict)
    """Model bookkeeping: shadow LPID -> every allocated guest not yet freed."""
    guests_version: int = 0
    """Model bookkeeping: bumped when a guest joins or leaves ``live`` or its cached PATE
    (``l1_gr_to_hr``, ``process_table``) is reloaded."""
    lifetime_version: int = 0
    """Model bookkeeping: bumped by every change of what ``nested_lifetime`` reads (the IDR,
    ``live``, a guest's ``refcnt``, ``held`` and ``freed``), for its key."""
    mmu: Any = None
    """L0's MMU for this L1 (emu/kvm/radix_mmu.py ``RadixMmu``: kvm->arch.pgtable, the
    notifier sequence, the memslots' nested rmaps), which sets it; None where only the life
    cycle is modelled."""
    copy_from_user: Callable[[int, int], bytes | None] = attrs.field(default=attrs.Factory(
        lambda self: lambda addr, n: read_span(self.read_guest, addr, n), takes_self=True))
    """__copy_from_user(addr, n) inside one page whose memslot the caller looked up
    (kvm_vcpu_read_guest's segment): through that slot's host mapping, so no further
    lookup; None if a doubleword cannot be read. Default: ``read_guest`` a doubleword at a
    time; a machine that holds L1 memory copies the span at once."""
    copy_to_user: Callable[[int, bytes], bool] = attrs.field(default=attrs.Factory(
        lambda self: lambda addr, data: write_span(self.read_guest, self.write_guest, addr,
                                                   data), takes_self=True))
    """__copy_to_user(addr, data) inside one page whose memslot the caller looked up."""

    @property
    def m(self) -> Any:
        return self.kvm.m


# ------------------------------------------------------------------ the IDR
async def _idr_write(l1: L1Host, what: str, change: Callable[[], Any]) -> Any:
    """An IDR write is not one step: its radix tree is rewritten node by node, so a second
    writer meanwhile corrupts it. Callers must serialise (mmu_lock here)."""
    m = l1.m
    me = m.ctl.current.name
    _touch("idr", l1.kvm.lpid, True)
    if l1.idr_writer is not None:
        m.fail("idr", f"{what} by {me} while {l1.idr_writer} writes the nested-guest IDR: "
               "the IDR's writers are not serialised")
    l1.idr_writer = me
    await m.point(f"{what} (IDR nodes)")
    _touch("idr", l1.kvm.lpid, True)
    l1.idr_writer = None
    done = change()
    l1.lifetime_version += 1
    return done


def _find_nested(l1: L1Host, lpid: int) -> KvmNestedGuest | None:
    """__find_nested: idr_find (mmu_lock held, or RCU)."""
    _touch("idr", l1.kvm.lpid)
    return l1.idr.get(lpid)


def _idr_get_next(l1: L1Host, lpid: int) -> int:
    """idr_get_next from ``lpid + 1`` (mmu_lock held): the next lpid with a guest (entries
    still NULL after __prealloc_nested are skipped), or -1."""
    _touch("idr", l1.kvm.lpid)
    return min((i for i, g in l1.idr.items() if i > lpid and g is not None), default=-1)


async def _prealloc_nested(l1: L1Host, lpid: int) -> bool:
    """__prealloc_nested: idr_alloc(NULL) at exactly ``lpid``; fails if taken."""
    def alloc() -> bool:
        if lpid in l1.idr:
            return False
        l1.idr[lpid] = None
        return True
    return await _idr_write(l1, f"idr_alloc lpid {lpid}", alloc)


def _touch_gp(gp: KvmNestedGuest, write: bool = False) -> None:
    if accesses.current.on:
        accesses.current.touch(f"nested:{gp.l1_host.kvm.lpid}:{gp.l1_lpid}:{gp.shadow_lpid}",
                               write)


def _use(gp: KvmNestedGuest, what: str) -> None:
    _touch_gp(gp)
    if gp.freed:
        gp.l1_host.m.fail("use-after-free", f"{what} of nested guest {gp.l1_lpid} (shadow "
                          f"LPID {gp.shadow_lpid}), freed by kvmhv_release_nested")


def _get(gp: KvmNestedGuest) -> None:
    """Take a reference (mmu_lock held)."""
    _touch_gp(gp, True)
    gp.refcnt += 1
    gp.held += 1
    gp.l1_host.lifetime_version += 1


# ------------------------------------------------------------------ life cycle
NESTED = "nested-transition"
CREATED, LOST, FOUND = ("(none) --get_nested(create)--> live",
                        "(none) --get_nested(create) loses the race--> its newgp released",
                        "live --get_nested--> live")
PUT, PUT_LAST = "live --put_nested--> live", "live --put_nested--> released (refcnt 0)"
REMOVED = "live --remove_nested--> out of the IDR"
RELEASED = "refcnt 0 --release_nested--> freed"
REMOVE_VS_ENTER = "kvmhv_remove_nested ~ H_ENTER_NESTED of the same guest"
"""Coverage (``Machine.racing``): a removal while another vCPU runs that guest."""
NESTED_TRANSITIONS = (CREATED, LOST, FOUND, PUT, PUT_LAST, REMOVED, RELEASED)
"""The rows of the life-cycle table, as coverage items."""


async def kvmhv_alloc_nested(l1: L1Host, lpid: int) -> KvmNestedGuest | None:
    m = l1.m
    await m.point(f"kvmhv_alloc_nested lpid {lpid} (kzalloc, pgd_alloc)")
    shadow_lpid = l1.lpids.alloc()
    if shadow_lpid < 0:
        return None
    gp = KvmNestedGuest(l1, lpid, shadow_lpid, RadixTree(l1.tables),
                        m.mutex(f"tlb_lock[{lpid}]", lock_class="tlb_lock"))
    _touch_gp(gp, True)
    l1.live[shadow_lpid] = gp
    l1.guests_version += 1
    l1.lifetime_version += 1
    return gp


def kvmhv_release_nested(gp: KvmNestedGuest) -> None:
    """No vCPU uses it and no get_nested can find it: no mmu_lock needed."""
    l1 = gp.l1_host
    _use(gp, "kvmhv_release_nested")
    coverage.current.cover(NESTED, RELEASED)
    _touch_gp(gp, True)
    gp.shadow_pgtable.destroy()  # kvmppc_free_pgtable_radix + pgd_free
    l1.set_ptbl_entry(gp.shadow_lpid, 0, 0)  # (which flushes the LPID)
    l1.lpids.free(gp.shadow_lpid)
    del l1.live[gp.shadow_lpid]
    gp.freed = True
    l1.guests_version += 1
    l1.lifetime_version += 1


async def kvmhv_get_nested(l1: L1Host, l1_lpid: int, create: bool) -> KvmNestedGuest | None:
    _touch("ptcr", l1.kvm.lpid)
    if l1_lpid >= 1 << ((l1.l1_ptcr & PRTS_MASK) + 12 - 4):
        return None
    mmu_lock = l1.kvm.mmu_lock
    while True:
        await mmu_lock.lock()
        gp = _find_nested(l1, l1_lpid)
        if gp is not None:
            _use(gp, "kvmhv_get_nested")
            coverage.current.cover(NESTED, FOUND)
            _get(gp)
        mmu_lock.unlock()
        if gp is not None or not create:
            return gp
        newgp = await kvmhv_alloc_nested(l1, l1_lpid)
        if newgp is None:
            return None
        if "idr-alloc-unlocked" in l1.quirks:
            ok = await _prealloc_nested(l1, l1_lpid)  # the kernel: no lock held
        else:  # idr_preload outside, idr_alloc(GFP_NOWAIT) under mmu_lock
            await mmu_lock.lock()
            ok = await _prealloc_nested(l1, l1_lpid)
            mmu_lock.unlock()
        if ok:
            break
        coverage.current.cover(NESTED, LOST)
        kvmhv_release_nested(newgp)
        if "create-race-fails" in l1.quirks:
            return None  # the kernel: H_ENTER_NESTED says H_PARAMETER
        # another vCPU holds the id while it creates the same guest: look again
        await l1.m.yield_point(f"kvmhv_get_nested lpid {l1_lpid}: being created, retry")
    await mmu_lock.lock()
    gp = _find_nested(l1, l1_lpid)
    if gp is None:
        await _idr_write(l1, f"idr_replace lpid {l1_lpid}",
                         lambda: l1.idr.__setitem__(l1_lpid, newgp))
        _touch_gp(newgp, True)
        newgp.refcnt += 1  # the table's reference
        l1.lifetime_version += 1
        gp, newgp = newgp, None
    _get(gp)
    mmu_lock.unlock()
    coverage.current.cover(NESTED, CREATED if newgp is None else LOST)
    if newgp is not None:
        kvmhv_release_nested(newgp)
    return gp


async def kvmhv_put_nested(gp: KvmNestedGuest) -> None:
    mmu_lock = gp.l1_host.kvm.mmu_lock
    await mmu_lock.lock()
    _use(gp, "kvmhv_put_nested")
    _touch_gp(gp, True)
    gp.refcnt -= 1
    gp.held -= 1
    gp.l1_host.lifetime_version += 1
    ref = gp.refcnt
    mmu_lock.unlock()
    coverage.current.cover(NESTED, PUT_LAST if ref == 0 else PUT)
    if ref == 0:
        kvmhv_release_nested(gp)


async def kvmhv_remove_nested(gp: KvmNestedGuest) -> None:
    l1 = gp.l1_host
    await l1.kvm.mmu_lock.lock()
    _use(gp, "kvmhv_remove_nested")
    if gp is _find_nested(l1, gp.l1_lpid):
        await _idr_write(l1, f"idr_remove lpid {gp.l1_lpid}",
                         lambda: l1.idr.pop(gp.l1_lpid))
        coverage.current.cover(NESTED, REMOVED)
        l1.m.racing(REMOVE_VS_ENTER, "kvmhv_enter_nested_guest", l2=gp)
        _touch_gp(gp, True)
        gp.refcnt -= 1
        l1.lifetime_version += 1
    ref = gp.refcnt
    l1.kvm.mmu_lock.unlock()
    if ref == 0:
        kvmhv_release_nested(gp)


# ------------------------------------------------------------------ partition table
async def kvmhv_set_partition_table(l1: L1Host, ptcr: int) -> int:
    """H_SET_PARTITION_TABLE: r4 = the partition table's guest real address | log2(size)
    - 12, as the PTCR. H_PARAMETER if it would hold more than 2**12 entries or its base
    is not in a visible memslot."""
    kvm = l1.kvm
    idx = await kvm.srcu.read_lock()
    ret = H_SUCCESS
    if (ptcr & PRTS_MASK) + 12 - 4 > KVM_MAX_NESTED_GUESTS_SHIFT or \
            l1.read_guest(ptcr & PRTB_MASK) is None:  # kvm_is_visible_gfn
        ret = H_PARAMETER
    kvm.srcu.read_unlock(idx)
    if ret == H_SUCCESS:
        _touch("ptcr", kvm.lpid, True)
        l1.l1_ptcr = ptcr
    return ret


def kvmhv_set_nested_ptbl(gp: KvmNestedGuest) -> None:
    gp.l1_host.set_ptbl_entry(gp.shadow_lpid, gp.shadow_pgtable.pate_dw0, gp.process_table)


async def kvmhv_update_ptbl_cache(gp: KvmNestedGuest) -> None:
    """Reload the guest's partition-table entry from L1 memory (tlb_lock held)."""
    l1 = gp.l1_host
    _use(gp, "kvmhv_update_ptbl_cache")
    _touch("ptcr", l1.kvm.lpid)
    pate = None
    if gp.l1_lpid < 1 << ((l1.l1_ptcr & PRTS_MASK) + 12 - 4):
        idx = await l1.kvm.srcu.read_lock()
        pate = read_pate(l1.read_guest, l1.l1_ptcr, gp.l1_lpid)
        l1.kvm.srcu.read_unlock(idx)
    _touch_gp(gp, True)
    gp.l1_gr_to_hr, gp.process_table = (pate.dw0, pate.dw1) if pate else (0, 0)
    l1.guests_version += 1
    kvmhv_set_nested_ptbl(gp)


# ------------------------------------------------------------------ H_TLB_INVALIDATE scopes
async def kvmhv_flush_nested(gp: KvmNestedGuest) -> None:
    """RIC=2 (tlb_lock held): free the shadow tables, flush, re-read the PATE, and remove
    the guest if L1 cleared its entry."""
    l1 = gp.l1_host
    await l1.kvm.mmu_lock.lock()
    _use(gp, "kvmhv_flush_nested")
    gp.shadow_pgtable.clear()
    l1.kvm.mmu_lock.unlock()
    l1.flush_lpid(gp.shadow_lpid)
    await kvmhv_update_ptbl_cache(gp)
    if gp.l1_gr_to_hr == 0:
        await kvmhv_remove_nested(gp)


async def kvmhv_emulate_tlbie_lpid(gp: KvmNestedGuest, ric: int) -> None:
    l1 = gp.l1_host
    _use(gp, "mutex_lock(&gp->tlb_lock)")
    await gp.tlb_lock.lock()
    if ric == 0:  # the TLB
        await l1.kvm.mmu_lock.lock()
        _use(gp, "kvmppc_free_pgtable_radix")
        gp.shadow_pgtable.clear()
        l1.flush_lpid(gp.shadow_lpid)
        l1.kvm.mmu_lock.unlock()
    elif ric == 2:  # TLB, PWC and the cached partition-table entry
        await kvmhv_flush_nested(gp)
    # ric 1 (the PWC): L0 caches no page walks of L1's tables
    gp.tlb_lock.unlock()


async def kvmhv_emulate_tlbie_all_lpid(l1: L1Host, ric: int) -> None:
    mmu_lock = l1.kvm.mmu_lock
    await mmu_lock.lock()
    lpid = -1
    while True:  # idr_for_each_entry: idr_get_next above the last id, each time relocked
        lpid = _idr_get_next(l1, lpid)
        if lpid < 0:
            break
        gp = l1.idr[lpid]
        if "tlbie-all-lpid-no-ref" in l1.quirks:
            mmu_lock.unlock()
            await kvmhv_emulate_tlbie_lpid(gp, ric)
            await mmu_lock.lock()
            continue
        _get(gp)  # the fix: hold the guest while mmu_lock is dropped
        mmu_lock.unlock()
        await kvmhv_emulate_tlbie_lpid(gp, ric)
        await kvmhv_put_nested(gp)
        await mmu_lock.lock()
    mmu_lock.unlock()


async def kvmhv_nested_next_lpid(l1: L1Host, lpid: int) -> int:
    """The next nested lpid after ``lpid`` with a guest, or -1 (the debugfs dump's cursor)."""
    await l1.kvm.mmu_lock.lock()
    lpid = _idr_get_next(l1, lpid)
    l1.kvm.mmu_lock.unlock()
    return lpid


def nested_lifetime(l1: L1Host) -> str | None:
    """The nested-lifetime invariant: a guest's refcnt is 1 while the IDR holds it plus the
    references outstanding, and never lower; the IDR points at no freed guest; shadow LPIDs
    are unique among live guests."""
    for shadow, gp in sorted(l1.live.items()):
        in_idr = l1.idr.get(gp.l1_lpid) is gp
        if gp.refcnt != in_idr + gp.held or gp.held < 0:
            return (f"nested guest {gp.l1_lpid} (shadow LPID {shadow}): refcnt {gp.refcnt}, "
                    f"but {'the IDR and ' if in_idr else ''}{gp.held} outstanding "
                    "references account for " + str(in_idr + gp.held))
    seen: dict[int, int] = {}
    for lpid, gp in sorted(l1.idr.items()):
        if gp is not None and gp.freed:
            return f"nested guest {lpid} was freed while the IDR still points at it"
        if gp is not None and seen.setdefault(gp.shadow_lpid, lpid) != lpid:
            return f"nested guests {seen[gp.shadow_lpid]} and {lpid} share a shadow LPID"
    return None
