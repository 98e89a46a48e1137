"""Kernel releases: the release x quirk matrix, the release-keyed behaviour (memslot walk
order, device-page free timing, INIT_START rollback), ``--kernel`` on the command line and in
replay files, and ``emu study releases``."""

from __future__ import annotations

import json

import pytest

import emu
from emu.kvm import releases
from emu.kvm.hvcall import PAGE_SHIFT
from emu.kvm.releases import NEWEST, QUIRK_HISTORY, RELEASES, TABLE, bugs
from emu.kvm.uvmem import MIGRATE_VMA_SELECT_DEVICE_PRIVATE, QUIRKS
from emu.scenarios.svm import Boot
from emu.sim import replay as replay_file
from emu.sim.controller import Controller
from emu.sim.machine import Machine
from emu.sim.releases import version
from emu.sim.scenario import builtin_scenarios, releases_of, suites
from emu.sim.strategies import RandomWalk


# --------------------------------------------------------------------------- the matrix
def test_every_quirk_has_a_history_and_releases_are_ordered():
    assert set(QUIRK_HISTORY) == set(QUIRKS) == TABLE.quirks
    names = list(RELEASES)
    assert names == sorted(names, key=version) and names[-1] == NEWEST
    assert TABLE.names == tuple(names)


@pytest.mark.parametrize("quirk", sorted(QUIRK_HISTORY))
def test_each_quirk_is_on_exactly_between_introduction_and_fix(quirk):
    h = QUIRK_HISTORY[quirk]
    for name in RELEASES:
        v = version(name)
        expected = h.introduced_in is not None and version(h.introduced_in) <= v and (
            h.fixed_in is None or v < version(h.fixed_in))
        assert (quirk in bugs(name)) == expected == (quirk in TABLE.bugs[name]), (quirk, name)
    if h.introduced_in is not None and h.fixed_in is not None:
        assert version(h.introduced_in) < version(h.fixed_in)


def test_the_matrix_in_numbers():
    always = ("flags-only-drops-pages", "init-start-unserialised", "mr-move-unhandled",
              "page-in-fail-leaves-uvmem", "page-in-hole-race", "uvmem-slot-leak")
    assert bugs("v5.5") == tuple(sorted(("init-start-late-flag", "no-init-done-migration",
                                         "page-out-lock-leak", "single-flag-gfn-tracking",
                                         *always)))
    assert "page-out-lock-leak" not in bugs("v5.6")  # e032e3b55b6f
    assert "busy-page-fails" not in bugs("v5.8")  # came with INIT_DONE's migration
    assert bugs("v5.7") == tuple(sorted(("no-init-done-migration", "single-flag-gfn-tracking",
                                         "strict-abort-caller-check", *always)))
    assert bugs("v5.9") == bugs("v5.17") == bugs(NEWEST) == tuple(sorted((
        "busy-page-fails", "init-start-rollback", *always)))
    assert bugs("v6.1") == bugs("v6.12") == tuple(sorted((
        "fault-ref-no-page-lock", "busy-page-fails", "init-start-rollback", *always)))
    assert QUIRK_HISTORY["init-start-rollback"].fixed_in is None  # B8: still upstream
    assert not any("svm-off-no-guard" in bugs(r) for r in RELEASES)


def test_every_svm_scenario_models_the_releases_and_no_engine_demo_does():
    known = builtin_scenarios()
    for name in suites()["svm"][1]:
        assert releases_of(known[name]) is TABLE
    for name in suites()["engine"][1]:
        assert releases_of(known[name]) is None


def test_behaviour_changes_where_the_kernel_changed():
    b = {name: r.behaviour for name, r in RELEASES.items()}
    assert [n for n in RELEASES if b[n].memslot_walk == "id-hash"] == [
        "v5.17", "v6.1", "v6.12", "v6.15"]
    assert [n for n in RELEASES if b[n].page_free == "after-fault"] == ["v6.1", "v6.12", "v6.15"]
    assert [n for n in RELEASES if b[n].init_start_rollback == "none"] == [
        "v5.5", "v5.6", "v5.7", "v5.8"]
    assert releases.behaviour(None) == releases.DEFAULT == releases.Behaviour(
        "gfn-descending", "in-finalize", "loop")


def _kvm(release: str | None):
    from emu.machines.svm import SvmMachine

    m = Machine(Controller(RandomWalk(0)), {}, (), tuple(QUIRKS), 0)
    m.release = release
    return SvmMachine(m).vm(1, ((0, 8), (8, 8), (16, 8), (24, 8)))


def test_memslot_walk_order():
    """Before 5.17: descending base GFN; from 5.17 the id_hash buckets, hash_32(id, 7):
    ids 0, 1, 2, 3 fall in buckets 0, 48, 97, 18."""
    assert [releases.hash_32(i, 7) for i in range(4)] == [0, 48, 97, 18]
    assert [s.id for s in _kvm(None).memslots] == [3, 2, 1, 0]
    assert [s.id for s in _kvm("v5.9").memslots] == [3, 2, 1, 0]
    assert [s.id for s in _kvm("v5.17").memslots] == [0, 3, 1, 2]


# --------------------------------------------------------------------------- hunting
def _kinds(scenario, release, schedules=40, **params):
    """Every violation kind found (keep going), as (kind, message) of the first of each."""
    seen: dict[str, str] = {}

    def note(r):
        for v in r.violations:
            seen.setdefault(v.kind, v.message)

    h = emu.hunt(scenario, schedules=schedules, seed=0, params=params, release=release,
                 keep_going=True, on_finding=note)
    return h, seen


@emu.scenario("old-uv-pageout", params={"mem_mb": 2}, quirks=QUIRKS,
              max_steps=20_000)
def old_uv_pageout(m: emu.Machine, mem_mb: int) -> None:
    """share-vs-pageout's host faults with migrate_vma_setup failing, against the Ultravisor
    of v5.5's time, which paged in every GFN at UV_ESM (so INIT_DONE's missing migration,
    B2, does not mask the page-out bug)."""
    b = Boot(m, mem_mb, "gfn-states", esm="all")
    pages = [b.data_gfn(i) for i in range(3)]
    written, touched = m.completion("written"), m.completion("touched")
    b.kvm.fail_migrate_setup = lambda mig: (mig.flags == MIGRATE_VMA_SELECT_DEVICE_PRIVATE
                                            and m.random.randrange(100) < 30)

    async def owner(g):
        await b.boot(g)
        for i, gfn in enumerate(pages):
            await g.write(gfn << PAGE_SHIFT, 0xC0DE + i)
        written.complete_all()
        await touched.wait_for_completion()
        for gfn in pages:
            await g.read(gfn << PAGE_SHIFT)

    async def qemu(h):
        await written.wait_for_completion()
        for gfn in pages:
            await h.read(1, gfn)
        touched.complete_all()

    b.sm.vcpu(b.kvm, owner)
    b.sm.host(qemu)


def test_the_release_before_the_b1_fix_leaks_the_lock():
    _, v55 = _kinds(old_uv_pageout, "v5.5")
    assert "uvmem_lock held" in v55.get("lock-leak", ""), v55
    _, v56 = _kinds(old_uv_pageout, "v5.6")
    assert "lock-leak" not in v56


def test_v5_7_rejects_the_ultravisor_s_abort():
    """B4 lived in v5.7 only (8c47b6ff29e3 .. e3326ae3d59e)."""
    _, v57 = _kinds("abort-on-register-failure", "v5.7", fail_slot=1)
    assert "Transient --INIT_ABORT--> Transient" in v57.get("life-cycle", ""), v57
    assert emu.hunt("abort-on-register-failure", schedules=40, release="v5.8",
                    params={"fail_slot": 1}).ok


def test_b8_is_found_on_the_newest_release():
    h = emu.hunt("abort-on-register-failure", schedules=40, release=NEWEST,
                 params={"fail_slot": 1})
    assert h.found is not None and h.release == NEWEST
    v = h.found.violation
    assert v.kind == "slots" and "incomplete rollback" in v.message
    assert "init-start-rollback" in h.found.quirks and h.found.release == NEWEST
    # the default model is B8's evident fix
    assert emu.hunt("abort-on-register-failure", schedules=40, params={"fail_slot": 1}).ok


def test_walk_order_decides_which_slot_exposes_b8():
    """Before 5.17 slot 1 (the higher GFN) is walked first, so slot 0 failing leaves it
    registered; from 5.17 slot 0 is walked first, so it takes slot 1 failing."""
    assert not emu.hunt("abort-on-register-failure", schedules=30, release="v5.9").ok
    assert emu.hunt("abort-on-register-failure", schedules=30, release="v5.9",
                    params={"fail_slot": 1}).ok
    assert emu.hunt("abort-on-register-failure", schedules=30, release=NEWEST).ok


def test_v6_1_frees_the_device_page_after_the_fault_drops_it():
    late = [emu.run("share-vs-pageout", seed=s, release="v6.1") for s in range(10)]
    assert all(r.ok for r in late)
    assert any("do_swap_page: put_page" in op for r in late for _, _, op in r.decisions)
    early = [emu.run("share-vs-pageout", seed=s) for s in range(10)]
    assert not any("put_page" in op for r in early for _, _, op in r.decisions)


def test_quirks_add_to_the_release_s_bugs():
    r = emu.run("svm-boot", release="v6.12", quirks=["svm-off-no-guard"])
    assert r.quirks == ("busy-page-fails", "fault-ref-no-page-lock", "flags-only-drops-pages",
                        "init-start-rollback", "init-start-unserialised", "mr-move-unhandled",
                        "page-in-fail-leaves-uvmem", "page-in-hole-race", "svm-off-no-guard",
                        "uvmem-slot-leak")


# --------------------------------------------------------------------------- the command
def test_bad_release_is_one_line_and_status_2(cli):
    for argv in (("hunt", "svm-boot", "--kernel", "v9.9"), ("run", "svm", "--kernel", "x"),
                 ("run", "lost-update", "--kernel", "v5.5"), ("hunt", "--kernel", "5.17")):
        r = cli(*argv)
        assert r.status == 2 and r.out == "" and len(r.err.strip().splitlines()) == 1, argv
    r = cli("hunt", "svm-boot", "--kernel", "v9.9")
    assert "unknown kernel release 'v9.9'" in r.err and "v5.5" in r.err and NEWEST in r.err


def test_list_shows_the_matrix(cli):
    r = cli("list")
    assert r.status == 0 and "kernel releases" in r.out
    row = next(line for line in r.out.splitlines() if "init-start-rollback" in line
               and line.startswith("B8"))
    assert row.split()[2:] == [".", ".", ".", ".", "x", "x", "x", "x", "x", "."]


def test_kernel_finding_replays(cli, tmp_path):
    out = tmp_path / "out"
    r = cli("hunt", "abort-on-register-failure", "--kernel", NEWEST, "-p", "fail_slot=1",
            "--schedules", "20", "--out", str(out))
    assert r.status == 1 and f"kernel {NEWEST}" in r.out
    path = next(out.glob("*.replay.json"))
    data = json.loads(path.read_text())
    assert data["kernel"] == NEWEST and "init-start-rollback" in data["quirks"]
    again = cli("replay", str(path))
    assert again.status == 1 and "matched" in again.out and "incomplete rollback" in again.out


def test_default_replay_files_have_no_kernel_key(tmp_path):
    r = emu.run("svm-boot", seed=1)
    assert r.release is None
    path = replay_file.save(tmp_path / "r.json", r)
    assert "kernel" not in json.loads(path.read_text())


def test_corrupt_kernel_field_is_refused(tmp_path):
    r = emu.run("svm-boot", seed=1, release="v5.17")
    path = replay_file.save(tmp_path / "r.json", r)
    data = json.loads(path.read_text())
    data["kernel"] = 5
    path.write_text(json.dumps(data))
    with pytest.raises(emu.EmuError, match="kernel must be a release name"):
        replay_file.load(path, accept_edits=True)


def test_study_releases(cli):
    r = cli("study", "releases", "--schedules", "2")
    assert r.status == 0
    table = r.out[r.out.index("scenario "):].splitlines()
    assert table[0].split()[1:] == ["default", *RELEASES]
    rows = {line.split()[0] + (" fail_slot=1" if "fail_slot=1" in line else ""):
            line.split()[-len(RELEASES) - 1:] for line in table[1:-1]}
    assert all(cell == "-" for cell in (row[0] for row in rows.values()))  # the default
    assert rows["svm-boot"][1] == "life-cycle"  # v5.5: INIT_DONE leaves GFNs Normal (B2)
    assert rows["abort-on-register-failure fail_slot=1"][-1] == "slots"  # B8, newest


def test_boot_is_clean_on_every_release_from_v5_9():
    for name in RELEASES:
        if version(name) >= (5, 9):
            r = emu.run("svm-boot", seed=2, release=name)
            assert r.ok, (name, r.violation)
    assert emu.run("svm-boot", seed=2, release="v5.5").violation.kind == "life-cycle"
