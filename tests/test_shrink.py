"""Shrinking a failing schedule: fewer preemptions (then steps, then actors), the same
violation, a shrunk file that replays to it, and the counts reported."""

from __future__ import annotations

import re

import pytest
import trio

from emu.errors import EmuError
from emu.sim import replay as replay_file
from emu.sim.runner import hunt, prepare, run, run_schedule
from emu.sim.shrink import Constrained, shrink

QUIRKS = [("share-vs-pageout", "page-out-lock-leak"), ("tlbiel-migrate", "no-prev-cpu-flush"),
          ("share-unshare-pin", "unshare-ignores-pin"), ("nested-boot", "create-race-fails")]
"""A quirk of each platform (svm, nested, pkvm), and one whose race needs preemptions."""


@pytest.mark.parametrize("scenario, quirk", QUIRKS)
@pytest.mark.parametrize("strategy", ["random", "pct"])
def test_a_quirk_shrinks_and_the_shrunk_file_replays_to_the_same_violation(
        tmp_path, scenario, quirk, strategy):
    h = hunt(scenario, quirks=[quirk], schedules=300, strategy=strategy)
    s = h.shrunk
    assert s.original is h.found and s.replays >= 1
    assert s.after[0] <= s.before[0] and s.after <= s.before
    data = replay_file.load(replay_file.save(tmp_path / "s.replay.json", s.result, s.record()))
    again = replay_file.replay(data)
    assert again.matched and again.reproduced
    assert again.result.violation.kind == h.found.violation.kind
    assert replay_file.violation_key(again.result.violation) == \
        replay_file.violation_key(h.found.violation)
    assert data["strategy"] == h.found.strategy and data["seed"] == h.found.seed


def test_a_lost_update_shrinks_to_one_preemption():
    found = next(r for seed in range(40) if not (r := run("lost-update", seed=seed)).ok)
    s = shrink(found)
    assert s.before[0] > 1 and s.after[0] == 1  # read, preempted, the other's update, write
    assert s.line() == (f"shrunk: {s.before[0]} preemptions, {s.before[1]} steps, "
                        f"{s.before[2]} actors -> 1, {s.after[1]}, {s.after[2]} "
                        f"({s.replays} replays)")


def test_a_constraint_alone_rebuilds_the_race_with_one_preemption():
    """worker0 writes only after worker1 read: run-to-block does the rest, preempting
    worker0 once; a constraint that never holds anyone back is not among those that bit."""
    read1, write0 = ("worker1", "read counter", 1), ("worker0", "write counter", 1)
    idle = (("worker0", "start", 1), ("worker2", "read counter", 1))
    strategy = Constrained({}, [(read1, write0), idle])
    sc, values, quirks = prepare("lost-update", None, ())
    result = trio.run(run_schedule, sc, values, quirks, strategy, 0, 1000)
    assert result.violation is not None and result.violation.kind == "invariant"
    assert [(lab, to) for _, lab, to in strategy.preemptions] == [(write0, "worker1")]
    assert list(strategy.bit) == [(read1, write0)]


def test_the_budget_bounds_the_replays():
    found = hunt("nested-boot", quirks=["create-race-fails"], schedules=300,
                 shrink=False).found
    assert shrink(found, budget=3).replays <= 3
    assert shrink(found, budget=3).after >= shrink(found).after


def test_only_a_failing_schedule_shrinks():
    with pytest.raises(EmuError, match="only a schedule that found a violation"):
        shrink(run("lost-update", params={"locked": True}))


def test_violations_match_by_kind_and_message_without_numbers():
    key = replay_file.violation_key
    assert key({"kind": "invariant", "message": "GFN 0x5 lost 3"}) == \
        key({"kind": "invariant", "message": "GFN 0x6 lost 12"})
    assert key({"kind": "invariant", "message": "GFN 0x5"}) != \
        key({"kind": "deadlock", "message": "GFN 0x5"})
    assert key({"kind": "invariant", "message": "GFN 0x5"}) != \
        key({"kind": "invariant", "message": "PTE 0x5"})


def test_the_hunt_command_saves_both_files_and_reports_the_counts(cli, tmp_path):
    r = cli("hunt", "share-unshare-pin", "--quirk", "unshare-ignores-pin", "--out",
            str(tmp_path), "--timeline", "0")
    assert r.status == 1
    line = next(x for x in r.out.splitlines() if x.startswith("shrunk: "))
    assert re.fullmatch(r"shrunk: \d+ preemptions, \d+ steps, \d+ actors -> \d+, \d+, \d+ "
                        r"\(\d+ replays\)", line)
    (original,) = tmp_path.glob("*.replay.json")
    shrunk = tmp_path / "shrunk" / original.name.replace(".replay.json", ".shrunk.replay.json")
    assert f"shrunk replay file: {shrunk}" in r.out
    again = cli("replay", str(shrunk))
    assert again.status == 1 and "matched" in again.out and "VIOLATION: invariant" in again.out
    r = cli("hunt", "share-unshare-pin", "--quirk", "unshare-ignores-pin", "--out",
            str(tmp_path / "plain"), "--no-shrink", "--timeline", "0")
    assert "shrunk" not in r.out and not (tmp_path / "plain" / "shrunk").exists()
