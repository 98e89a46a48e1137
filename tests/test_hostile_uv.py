"""The hostile Ultravisor (``-p uv=hostile``, scenario ``hostile-uv``): what the HV survives,
and the known findings of the modelled kernel each extra hostile act leads to (README,
Findings: "A hostile UV")."""

from __future__ import annotations

import pytest

import emu
from emu.actors.ultravisor import HOSTILE, HOSTILE_DEFAULT

FAITHFUL_HASHES = {
    "svm-boot": "c93a46773ba0359b",
    "share-storm": "45b3fc8b420659cd",
    "share-vs-pageout": "6585ba766db36bd2",
}


@pytest.mark.parametrize("scenario", sorted(FAITHFUL_HASHES))
def test_the_faithful_uv_is_unchanged(scenario):
    """The faithful default draws nothing from the data RNG and does nothing new."""
    result = emu.run(scenario, seed=3)
    assert not result.violations
    assert result.trace_hash == FAITHFUL_HASHES[scenario]


def test_default_hostile_acts_are_survivable_ones():
    assert set(HOSTILE_DEFAULT) <= set(HOSTILE)
    assert not {"init-done-twice", "init-start-secure", "duplicate-register"} & \
        set(HOSTILE_DEFAULT)


def _notes(result) -> str:
    return "\n".join(str(e) for e in result.trace.events)


def test_hostile_uv_misbehaves_and_the_hv_survives():
    """Over a few schedules the hostile UV evicts pages, fails UV_PAGE_INs of shares and
    pages a GFN in from inside the hotplug's UV_REGISTER_MEM_SLOT: the HV's invariants hold."""
    seen = ""
    for seed in range(6):
        result = emu.run("hostile-uv", seed=seed)
        assert not result.violations, result.violations
        seen += _notes(result)
    for act in ("H_SVM_PAGE_OUT of GFN", "(share) fails with",
                "H_SVM_PAGE_IN of GFN 0x", "inside UV_REGISTER_MEM_SLOT"):
        assert act in seen, act


@pytest.mark.parametrize("scenario", ["hostile-uv", "share-storm", "dimm-hotplug"])
def test_hostile_hunts_are_clean(scenario):
    assert emu.hunt(scenario, params={"uv": "hostile"}, schedules=60, seed=0).ok


# the known findings: each extra hostile act and what the modelled kernel does with it
KNOWN = {
    # kvmppc_svm_page_in: UV_PAGE_IN fails -> goto out_finalize with *mig.dst unset; the
    # device page stays allocated and pfns[] says UVMEM, so the UV's retry is refused
    # (kvmppc_h_svm_page_in: "GFN already UVMEM" -> H_PARAMETER): the SVM cannot get its
    # page back (here an unshare whose retry is refused; a touch fails the same way)
    "page-in-fail-private": (0, "return-code", "UV_UNSHARE_PAGE(0x4, 0x1) returned "
                             "H_PARAMETER (uncontended)"),
    # kvmppc_h_svm_init_done checks only INIT_START: a second INIT_DONE succeeds
    "init-done-twice": (1, "life-cycle", "VM Secure --INIT_DONE--> Secure with H_SUCCESS"),
    # kvmppc_h_svm_init_start sets secure_guest = INIT_START first, whatever it was: a
    # secure VM loses INIT_DONE; the duplicate registration is refused -> H_PARAMETER
    "init-start-secure": (1, "life-cycle",
                          "VM Secure --INIT_START--> Transient with H_PARAMETER"),
    # ... and if the UV accepts the duplicate, INIT_START "succeeds" on a secure VM
    "init-start-duplicate": (1, "life-cycle",
                             "VM Secure --INIT_START--> Transient with H_SUCCESS"),
}


QUIRK = {"page-in-fail-private": ["page-in-fail-leaves-uvmem"]}
"""The quirk an extra act's finding needs (the fixed model survives it)."""


@pytest.mark.parametrize("extra", sorted(KNOWN))
def test_known_finding_is_pinned(extra):
    seed, kind, text = KNOWN[extra]
    found = emu.hunt("hostile-uv", params={"extra": extra}, quirks=QUIRK.get(extra, []),
                     schedules=seed + 1, seed=0).found
    assert found is not None and found.seed == seed
    assert found.violation.kind == kind and text in found.violation.message


def test_page_in_failure_leaves_the_gfn_flagged():
    """The latent leak itself: after the failed UV_PAGE_IN the GFN's word says UVMEM while
    its host PTE is the normal page (what "device pages match the GFN states" reports when
    the schedule is not stopped earlier)."""
    result = emu.run("hostile-uv", params={"extra": "page-in-fail-private"},
                     quirks=QUIRK["page-in-fail-private"], seed=0)
    assert "(page-in) fails with" in _notes(result)
