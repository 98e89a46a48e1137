"""Kernel releases of the nested HV model: every nested quirk's history in one place, the
releases worth modelling, and the table that keys ``--kernel`` for the nested scenarios.

A quirk is on in a release R exactly when ``introduced_in <= R < fixed_in``
(``sim.releases.QuirkHistory``; an ``introduced_in`` of None: in no release). Nested HV came
in v4.20 (the kvm-ppc-next-4.20-1 pull), so no release before it is modelled.

| quirk                 | bug | releases       | introduced by              | fixed by             |
|-----------------------|-----|----------------|----------------------------|----------------------|
| enter-nested-no-srcu  | B7  | v4.20 - v5.8   | 360cae313702               | srcu locks, v5.9     |
| no-tm-sanitise        | B9  | v4.20 - v5.13  | 360cae313702               | d9c57d3ed52a, v5.14  |
| one-tlb-per-core      | B10 | v4.20 - v5.13  | the nested prev_cpu commit | 77bbbc0cf848, v5.14  |
| tlbie-all-lpid-no-ref | C2  | v4.20 - newest | H_TLB_INVALIDATE           | 2026: v7.3, inferred |
| radix-dump-lockless   | C3  | v4.20 - newest | shadow tables in debugfs   | still upstream       |
| idr-alloc-unlocked    | C1  | v5.19 - newest | c0f00a18e2a8 (the IDR)     | still upstream       |
| create-race-fails     | C1b | v5.19 - newest | c0f00a18e2a8 (the IDR)     | still upstream       |
| no-hfscr-sanitise     | -   | none           | 7487cabc7ed2               | 8b210a880b35 (same)  |
| no-prev-cpu-flush     | -   | none           | 360cae313702               | prev_cpu (same pull) |
| rmap-no-dedup         | -   | none           | (the dedup scan was there from the start)         |

Besides the quirks, H_ENTER_NESTED keys behaviour on the release itself
(``enter_nested._release``: hv_guest_state sizes, the LPCR and HFSCR masks, dec_expires);
the releases below include every tag it keys on. The default (no ``--kernel``) is not a
release: it is the model as written, the newest code with every candidate fixed.
"""

from __future__ import annotations

from ..sim.releases import QuirkHistory, quirk_matrix, release_bugs
from ..sim.scenario import Releases, register_releases

NESTED_ENTRY = "360cae313702"
"""'KVM: PPC: Book3S HV: Nested guest entry via hypercall' (v4.20)."""
IDR = "c0f00a18e2a8"
"""'KVM: PPC: Book3S HV Nested: Change nested guest lookup to use idr' (Nicholas Piggin,
posted 2022-01-23; in mainline with the v5.19 merge window, beside 03a2e65f54b3 'Use
explicit 4096 LPID maximum')."""
SERIES_4_20 = "kvm-ppc-next-4.20-1"
"""The pull that brought nested HV: H_ENTER_NESTED, the nested page fault and rmap,
H_TLB_INVALIDATE, the prev_cpu flush for nested vCPUs and the shadow tables in debugfs."""

HISTORY: dict[str, QuirkHistory] = {
    "enter-nested-no-srcu": QuirkHistory(
        "B7", NESTED_ENTRY, "v4.20", None, "v5.9",
        "'KVM: PPC: Protect kvm_vcpu_read_guest with srcu locks' (Alexey Kardashevskiy, "
        "posted 2020-06-09 after a lockdep splat in kvmhv_enter_nested_guest; in the "
        "'PPC KVM update for 5.9' pull, 'Locking fixes in nested KVM code'); its commit id "
        "is unconfirmed (a gitiles mirror shows it as the parent of 7ec21d9da57e). The same "
        "patch moved the pt_regs read before the version check"),
    "no-tm-sanitise": QuirkHistory(
        "B9", NESTED_ENTRY, "v4.20", "d9c57d3ed52a", "v5.14",
        "'KVM: PPC: Book3S HV Nested: Sanitise H_ENTER_NESTED TM state' (Nicholas Piggin, "
        "July 2021, Fixes: 360cae313702, stable v4.20+): both the L1-transactional test and "
        "the L1/L2 TS checks"),
    "one-tlb-per-core": QuirkHistory(
        "B10", f"'Invalidate TLB when nested vcpu moves physical cpu' ({SERIES_4_20})",
        "v4.20", "77bbbc0cf848", "v5.14",
        "77bbbc0cf848 'KVM: PPC: Book3S HV: Fix TLB management on SMT8 POWER9 and POWER10 "
        "processors' (Suraj Jitindar Singh, sent by Nicholas Piggin 2021-06-02, applied to "
        "powerpc/topic/ppc-kvm 2021-06-24, after v5.13-rc7: mainline v5.14; stable 5.13.2, "
        "AUTOSEL 5.12; no Fixes: tag). It replaces cpu_first_thread_sibling by "
        "cpu_first_tlb_thread_sibling in radix_flush_cpu, kvmppc_prepare_radix_vcpu and "
        "kvmppc_check_need_tlb_flush. L1's own vCPUs had the core-wide form before v4.20; "
        "the nested path has it from the v4.20 prev_cpu commit"),
    "tlbie-all-lpid-no-ref": QuirkHistory(
        "C2", f"'Implement H_TLB_INVALIDATE hcall' ({SERIES_4_20})", "v4.20", None, "v7.3",
        "kvmhv_emulate_tlbie_all_lpid drops mmu_lock around each guest it holds no "
        "reference to, in the array form (v4.20) and the IDR form (v5.19) alike. A fix, "
        "'KVM: PPC: Book3S HV: fix use-after-free in kvmhv_emulate_tlbie_all_lpid()', is in "
        "the stable queues of September 2026 (linux-7.2.y, 6.18.y, and older branches with "
        "c0f00a18e2a8 backported before it); its mainline id and text were not read: a "
        "7.2.y backport makes v7.3 its first release (inferred)"),
    "radix-dump-lockless": QuirkHistory(
        "C3", f"'Add nested shadow page tables to debugfs' ({SERIES_4_20})", "v4.20", None,
        None,
        "a candidate read from the code (book3s_64_mmu_radix.c @008e359c): debugfs_radix_read "
        "walks with READ_ONCE and no mmu_lock while kvmppc_free_pgtable_radix frees table "
        "pages under it; no fix was found"),
    "idr-alloc-unlocked": QuirkHistory(
        "C1", IDR, "v5.19", None, None,
        "a candidate read from the code (book3s_hv_nested.c @03a2e65f): __prealloc_nested "
        "calls idr_alloc with no lock while idr_replace/idr_remove hold mmu_lock; no fix "
        "was found. The array form before it had no such write"),
    "create-race-fails": QuirkHistory(
        "C1b", IDR, "v5.19", None, None,
        "a candidate read from the code (@03a2e65f): the second of two creators of one new "
        "lpid fails idr_alloc at that exact id; before the IDR the loser took the winner's "
        "guest ('someone else beat us to it'); no fix was found"),
    "no-hfscr-sanitise": QuirkHistory(
        "-", "7487cabc7ed2", None, "8b210a880b35", None,
        "7487cabc7ed2 'Sanitise vcpu registers' as applied (v2 05/60 of the P9 series) calls "
        "restore_hv_regs(vcpu, l2_hv) and then masks l2_hv->hfscr with vcpu->arch.hfscr, "
        "which now holds L2's own request; the diff of 8b210a880b35 'Make nested HFSCR "
        "state accessible' (06/60) replaces that mask with hfscr_permitted without saying "
        "so. Both are in the powerpc-5.15-1 pull, so no release has it"),
    "no-prev-cpu-flush": QuirkHistory(
        "-", NESTED_ENTRY, None,
        f"'Invalidate TLB when nested vcpu moves physical cpu' ({SERIES_4_20})", None,
        "seed 002: 'This does for nested guests what L0 already did for its own guests'; "
        "Suraj Jitindar Singh's commit (id unconfirmed) came in the same pull as "
        "H_ENTER_NESTED itself, so no release runs L2s without the prev_cpu flush"),
    "rmap-no-dedup": QuirkHistory(
        "-", None, None, None, None,
        "in no release: kvmhv_insert_nest_rmap has scanned for a duplicate since the rmap "
        "came (8cf531ed48cf 'Introduce rmap to track nested guest mappings', v4.20); the "
        "quirk models its absence"),
}

RELEASES: dict[str, str] = {
    "v4.20": "nested HV arrives (kvm-ppc-next-4.20-1): B7, B9, B10, C2, C3",
    "v5.4": "LTS; 13c7bb3c57dc ORs PCR_MASK into L2's pcr",
    "v5.9": "B7 fixed: H_ENTER_NESTED copies under kvm->srcu, pt_regs read before the version",
    "v5.10": "LTS; as v5.9 for the model",
    "v5.12": "afe75049303f: hv_guest_state version 2 (DAWR1), sized by version",
    "v5.13": "L2's LPCR passes kvmppc_filter_lpcr_hv",
    "v5.14": "B9 fixed (d9c57d3ed52a), B10 fixed (77bbbc0cf848)",
    "v5.15": "LTS; load_l2_hv_regs sanitises the vCPU, HFSCR limited by hfscr_permitted",
    "v5.16": "dec_expires moves with tb_offset",
    "v5.19": "the IDR (c0f00a18e2a8): C1 and C1b; LPES no longer L1's (2852ebfa10af)",
    "v6.1": "LTS; as v5.19 for the model",
    "v6.6": "LTS; as v5.19 for the model",
    "v6.12": "LTS, the newest modelled: C1, C1b, C2, C3 still there",
}
NEWEST = "v6.12"


def bugs(release: str | None) -> tuple[str, ...]:
    """The nested quirks ``release`` has, sorted (none for None: the default model)."""
    return release_bugs(HISTORY, release)


TABLE = Releases("kernel release", "--kernel", frozenset(HISTORY),
                 {name: bugs(name) for name in RELEASES})
register_releases(TABLE)


def matrix() -> str:
    """The release x quirk table of the nested scenarios, for ``emu list``."""
    lines = quirk_matrix(HISTORY, list(RELEASES), max(len(q) for q in HISTORY) + 6, col=6)
    lines.append("x: the release has the bug (introduced <= release < fixed); H_ENTER_NESTED "
                 "also keys its checks and register handling on the release "
                 "(emu/kvm/enter_nested.py); default: no --kernel (every fix)")
    return "\n".join(lines)

