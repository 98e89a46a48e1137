"""Kernel releases of the nested model (emu/kvm/nested_releases.py): every nested quirk's
history, the release x quirk table that ``--kernel`` applies to the nested scenarios, and
what the release switches on when a nested scenario runs as it."""

from __future__ import annotations

import json

import pytest

import emu
from emu.kvm import enter_nested, nested_releases, releases
from emu.kvm.nested_releases import HISTORY, NEWEST, RELEASES, TABLE, bugs
from emu.kvm.radix_entry import RadixEntry
from emu.scenarios.nested import QUIRKS
from emu.sim import replay as replay_file
from emu.sim.releases import version
from emu.sim.scenario import builtin_scenarios, releases_of, suites

FIRST_AND_FIX = {
    "enter-nested-no-srcu": ("v4.20", "v5.9"),  # B7
    "no-tm-sanitise": ("v4.20", "v5.14"),  # B9, d9c57d3ed52a
    "one-tlb-per-core": ("v4.20", "v5.14"),  # B10, 77bbbc0cf848
    "tlbie-all-lpid-no-ref": ("v4.20", None),  # C2: its 2026 fix is past the newest modelled
    "radix-dump-lockless": ("v4.20", None),  # C3
    "idr-alloc-unlocked": ("v5.19", None),  # C1: the IDR, c0f00a18e2a8
    "create-race-fails": ("v5.19", None),  # C1b
    "no-hfscr-sanitise": None,  # introduced and fixed in one pull
    "no-prev-cpu-flush": None,  # the prev_cpu flush came with H_ENTER_NESTED
    "rmap-no-dedup": None,  # the dedup scan was always there
}
"""Per quirk: (the first modelled release with it, the first without it after that), or
None for a quirk no release has: written out from the histories' sources, not computed."""


def test_every_nested_quirk_has_one_history_and_the_releases_are_ordered():
    assert set(HISTORY) == set(QUIRKS) == set(FIRST_AND_FIX) == TABLE.quirks
    assert list(RELEASES) == sorted(RELEASES, key=version) and list(RELEASES)[-1] == NEWEST
    assert TABLE.names == tuple(RELEASES) and version(TABLE.names[0]) == (4, 20)


def test_the_nested_table_keys_the_nested_suite_and_only_it():
    known = builtin_scenarios()
    for name in suites()["nested"][1]:
        assert releases_of(known[name]) is TABLE, name
    for name in suites()["svm"][1]:
        assert releases_of(known[name]) is releases.TABLE, name
    for name in suites()["engine"][1]:
        assert releases_of(known[name]) is None, name


@pytest.mark.parametrize("quirk", sorted(FIRST_AND_FIX))
def test_each_quirk_is_on_exactly_in_its_releases(quirk):
    span = FIRST_AND_FIX[quirk]
    names = list(RELEASES)
    if span is None:
        expected = []
    else:
        first, fix = span
        expected = names[names.index(first):names.index(fix) if fix else None]
    assert [r for r in names if quirk in TABLE.bugs[r]] == expected
    assert [r for r in names if quirk in bugs(r)] == expected
    assert [r for r in names if HISTORY[quirk].in_release(r)] == expected


def test_the_table_in_numbers():
    old = ("no-tm-sanitise", "one-tlb-per-core", "radix-dump-lockless", "tlbie-all-lpid-no-ref")
    assert bugs("v4.20") == bugs("v5.4") == tuple(sorted(("enter-nested-no-srcu", *old)))
    assert bugs("v5.9") == bugs("v5.10") == bugs("v5.13") == old
    assert bugs("v5.14") == bugs("v5.16") == ("radix-dump-lockless", "tlbie-all-lpid-no-ref")
    assert bugs("v5.19") == bugs(NEWEST) == ("create-race-fails", "idr-alloc-unlocked",
                                             "radix-dump-lockless", "tlbie-all-lpid-no-ref")
    assert bugs(None) == ()
    # H_ENTER_NESTED's own quirks are read from the same histories
    assert enter_nested.bugs("v5.8") == ("enter-nested-no-srcu", "no-tm-sanitise")
    assert enter_nested.bugs("v5.10") == ("no-tm-sanitise",) and enter_nested.bugs(None) == ()


# ------------------------------------------------------------------------ running as a release
def test_kernel_switches_on_the_quirks_of_the_release(cli):
    r = cli("run", "tlbiel-migrate", "--kernel", "v5.10", "--timeline", "0")
    assert r.status == 0, r.out + r.err
    assert r.out.splitlines()[0] == ("kernel v5.10: quirks no-tm-sanitise, one-tlb-per-core, "
                                     "radix-dump-lockless, tlbie-all-lpid-no-ref")
    run = emu.run("tlbiel-migrate", release="v6.12", quirks=["rmap-no-dedup"])
    assert run.release == "v6.12" and run.quirks == tuple(sorted(("rmap-no-dedup",
                                                                  *bugs("v6.12"))))


def _flushes(monkeypatch) -> list[int]:
    """Per schedule, how many entries flushed their TLB group for need_tlb_flush."""
    counts: list[int] = []
    original = RadixEntry.check_need_tlb_flush

    def counting(self, owner, pcpu, lpid):
        flushed = original(self, owner, pcpu, lpid)
        counts[-1] += flushed
        return flushed

    monkeypatch.setattr(RadixEntry, "check_need_tlb_flush", counting)
    return counts


def test_a_release_before_the_smt8_fix_finds_the_stale_load(monkeypatch):
    """B10 by release alone: on SMT8, tlbiel-migrate's move between the two TLB groups of
    one core leaves pCPU 0's group stale in v5.13; from v5.14 (77bbbc0cf848) the entry
    flush runs in every schedule and every load is right."""
    flushes = _flushes(monkeypatch)
    found = {}
    for release in ("v5.13", "v5.14"):
        flushes[:] = [0]  # the first schedule's; each schedule's end starts the next one's
        h = emu.hunt("tlbiel-migrate", schedules=30, release=release, keep_going=True,
                     params={"topology": "smt8"},
                     progress=lambda done, result: flushes.append(0))
        found[release] = (h.violating, h.found, flushes[:h.schedules])
    violating, first, _ = found["v5.13"]
    assert violating > 0 and first.violation.kind == "integrity", first
    assert "loads 1 from EA" in first.violation.message
    assert "last stored 2" in first.violation.message
    violating, _, counts = found["v5.14"]
    assert violating == 0 and len(counts) == 30 and min(counts) >= 1, counts


def test_an_l1_of_the_release_writes_the_hv_guest_state_it_knows():
    """Before v5.12 the L1 writes version 1 and L0 reads 232 bytes in one copy; from v5.12
    L0 reads the version first, then the block: three reads per H_ENTER_NESTED, not two
    (afe75049303f), so ``--kernel`` keys H_ENTER_NESTED's behaviour, not only quirks."""
    copies = {}
    for release in ("v5.10", "v5.12", None):
        r = emu.run("tlbiel-migrate", seed=0, release=release)
        assert r.ok, (release, r.violation)
        copies[release] = sum(op.startswith("__copy_from_user") for _, _, op in r.decisions)
    assert copies["v5.12"] == copies[None] and copies["v5.10"] * 3 == copies[None] * 2


def test_a_nested_finding_replays_as_its_release(cli, tmp_path):
    out = tmp_path / "out"
    r = cli("hunt", "tlbiel-migrate", "--kernel", "v5.13", "-p", "topology=smt8",
            "--schedules", "20", "--out", str(out), "--timeline", "0")
    assert r.status == 1 and "kernel v5.13" in r.out
    path = next(out.glob("*.replay.json"))
    data = json.loads(path.read_text())
    assert data["kernel"] == "v5.13" and "one-tlb-per-core" in data["quirks"]
    assert replay_file.replay(replay_file.load(path), data["scenario"]).matched


def test_unknown_release_is_a_clear_error(cli):
    for release in ("v4.19", "v5.5", "5.10"):  # before nested HV; an svm-only release; no v
        r = cli("run", "tlbiel-migrate", "--kernel", release)
        assert r.status == 2 and r.out == "" and len(r.err.strip().splitlines()) == 1
        assert f"unknown kernel release {release!r} (known: v4.20, " in r.err
        assert f"{NEWEST})" in r.err
    with pytest.raises(emu.EmuError, match=r"unknown kernel release 'v9\.9'"):
        emu.hunt("nested-boot", schedules=1, release="v9.9")


def test_list_shows_the_nested_releases(cli):
    r = cli("list")
    assert r.status == 0 and "kernel releases (--kernel RELEASE; nested scenarios)" in r.out
    nested = r.out[r.out.index("nested scenarios)"):].splitlines()
    assert nested[1].split() == [*RELEASES, "default"]
    row = next(line for line in nested if line.startswith("B10 one-tlb-per-core"))
    assert row.split()[2:] == ["x"] * 6 + ["."] * 8
    assert nested_releases.matrix() in r.out
