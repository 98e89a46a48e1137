"""The engine demos: every bug is found, every fix is clean (hunts through the pytest
plugin: the ``emu`` marker and ``emu_hunt``), every finding replays."""

from __future__ import annotations

import json
import os

import pytest

import emu
from emu.sim import replay as replay_file


def test_hunt_finds_lost_update_and_writes_replay(cli, tmp_path):
    r = cli("hunt", "lost-update", "--schedules", "100", "--seed", "1", "--out", str(tmp_path))
    assert r.status == 1
    assert "counter is 2 after 3 increments" in r.out
    assert "write-write conflict on counter" in r.out
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["findings.jsonl", "lost-update-seed3.replay.json",
                     "lost-update-seed3.trace.json", "shrunk"]
    assert [p.name for p in (tmp_path / "shrunk").iterdir()] == [
        "lost-update-seed3.shrunk.replay.json"]
    data = json.loads((tmp_path / files[1]).read_text())
    assert data["scenario"] == "lost-update" and data["violation"]["kind"] == "invariant"
    index = [json.loads(line) for line in (tmp_path / files[0]).read_text().splitlines()]
    assert [(f["seed"], f["kind"], f["replay"]) for f in index] == [
        (3, "invariant", str(tmp_path / files[1]))]


def test_replay_reproduces_hash_in_fresh_processes(tmp_path, emu_proc):
    found = emu.hunt("lost-update", schedules=100, seed=1).found
    path = replay_file.save(tmp_path / "lu.replay.json", found)
    hashes = set()
    for hashseed in ("0", "123"):
        env = {**os.environ, "PYTHONHASHSEED": hashseed}
        p = emu_proc("replay", str(path), env=env)
        assert p.returncode == 1, p.stderr
        assert f"trace hash {found.trace_hash}: matched" in p.stdout
        hashes.add(p.stdout)
    assert len(hashes) == 1


@pytest.mark.emu("lost-update", params={"locked": True}, schedules=2000)
def test_locked_counter_is_clean():
    """All 2000 schedules run clean (a finding would have stopped the hunt)."""


def test_abba_deadlock_has_wait_for_cycle(cli, tmp_path):
    r = cli("hunt", "abba", "--out", str(tmp_path))
    assert r.status == 1
    assert "deadlock: cpu0 waits in 'mutex_lock lock_b' for cpu1; " \
           "cpu1 waits in 'mutex_lock lock_a' for cpu0" in r.out
    assert "possible circular locking dependency detected" in r.out


def test_abba_inversion_without_deadlock_still_reported():
    for seed in range(50):
        res = emu.run("abba", seed=seed)
        kinds = [v.kind for v in res.violations]
        if kinds == ["lockdep"]:
            break
    else:
        raise AssertionError("no schedule inverted the locks without deadlocking")
    v = res.violation
    assert not v.fatal and res.steps == 6  # both CPUs ran to the end: start + 2 locks each
    assert "lock_a -> lock_b" in v.details and "*** DEADLOCK ***" in v.details


@pytest.mark.emu("abba", params={"ordered": True}, schedules=500)
def test_abba_ordered_is_clean():
    """Neither a deadlock nor lockdep's warning in 500 schedules."""


def test_srcu_uaf_only_with_quirk(emu_hunt):
    emu_hunt("srcu-uaf", quirks=["no-synchronize"], schedules=2000, seed=1,
             expect="use-after-free")
    emu_hunt("srcu-uaf", schedules=2000, seed=1)


def test_check_determinism_reports_no_mismatch(cli, tmp_path):
    r = cli("hunt", "lost-update", "--check-determinism", "--schedules", "500",
            "--out", str(tmp_path))
    assert "500 schedules" in r.out and "every seed run twice, 0 mismatches" in r.out
    assert "violations in " in r.out and r.status == 1


def test_pct_finds_lost_update_and_prints_bound(cli, tmp_path):
    r = cli("hunt", "lost-update", "--strategy", "pct", "--depth", "2", "--schedules", "200",
            "--out", str(tmp_path))
    assert r.status == 1
    assert "per-run probability bound 1/(n*k^(d-1)) = 1/(3*9^1)" in r.out
