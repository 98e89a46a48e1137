"""Kernel releases: which historic bugs each modelled release has, and what else in the
model is keyed to the release.

Every quirk of ``uvmem.QUIRKS`` has a history (``QUIRK_HISTORY``): its bug id, the commit and
release that introduced it and the commit and release that fixed it (None: still upstream;
an introduction of None: never in a release, e.g. caught in review). A quirk is on in a
release R exactly when ``introduced_in <= R < fixed_in``. Besides the quirks, three pieces of
behaviour differ between releases (``Behaviour``):

- ``memslot_walk``: before v5.17 ``kvm_for_each_memslot`` walked the memslot array, kept
  sorted by descending base GFN; from v5.17 (a54d806688fe "KVM: Keep memslots in tree-based
  structures instead of array-based ones") it is ``hash_for_each`` over ``id_hash``
  (``DECLARE_HASHTABLE(id_hash, 7)``, keyed by slot id): buckets in order of
  ``hash_32(id, 7)``, the newest slot first within a bucket. It is not GFN order.
- ``page_free``: before v6.1 a device page's last reference went in ``migrate_vma_finalize``,
  so ``kvmppc_uvmem_page_free`` ran inside the page-out with ``uvmem_lock`` held. From v6.1
  (16ce101db85d "mm/memory.c: fix race when faulting a device private page") ``do_swap_page``
  takes a reference on the device page around ``->migrate_to_ram`` and drops it after the
  handler returns, so on the host-fault path ``page_free`` (bitmap bit, pvt, and the GFN's
  state word: MEM_PFN or 0) runs after ``uvmem_lock`` was released. Until then the device
  page is still allocated, its pvt still linked and the GFN still says UVMEM with that pfn,
  while QEMU's PTE already maps the new normal page. Page-outs not started by a fault
  (H_SVM_PAGE_OUT, drop_pages) pass no fault page and still free inside the lock.
- ``init_start_rollback``: before v5.9 H_SVM_INIT_START had no rollback at all (a failing
  registration returned H_PARAMETER and left the earlier slots registered); the loop that
  B8 gets wrong came with "Disable page merging in H_SVM_INIT_START" (v5.9).

The default (no ``--kernel``) is not a release: it is the model as written, U1 (~v5.15/5.16)
with every known fix, B8's evident fix included, the pre-5.17 walk and the pre-6.1 free.
"""

from __future__ import annotations

import attrs

from ..sim.releases import QuirkHistory, quirk_matrix, release_bugs, version
from ..sim.scenario import Releases, register_releases

GOLDEN_RATIO_32 = 0x61C88647
ID_HASH_BITS = 7


def hash_32(val: int, bits: int) -> int:
    """include/linux/hash.h (the generic __hash_32: powerpc has no arch hash)."""
    return ((val * GOLDEN_RATIO_32) & 0xFFFF_FFFF) >> (32 - bits)


@attrs.frozen
class Behaviour:
    memslot_walk: str = "gfn-descending"
    """"gfn-descending" (the array, before v5.17) or "id-hash" (hash_for_each, v5.17+)."""
    page_free: str = "in-finalize"
    """"in-finalize" (before v6.1) or "after-fault" (do_swap_page's reference, v6.1+)."""
    init_start_rollback: str = "loop"
    """"none" (before v5.9) or "loop" (v5.9+; B8 is the loop deleting the wrong slot)."""


DEFAULT = Behaviour()


@attrs.frozen
class Release:
    name: str
    why: str
    """What makes this release worth modelling."""
    behaviour: Behaviour

    @property
    def version(self) -> tuple[int, ...]:
        return version(self.name)


_OLD = Behaviour("gfn-descending", "in-finalize", "none")
_ROLLBACK = Behaviour("gfn-descending", "in-finalize", "loop")
_HASH = Behaviour("id-hash", "in-finalize", "loop")
_LATE_FREE = Behaviour("id-hash", "after-fault", "loop")

RELEASES: dict[str, Release] = {r.name: r for r in (
    Release("v5.5", "book3s_hv_uvmem.c appears (ca9f4942670c 'Support for running secure "
                    "guests')", _OLD),
    Release("v5.6", "B1 fixed (e032e3b55b6f; also 5.5.5 stable)", _OLD),
    Release("v5.7", "B5 fixed ('H_SVM_INIT_START must call UV_RETURN'); B4 introduced "
                    "(8c47b6ff29e3 'Check caller of H_SVM_* Hcalls')", _OLD),
    Release("v5.8", "B4 fixed (e3326ae3d59e 'Relax check on H_SVM_INIT_ABORT')", _OLD),
    Release("v5.9", "the GFN-state series (651a63101134, dfaa973ae960; tag "
                    "kvm-ppc-next-5.9-1): B2 fixed, INIT_START rollback loop (B8) introduced",
            _ROLLBACK),
    Release("v5.17", "memslots in trees, kvm_for_each_memslot walks id_hash (a54d806688fe)",
            _HASH),
    Release("v6.1", "do_swap_page holds the device page across migrate_to_ram "
                    "(16ce101db85d): page_free after uvmem_lock is dropped", _LATE_FREE),
    Release("v6.12", "LTS: B8 still there, nothing else changed for the model since v6.1",
            _LATE_FREE),
    Release("v6.15", "the newest modelled: do_swap_page locks the device page (the fix of "
                     "M1, its release unconfirmed); B8 still there", _LATE_FREE),
)}
NEWEST = "v6.15"


SUPPORT = "ca9f4942670c"
"""'KVM: PPC: Book3S HV: Support for running secure guests' (v5.5)."""

QUIRK_HISTORY: dict[str, QuirkHistory] = {
    "page-out-lock-leak": QuirkHistory(
        "B1", SUPPORT, "v5.5", "e032e3b55b6f", "v5.6",
        "Fixes: ca9f4942670 (linux-next report on e032e3b55b6f); patch 2020-01-22; in the "
        "v5.6 KVM pull and in 5.5.5 stable (2020-02-21); the bug is in the 008e359c copy"),
    "single-flag-gfn-tracking": QuirkHistory(
        "B2", SUPPORT, "v5.5", "651a63101134", "v5.9",
        "kvm-ppc-next-5.9-1 pull (Ram Pai's series); the 008e359c copy has only "
        "KVMPPC_UVMEM_PFN"),
    "no-init-done-migration": QuirkHistory(
        "B2", SUPPORT, "v5.5", "dfaa973ae960", "v5.9",
        "kvm-ppc-next-5.9-1 pull; in the 008e359c copy H_SVM_INIT_DONE only sets the flag"),
    "strict-abort-caller-check": QuirkHistory(
        "B4", "8c47b6ff29e3", "v5.7", "e3326ae3d59e", "v5.8",
        "both in kvm-ppc-next pulls: 8c47b6ff29e3 with B5's fix (applied March 2020, AUTOSEL "
        "for 5.6/5.5 in April, so mainline v5.7); e3326ae3d59e posted 2020-05-20, AUTOSEL "
        "5.7 in June (mainline v5.8). Stable backports of either: unconfirmed"),
    "init-start-late-flag": QuirkHistory(
        "B5", SUPPORT, "v5.5", None, "v5.7",
        "'H_SVM_INIT_START must call UV_RETURN' (Laurent Dufour, posted 2020-03-20, applied "
        "to kvm-ppc-next for v5.7, AUTOSEL 5.6/5.5); its commit id is unconfirmed; the "
        "008e359c copy sets INIT_START only on success"),
    "svm-off-no-guard": QuirkHistory(
        "B6", None, None, None, None,
        "in no release: the mmu_ready / vcpus_running guard was asked for in review of "
        "'Support reset of secure guest' and is in the merged code read (~v5.16); that the "
        "v5.5 merge already had it is unconfirmed"),
    "init-start-rollback": QuirkHistory(
        "B8", None, "v5.9", None, None,
        "introduced by Ram Pai's 'Disable page merging in H_SVM_INIT_START' (patch v6 "
        "2020-07-27, kvm-ppc-next-5.9-1; commit id unconfirmed); still in a >= v6.3 copy "
        "read (vma_start_write, vm_flags_reset) and no fix was found: assumed in v6.12"),
    "uvmem-slot-leak": QuirkHistory(
        "-", SUPPORT, "v5.5", None, None,
        "found by emu (counting uvmem slots per memslot): kvmppc_uvmem_slot_free is called "
        "only from the memslot-delete hook and INIT_START's error path; kvmhv_svm_off "
        "(22945688acd4, v5.5) and kvmppc_h_svm_init_abort (v5.7) free none, in every copy "
        "read; VM destroy does not free the list either: kvmppc_core_destroy_vm_hv calls "
        "uv_svm_terminate and clears the PATE, kvm_free_memslots has no uvmem hook, and "
        "uvmem_pfns is touched only by kvmppc_uvmem_slot_init/_free and the lookups (v6.x "
        "copy read)"),
    "flags-only-drops-pages": QuirkHistory(
        "-", SUPPORT, "v5.5", None, None,
        "found by emu: kvmppc_core_commit_memory_region_hv calls kvmppc_radix_flush_memslot "
        "on a KVM_MR_FLAGS_ONLY that toggles KVM_MEM_LOG_DIRTY_PAGES, and that function "
        "calls kvmppc_uvmem_drop_pages(memslot, kvm, true) when INIT_START is set (v6.x copy "
        "read); the commit that added the drop to the radix flush (the v5.5 secure-guest "
        "series) is unconfirmed, so is whether QEMU ever turns dirty logging on for an SVM; "
        "in every release from v5.5"),
    "busy-page-fails": QuirkHistory(
        "-", "dfaa973ae960", "v5.9", None, None,
        "kvmppc_uv_migrate_mem_slot's 'if (ret) { ret = H_STATE; break; }' since the "
        "INIT_DONE migration came (dfaa973ae960, v5.9; H_SVM_PAGE_IN's H_PARAMETER for an "
        "uncollected page is older, but only INIT_DONE's form is dated here), still in a "
        "v6.x copy read; that a transient reference or a migration stops migrate_vma "
        "follows migrate_vma_check_page; whether the real UV retries is unconfirmed"),
    "page-in-hole-race": QuirkHistory(
        "-", SUPPORT, "v5.5", None, None,
        "kvmppc_svm_page_in has ignored the MIGRATE_PFN_MIGRATE that migrate_vma_pages "
        "clears on an aborted insert since the v5.5 series (the 'if (spage && pagein)' "
        "shape); still in a v6.x copy read; that a fault can fill the hole in that window "
        "follows migrate_vma_insert_page's pte_none check, and the UV's reaction is "
        "unconfirmed"),
    "fault-ref-no-page-lock": QuirkHistory(
        "M1", "16ce101db85d", "v6.1", None, "v6.15",
        "core mm, not uvmem: 16ce101db85d ('mm/memory.c: fix race when faulting a device "
        "private page', v6.1) made do_swap_page take a reference around ->migrate_to_ram "
        "without the page lock; 'mm/migrate: Trylock device page in do_swap_page' (Matthew "
        "Brost, posted 2024-09-11, for the livelock Xe SVM hit) added the trylock; that it "
        "first shipped in v6.15 is unconfirmed here"),
    "init-start-unserialised": QuirkHistory(
        "-", SUPPORT, "v5.5", None, None,
        "found by emu: the v5.5 secure-guest series registers memslots both in "
        "kvmppc_h_svm_init_start (srcu_read_lock, kvm_for_each_memslot) and in "
        "kvmppc_core_commit_memory_region_hv's KVM_MR_CREATE (under slots_lock), and "
        "nothing orders the two; still so in a v6.x copy read. What the real UV answers to "
        "a duplicate UV_REGISTER_MEM_SLOT is unconfirmed (the model's refuses it)"),
    "page-in-fail-leaves-uvmem": QuirkHistory(
        "-", SUPPORT, "v5.5", None, None,
        "kvmppc_svm_page_in's 'if (ret) goto out_finalize;' after uv_page_in, before "
        "'*mig.dst = migrate_pfn(page_to_pfn(dpage))', since the v5.5 series; still in a "
        "v6.x copy read. That the real UV fails a UV_PAGE_IN the HV asked for (busy, "
        "integrity) is unconfirmed"),
    "mr-move-unhandled": QuirkHistory(
        "-", SUPPORT, "v5.5", None, None,
        "'default: /* TODO: Handle KVM_MR_MOVE */' in kvmppc_core_commit_memory_region_hv "
        "since the v5.5 secure-guest series (the switch was in the posted 'Handle memory "
        "plug/unplug to secure VM'), still in a v6.x copy read: in every release from v5.5"),
}


def bugs(release: str) -> tuple[str, ...]:
    """The quirks ``release`` has, sorted."""
    return release_bugs(QUIRK_HISTORY, release)


def behaviour(release: str | None) -> Behaviour:
    """The release-keyed behaviour of ``release`` (None or unknown: the default model)."""
    r = RELEASES.get(release) if release is not None else None
    return r.behaviour if r is not None else DEFAULT


TABLE = Releases("kernel release", "--kernel", frozenset(QUIRK_HISTORY),
                 {name: bugs(name) for name in RELEASES})
register_releases(TABLE)


def matrix() -> str:
    """The release x quirk table (and the release-keyed behaviour) for ``emu list``."""
    names = list(RELEASES)
    width = max(len(q) for q in QUIRK_HISTORY) + 6
    lines = quirk_matrix(QUIRK_HISTORY, names, width)
    for key, short in (("memslot_walk", {"gfn-descending": "gfn", "id-hash": "hash"}),
                       ("page_free", {"in-finalize": "lock", "after-fault": "late"}),
                       ("init_start_rollback", {"none": "none", "loop": "loop"})):
        cells = "".join(f"{short[getattr(RELEASES[n].behaviour, key)]:>7}" for n in names)
        lines.append(f"{key:<{width}}{cells}{short[getattr(DEFAULT, key)]:>9}")
    lines.append("x: the release has the bug (introduced <= release < fixed); memslot_walk "
                 "gfn: descending base GFN, hash: id_hash buckets; page_free lock: inside "
                 "uvmem_lock, late: after the fault drops its reference; default: no --kernel "
                 "(every fix, B8's included)")
    return "\n".join(lines)
