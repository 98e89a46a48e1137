"""Kernel releases of the arm64 pKVM model: every pKVM quirk's history, what else a release
changes in the host stage-2 ownership code (``Behaviour``), and the table that keys
``--kernel`` for the pkvm scenarios.

A quirk is on in a release R exactly when ``introduced_in <= R < fixed_in``
(``sim.releases.QuirkHistory``; an ``introduced_in`` of None: in no release). The host
stage-2 came in v5.13 (1025c8c0c6ac 'KVM: arm64: Wrap the host with a stage 2', with
807923e04a0f 'KVM: arm64: Use page-table to track page ownership', the seed), so no release
before it is modelled. The default (no ``--kernel``) is v6.16 as written, with every fix.

| quirk                | bug | releases      | introduced by | fixed by            |
|----------------------|-----|---------------|---------------|---------------------|
| pgd-refcount         | B11 | v5.13 - v5.14 | 1025c8c0c6ac  | 1d58a17ef545, v5.15 |
| abort-bug-on         | B12 | v5.13 - v6.9  | 1025c8c0c6ac  | 02949f36bc7b, v6.10 |
| check-apply-unlocked | -   | none          | check and apply always share one lock hold  |
| set-owner-no-tlbi    | -   | none          | set_owner always broke valid leaves w/ TLBI |
| unshare-ignores-pin  | -   | none          | pins and the -EBUSY came in one commit      |

What a release changes besides its quirks (``Behaviour``), by the first release with it:

| first | change (commits)                                                                   |
|-------|------------------------------------------------------------------------------------|
| v5.13 | host stage-2, host aborts idmap on demand; owner id in invalid PTEs at             |
|       | GENMASK(63,56) (1025c8c0c6ac, 807923e04a0f)                                        |
| v5.15 | owner id at GENMASK(9,2) (8a0282c68121); __pkvm_host_share_hyp, host and hyp states |
|       | in PTE SW bits, the share maps the page at EL2 at once ('Track shared pages at EL2') |
| v5.17 | do_share/do_unshare (e82edcc75c4e): __pkvm_host_unshare_hyp; the hyp-side checks of |
|       | host-initiated transitions only with CONFIG_NVHE_EL2_DEBUG                         |
| v6.2  | hyp_pin_shared_mem with the unshare -EBUSY (9926cfce8dcb); host<->hyp donation      |
|       | (1ed5c24c26f4); KVM_INVALID_PTE_LOCKED = BIT(10) (0ab12f3574db)                    |
| v6.5  | FF-A proxy: __pkvm_host_share_ffa/unshare_ffa ('Add FF-A helpers to share/unshare   |
|       | memory with secure world', kvmarm-6.5)                                             |
| v6.14 | host state in struct hyp_page ('Move host page ownership tracking to the hyp       |
|       | vmemmap'); __pkvm_host_share_guest/unshare_guest, host_share_guest_count, helpers  |
| v6.16 | hyp state in struct hyp_page, complemented, NOPAGE = 0b11 (3390b3cbb613,           |
|       | cd4b039165a5); hyp checks always (43c475504a39); share_hyp no longer maps at EL2,   |
|       | the first pin does (48d848882395); share_guest takes a range (4274385ebf09)        |

Sources: the torvalds/linux copies of mem_protect.c at 00578f682ac7 (~v6.1) and 24035886d735
(~v6.15), a full v6.16-line copy of it, and the patches and pull requests as posted
(kvmarm-fixes-5.15-2; the 'Track shared pages at EL2' v4 series; Quentin Perret's v3 of the
do_share series, Dec 2021; kvmarm-6.2, -6.5, -6.10 (misc-6.10), -6.14, -6.16 pulls;
CVE-2021-47450 for B11). Reconstructed, not read: 02949f36bc7b's message (its change is
read off the code before and after); which of two shortlog ids (f9112eade788, a18ef335f777)
is the mainline FF-A helper commit. Not modelled: v5.14, v5.16-v6.0, v6.3, v6.4, v6.7-v6.9,
v6.11, v6.13, v6.15 (none changes a ``Behaviour`` field or a quirk: each behaves as the
modelled release before it), and v7.0 and later: 7.0 only adds a level-3 fallback to
host_stage2_adjust_range; 7.1 replaces owner annotations by a typed layout
(kvm_pgtable_stage2_annotate), adds protected-guest donation, and lets the abort path
return -EEXIST and inject an abort into the host on -EPERM, none of which the model has.
The ``Behaviour`` fields say nothing of transitions a release lacks altogether (unshare
before v5.17, donation before v6.2): scenarios run as such a release must not use them.
"""

from __future__ import annotations

import attrs

from ..errors import EmuError
from ..sim.releases import QuirkHistory, quirk_matrix, release_bugs, version
from ..sim.scenario import Releases, register_releases

HOST_STAGE2 = "1025c8c0c6ac"
"""'KVM: arm64: Wrap the host with a stage 2' (v5.13): the host abort path, with
BUG_ON(!__get_fault_info(...)), and the host's PGD from one high-order allocation."""

HISTORY: dict[str, QuirkHistory] = {
    "pgd-refcount": QuirkHistory(
        "B11", HOST_STAGE2, "v5.13", "1d58a17ef545", "v5.15",
        "'KVM: arm64: Fix host stage-2 PGD refcount' (Quentin Perret, 2021-10-05, Fixes: "
        "1025c8c0c6ac, CVE-2021-47450), in kvmarm-fixes-5.15-2 with 7615c2a51478 'Report "
        "corrupted refcount at EL2'; stable 5.14.y (b372264c66ef). host_s2_zalloc_pages_exact "
        "now hyp_split_page()s the concatenated PGD so that each page is refcounted alone"),
    "abort-bug-on": QuirkHistory(
        "B12", HOST_STAGE2, "v5.13", "02949f36bc7b", "v6.10",
        "'KVM: arm64: Avoid BUG-ing from the host abort path' (Quentin Perret, kvm-arm64/"
        "misc-6.10, in the 6.10 merge window). Before it handle_host_mem_abort did "
        "BUG_ON(!__get_fault_info(esr, &fault)): the AT walk of the host's stage-1 that "
        "resolves FAR (permission faults, or every fault on erratum-834220 CPUs) fails when "
        "another host CPU changed that stage-1, and EL2 panicked; after it EL2 returns and the "
        "host retries ('We've presumably raced with a page-table change which caused AT to "
        "fail'). The BUG_ON(ret && ret != -EAGAIN) after host_stage2_idmap() stays through "
        "7.0: a host access to a page it does not own is fatal by design"),
    "check-apply-unlocked": QuirkHistory(
        "-", None, None, None, None,
        "in no release: every transition has held its components' locks (host, then hyp or "
        "guest) across both its checks and its apply step, from the first one "
        "(__pkvm_host_share_hyp, v5.15) through do_share/do_unshare/do_donate (v5.17, v6.2) "
        "to the open-coded transitions of v6.14+. The one split in the code is "
        "assert_host_shared_guest (v6.14+, CONFIG_NVHE_EL2_DEBUG only), which checks under "
        "host+guest locks and then the relax_perms/wrprotect/young helpers apply under the "
        "guest lock alone; it only WARNs"),
    "set-owner-no-tlbi": QuirkHistory(
        "-", None, None, None, None,
        "in no release: kvm_pgtable_stage2_set_owner (807923e04a0f, v5.13) reuses the map "
        "walker, whose stage2_put_pte clears a valid leaf and issues "
        "__kvm_tlb_flush_vmid_ipa before the annotation is stored (break-before-make, later "
        "stage2_try_break_pte)"),
    "unshare-ignores-pin": QuirkHistory(
        "-", None, None, None, None,
        "in no release: hyp_pin_shared_mem came in 9926cfce8dcb 'Add helpers to pin memory "
        "shared with the hypervisor at EL2' (v6.2), and that same commit made hyp_ack_unshare "
        "return -EBUSY while hyp_page_count() is nonzero; v6.14+'s open-coded "
        "__pkvm_host_unshare_hyp keeps the check (after the two state checks). Before v6.2 "
        "there were no pins to ignore"),
}

RELEASES: dict[str, str] = {
    "v5.13": "host stage-2 and owner annotations in bits 63:56 arrive: B11, B12; no sharing yet",
    "v5.15": "LTS; B11 fixed (1d58a17ef545); owner id in bits 9:2; __pkvm_host_share_hyp "
             "with states in PTE SW bits, mapping the page at EL2 at once",
    "v6.1": "LTS; do_share/do_unshare (v5.17): unshare_hyp, hyp checks only with "
            "CONFIG_NVHE_EL2_DEBUG",
    "v6.2": "hyp_pin_shared_mem with unshare -EBUSY; host<->hyp donation; LOCKED bit 10",
    "v6.5": "FF-A proxy: __pkvm_host_share_ffa / __pkvm_host_unshare_ffa",
    "v6.6": "LTS; as v6.5 for the model",
    "v6.10": "B12 fixed (02949f36bc7b): a failed __get_fault_info returns for a retry",
    "v6.12": "LTS; as v6.10 for the model",
    "v6.14": "host state in hyp_vmemmap; __pkvm_host_share_guest/unshare_guest with "
             "host_share_guest_count and the guest helpers",
    "v6.16": "the model as written: hyp state in hyp_vmemmap and always checked; share_hyp "
             "maps at EL2 only on the first pin; share_guest takes a range",
}
NEWEST = "v6.16"


@attrs.frozen
class Behaviour:
    """How a release's ownership code differs from v6.16, beyond its quirks."""

    annotation_layout: str
    """Where an invalid host stage-2 PTE keeps its owner id: "63:56" (v5.13, v5.14) or
    "9:2" (v5.15 on; with KVM_INVALID_PTE_LOCKED = BIT(10) from v6.2)."""
    host_state_in_vmemmap: bool
    """The host's page state lives in struct hyp_page (v6.14 on), not in the software bits
    of its host stage-2 PTE (which then forces page-level mappings for shared pages)."""
    hyp_state_in_vmemmap: bool
    """The hypervisor's page state lives in struct hyp_page (v6.16 on), not in the software
    bits of its EL2 stage-1 PTE."""
    hyp_checks_always: bool
    """The hyp-side state checks of host-initiated transitions always run (v6.16 on);
    False: only with CONFIG_NVHE_EL2_DEBUG, which the model treats as off."""
    share_hyp_maps_el2: bool
    """__pkvm_host_share_hyp maps the page at EL2 stage-1 at once and unshare unmaps it
    (before v6.16); False: the first hyp_pin_shared_mem maps it, the last unpin unmaps it."""
    has_hyp_share: bool
    """__pkvm_host_share_hyp (v5.15 on)."""
    has_hyp_unshare: bool
    """__pkvm_host_unshare_hyp (v5.17 on: the first modelled release with it is v6.1)."""
    has_host_donation: bool
    """__pkvm_host_donate_hyp / __pkvm_hyp_donate_host (v6.2 on; before, EL2 took its
    memory only at init)."""
    has_pins: bool
    """hyp_pin_shared_mem / hyp_unpin_shared_mem, and the unshare -EBUSY (v6.2 on)."""
    has_ffa: bool
    """__pkvm_host_share_ffa / __pkvm_host_unshare_ffa (v6.5 on)."""
    has_guest_share: bool
    """__pkvm_host_share_guest / __pkvm_host_unshare_guest and host_share_guest_count
    (v6.14 on)."""


FIRST: dict[str, str] = {
    "nine-two": "v5.15",
    "share": "v5.15",
    "unshare": "v5.17",
    "donation": "v6.2",
    "pins": "v6.2",
    "ffa": "v6.5",
    "host-vmemmap": "v6.14",
    "hyp-vmemmap": "v6.16",
}
"""The first release of each change a ``Behaviour`` field keys on (see the table above)."""


def _since(release: str, change: str) -> bool:
    return version(release) >= version(FIRST[change])


def _behaviour(release: str) -> Behaviour:
    v616 = _since(release, "hyp-vmemmap")
    return Behaviour(
        annotation_layout="9:2" if _since(release, "nine-two") else "63:56",
        host_state_in_vmemmap=_since(release, "host-vmemmap"),
        hyp_state_in_vmemmap=v616,
        hyp_checks_always=v616,
        share_hyp_maps_el2=not v616,
        has_hyp_share=_since(release, "share"),
        has_hyp_unshare=_since(release, "unshare"),
        has_host_donation=_since(release, "donation"),
        has_pins=_since(release, "pins"),
        has_ffa=_since(release, "ffa"),
        has_guest_share=_since(release, "host-vmemmap"),
    )


DEFAULT = _behaviour(NEWEST)
"""The default model (no ``--kernel``): v6.16."""


def behaviour(release: str | None) -> Behaviour:
    """What ``release`` changes in the ownership code (DEFAULT for None); EmuError for a
    release the model does not know."""
    if release is None:
        return DEFAULT
    if release not in RELEASES:
        raise EmuError(f"unknown kernel release {release!r} for pKVM "
                       f"(known: {', '.join(RELEASES)})")
    return _behaviour(release)


def bugs(release: str | None) -> tuple[str, ...]:
    """The pKVM quirks ``release`` has, sorted (none for None: the default model)."""
    return release_bugs(HISTORY, release)


TABLE = Releases("kernel release", "--kernel", frozenset(HISTORY),
                 {name: bugs(name) for name in RELEASES})
register_releases(TABLE)


def matrix() -> str:
    """The release x quirk table of the pkvm scenarios, for ``emu list``."""
    lines = quirk_matrix(HISTORY, list(RELEASES), max(len(q) for q in HISTORY) + 6, col=7)
    lines.append("x: the release has the bug (introduced <= release < fixed); a release also "
                 "keys where page states live, the owner-id bits, the hyp checks and which "
                 "transitions exist (emu/pkvm/releases.py Behaviour); default: no --kernel "
                 "(v6.16, every fix)")
    return "\n".join(lines)
