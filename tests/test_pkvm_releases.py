"""Kernel releases of the pKVM model (emu/pkvm/releases.py): every quirk's history, the
release x quirk table ``--kernel`` applies to the pkvm scenarios, and what else each release
changes (``Behaviour``). The expected values below are written out from the histories'
sources, not computed from the module."""

from __future__ import annotations

import itertools

import pytest

from emu.errors import EmuError
from emu.pkvm import releases
from emu.pkvm.releases import DEFAULT, HISTORY, NEWEST, RELEASES, TABLE, Behaviour, behaviour, bugs
from emu.sim.releases import version
from emu.sim.scenario import RELEASE_TABLES, Scenario, releases_of, resolve_release

QUIRKS = ("pgd-refcount", "abort-bug-on", "check-apply-unlocked", "set-owner-no-tlbi",
          "unshare-ignores-pin")

FIRST_AND_FIX = {
    "pgd-refcount": ("v5.13", "v5.15"),  # B11: 1025c8c0c6ac, fixed by 1d58a17ef545
    "abort-bug-on": ("v5.13", "v6.10"),  # B12: 1025c8c0c6ac, fixed by 02949f36bc7b
    "check-apply-unlocked": None,  # locks always held across check and apply
    "set-owner-no-tlbi": None,  # set_owner broke valid leaves with a TLBI from the start
    "unshare-ignores-pin": None,  # pins and the unshare -EBUSY came in one commit
}
"""Per quirk: (the first modelled release with it, the first without it after that), or
None for a quirk no release has."""

#           layout   host-vm hyp-vm checks eager-el2 pins   ffa    guests
EXPECTED = {
    "v5.13": ("63:56", False, False, False, True, False, False, False, False, False, False),
    "v5.15": ("9:2", False, False, False, True, True, False, False, False, False, False),
    "v6.1": ("9:2", False, False, False, True, True, True, False, False, False, False),
    "v6.2": ("9:2", False, False, False, True, True, True, True, True, False, False),
    "v6.5": ("9:2", False, False, False, True, True, True, True, True, True, False),
    "v6.6": ("9:2", False, False, False, True, True, True, True, True, True, False),
    "v6.10": ("9:2", False, False, False, True, True, True, True, True, True, False),
    "v6.12": ("9:2", False, False, False, True, True, True, True, True, True, False),
    "v6.14": ("9:2", True, False, False, True, True, True, True, True, True, True),
    "v6.16": ("9:2", True, True, True, False, True, True, True, True, True, True),
}
"""Each modelled release's Behaviour, field by field in declaration order."""


def test_every_quirk_has_one_consistent_history():
    assert tuple(HISTORY) == QUIRKS and set(FIRST_AND_FIX) == TABLE.quirks == set(QUIRKS)
    for name, h in HISTORY.items():
        assert h.source, name
        if h.introduced_in is None:
            # in no release: nothing can fix what no release had
            assert h.fixed_in is None and h.bug == "-", name
            continue
        assert h.introduced and h.fixed and h.bug.startswith("B"), name
        assert version(h.introduced_in) < version(h.fixed_in), name
        assert h.introduced_in in RELEASES, name


def test_the_releases_are_ordered_and_the_table_keys_them():
    assert list(RELEASES) == sorted(RELEASES, key=version) and list(RELEASES)[-1] == NEWEST
    assert TABLE.names == tuple(RELEASES) and TABLE.option == "--kernel"
    assert version(TABLE.names[0]) == (5, 13)  # the host stage-2 came in v5.13
    assert all(text for text in RELEASES.values())
    assert TABLE in RELEASE_TABLES


@pytest.mark.parametrize("quirk", QUIRKS)
def test_each_quirk_is_on_exactly_in_its_releases(quirk):
    span = FIRST_AND_FIX[quirk]
    names = list(RELEASES)
    if span is None:
        expected = []
    else:
        first, fix = span
        expected = names[names.index(first):names.index(fix)]
    assert [r for r in names if quirk in TABLE.bugs[r]] == expected
    assert [r for r in names if quirk in bugs(r)] == expected
    assert [r for r in names if HISTORY[quirk].in_release(r)] == expected


def test_the_table_in_numbers():
    assert bugs("v5.13") == ("abort-bug-on", "pgd-refcount")
    assert bugs("v5.15") == bugs("v6.6") == ("abort-bug-on",)
    assert bugs("v6.10") == bugs(NEWEST) == bugs(None) == ()
    # a release between two modelled ones has the bugs of the one before it
    assert bugs("v5.14") == bugs("v5.13") and bugs("v6.9") == bugs("v6.6")


@pytest.mark.parametrize("release", sorted(EXPECTED, key=version))
def test_behaviour_per_release(release):
    fields = [f.name for f in Behaviour.__attrs_attrs__]
    assert len(fields) == 11
    assert dict(zip(fields, EXPECTED[release], strict=True)) == {
        f: getattr(behaviour(release), f) for f in fields}


def test_every_release_has_its_expected_behaviour_and_the_default_is_v6_16():
    assert set(EXPECTED) == set(RELEASES)
    assert behaviour(None) is DEFAULT and DEFAULT == behaviour(NEWEST) == behaviour("v6.16")
    # each field changes in one release, and only the fields of that change move
    changed = {}
    names = list(RELEASES)
    for older, newer in itertools.pairwise(names):
        a, b = EXPECTED[older], EXPECTED[newer]
        changed[newer] = [i for i in range(11) if a[i] != b[i]]
    assert changed == {"v5.15": [0, 5], "v6.1": [6], "v6.2": [7, 8], "v6.5": [9],
                       "v6.6": [], "v6.10": [], "v6.12": [], "v6.14": [1, 10],
                       "v6.16": [2, 3, 4]}


@pytest.mark.parametrize("bad", ["v5.12", "v6.3", "v7.1", "6.16", "linus"])
def test_behaviour_refuses_a_release_it_does_not_model(bad):
    with pytest.raises(EmuError, match="unknown kernel release"):
        behaviour(bad)


def test_the_table_applies_to_a_scenario_declaring_the_pkvm_quirks():
    def build(m, **_):  # never run
        raise AssertionError

    sc = Scenario("pkvm-probe", build, quirks={q: "" for q in QUIRKS})
    assert releases_of(sc) is TABLE
    assert resolve_release(sc, "v5.13") == ("abort-bug-on", "pgd-refcount")
    assert resolve_release(sc, None) == ()
    with pytest.raises(EmuError, match=r"unknown kernel release 'v6\.3'"):
        resolve_release(sc, "v6.3")
    # a scenario missing one of the five quirks is not keyed by this table
    partial = Scenario("pkvm-partial", build, quirks={q: "" for q in QUIRKS[1:]})
    assert releases_of(partial) is not TABLE


def test_matrix_marks_each_release_that_has_a_bug():
    lines = releases.matrix().splitlines()
    head = lines[0].split()
    assert head == [*RELEASES, "default"]
    rows = {line.split()[1]: line.split()[2:] for line in lines[1:1 + len(QUIRKS)]}
    assert set(rows) == set(QUIRKS)
    for quirk, cells in rows.items():
        marked = [r for r, c in zip(RELEASES, cells, strict=False) if c == "x"]
        assert marked == [r for r in RELEASES if quirk in bugs(r)], quirk
        assert cells[-1] == "."  # the default model has no quirk
    assert lines[1].startswith("B11 pgd-refcount") and lines[2].startswith("B12 abort-bug-on")
