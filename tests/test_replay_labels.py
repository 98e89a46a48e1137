"""Replay that survives a model change: decisions are labelled (actor, operation, n); a strict
replay names the first decision that no longer fits and what could run instead, a tolerant
one realigns by label and still finds the violation the file records."""

from __future__ import annotations

import json

import pytest
from test_shrink_quirks import CLAIMS, finding  # (the module pytest imported: one cache)

from emu.errors import ReplayDivergence
from emu.sim import replay as replay_file
from emu.sim.runner import hunt
from emu.sim.strategies import labelled

RACE = '''
async def _w(m, c, i):
    await m.point(f"prepare {i}")
    v = await c.read()
    await c.write(v + 1)


def race(m, workers=2):
    c = m.shared("c", 0)
    for i in range(workers):
        m.spawn(f"w{i}", _w, m, c, i)
    m.final("sum", lambda: None if c.value == workers else f"c={c.value}")
'''

def test_labels_count_each_actor_s_operations():
    decisions = [(1, "a", "lock"), (2, "b", "lock"), (3, "a", "lock"), (4, "a", "unlock")]
    assert labelled(decisions) == [("a", "lock", 1), ("b", "lock", 1), ("a", "lock", 2),
                                   ("a", "unlock", 1)]


def _found_then_changed(cli, tmp_path, old: str, new: str):
    """A replay file of the race, then the scenario file edited (``old`` -> ``new``)."""
    src = tmp_path / "race.py"
    src.write_text(RACE)
    assert cli("hunt", f"{src}:race", "--out", str(tmp_path / "out"), "--no-shrink").status == 1
    path = next((tmp_path / "out").glob("race-race-seed*.replay.json"))
    assert json.loads(path.read_text())["format_version"] == replay_file.FORMAT_VERSION
    assert old in RACE
    src.write_text(RACE.replace(old, new))
    return path


def test_an_extra_scheduling_point_strict_names_the_drift_tolerant_finds_the_race(cli,
                                                                                  tmp_path):
    path = _found_then_changed(cli, tmp_path, "    await c.write(v + 1)",
                               "    if i == 0:\n        await m.point('check')\n"
                               "    await c.write(v + 1)")
    r = cli("replay", str(path))
    assert r.status == 2
    assert "the replay file has w0 doing 'write c' (its 1st time), but here w0 is at 'check'" \
        in r.err
    assert "runnable: " in r.err and "w0: 'check'" in r.err
    r = cli("replay", "--tolerant", str(path))
    assert r.status == 1 and "VIOLATION: invariant: sum: c=1" in r.out
    tolerant = next(line for line in r.out.splitlines() if line.startswith("tolerant: "))
    assert "1 new step(s)" in tolerant and "0 skipped" in tolerant
    assert tolerant.endswith("the violation recurs")


def test_a_renamed_operation_is_skipped_and_the_race_still_found(cli, tmp_path):
    path = _found_then_changed(cli, tmp_path, 'await m.point(f"prepare {i}")',
                               'await m.point(f"setup {i}")')
    r = cli("replay", str(path))
    assert r.status == 2 and "doing 'prepare 0'" in r.err and "w0 is at 'setup 0'" in r.err
    r = cli("replay", "--tolerant", str(path))
    tolerant = next(line for line in r.out.splitlines() if line.startswith("tolerant: "))
    assert r.status == 1 and "2 skipped" in tolerant and "2 new step(s)" in tolerant
    assert tolerant.endswith("the violation recurs")


def test_an_unchanged_model_replays_tolerantly_step_for_step(tmp_path):
    found = hunt("lost-update", schedules=50, seed=1, shrink=False).found
    data = replay_file.load(replay_file.save(tmp_path / "r.replay.json", found))
    rep = replay_file.replay(data, tolerant=True)
    assert rep.matched and rep.reproduced
    assert rep.tolerant.matched == len(found.decisions) and rep.tolerant.free == 0


@pytest.mark.parametrize("quirk", list(CLAIMS))
def test_shrunk_quirk_replays_survive_an_extra_point_and_a_rename(tmp_path, changed_model,
                                                                   quirk):
    """Every quirk of every platform: its shrunk replay file, in a model with an extra
    scheduling point in the middle of the schedule (before one actor's operation) and
    another actor's operation renamed, replays tolerantly to its violation; strictly, it
    stops at the first drift and names what could run."""
    s = finding(quirk).shrunk
    data = replay_file.load(replay_file.save(tmp_path / "s.replay.json", s.result, s.record()))
    ops = [(name, op) for _, name, op in data["decisions"] if op != "start"]
    if not ops:  # (the violation shows while the scenario is built: no step to change)
        assert quirk == "pgd-refcount" and replay_file.replay(data, tolerant=True).reproduced
        return
    who, at = changed_model["who"], changed_model["at"] = ops[len(ops) // 2]
    rename = changed_model["rename"] = next(op for name, op in ops if name != who)
    first = next(step for step, name, op in data["decisions"]
                 if op == rename or (name, op) == (who, at))
    with pytest.raises(ReplayDivergence, match="runnable: ") as drift:
        replay_file.replay(data)
    assert str(drift.value).startswith(f"at step {first} the replay file ")
    rep = replay_file.replay(data, tolerant=True)
    assert rep.reproduced, (rep.tolerant.summary(), rep.result.violation)
    assert rep.tolerant.new >= 2 and rep.tolerant.skipped >= 1
