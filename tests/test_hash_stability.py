"""Refactoring and optimisation must not change behaviour: the trace hash of a fixed set of
(scenario, parameters, quirks, release, strategy, seed) runs is pinned here. A change that
alters any of them changes what schedules the model has, so it is a model change and must
say so (update the pins in the same commit, with the reason in its message)."""

import pytest

import emu
from emu.sim.scenario import suites

PINNED = {
    # scenario: (random seed 5, PCT depth 3 seed 11)
    "abort-on-register-failure": ("c6f1c421a6f4611e", "52204301d0661f28"),
    "dimm-hotplug": ("891e256217a5fd05", "1bbe458ae0de9f61"),
    "flags-only": ("074ebc23a12d7f36", "84da9aa54fc97e1b"),
    "hostile-uv": ("59971599e8d2b308", "626cdae088be658a"),
    "hotplug-during-esm": ("94d438e0171c961c", "1215fa7de21f242d"),
    "init-done-vs-share": ("631d224c071251ea", "ce0ff91fd447aa3b"),
    "page-in-fail-vs-share": ("18ec35a9f6694259", "437669231e08a31f"),
    "qemu-vs-page-in": ("5f86366233887749", "22c0935ce19d4d36"),
    "share-storm": ("749bb80dd495e3d7", "39e72d5783c5082d"),
    "share-vs-pageout": ("66e3c9aa01698eae", "e51d5a15e5c4d5d8"),
    "store-vs-pageout": ("ab0fe940daf1d11c", "82dd60943ebd711b"),
    "svm-boot": ("5e2f083dff16212c", "1e04ae40e8e75cd0"),
    "svm-destroy": ("9da4fadc4f8855f0", "be0806d6e65a289f"),
    "svm-off-vs-entry": ("eca93cdaf52e5948", "f6ead3422c96e500"),
    "svm-reboot": ("aafa338683789aac", "8091abfe55390d35"),
}

VARIANTS = [
    ("share-storm", {"params": {"design": "two-state"}}, "733fa5537fb18814"),
    ("svm-reboot", {"params": {"design": "two-state", "reboots": 2}}, "ed356a893fb55b93"),
    ("share-storm", {"release": "v6.12"}, "34cc46910cbce4df"),
    ("abort-on-register-failure", {"quirks": ["init-start-rollback"]}, "442777eee904ba38"),
]


def test_every_svm_scenario_is_pinned():
    assert sorted(PINNED) == sorted(suites()["svm"][1])


@pytest.mark.parametrize("scenario", sorted(PINNED))
def test_svm_trace_hashes_are_unchanged(scenario):
    walk, pct = PINNED[scenario]
    assert emu.run(scenario, seed=5).trace_hash == walk
    assert emu.run(scenario, seed=11, strategy="pct", depth=3).trace_hash == pct


@pytest.mark.parametrize(("scenario", "kw", "want"), VARIANTS)
def test_designs_releases_and_quirks_are_unchanged(scenario, kw, want):
    assert emu.run(scenario, seed=3, **kw).trace_hash == want
