"""The pytest plugin (``emu.pytest_plugin``), by running pytest on temporary test files
(``pytester``, in-process): a race fails its test with the shrunk timeline and the replay
commands, is saved in ``.emu/regressions/`` and replayed first on the next run (before any
hunt); a fixed model passes; drift and unreadable files are handled; expected findings;
the command-line options and their bad values."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from emu.sim import replay as replay_file

LOST_UPDATE = """
import pytest

@pytest.mark.emu("lost-update", schedules=50)
def test_counter():
    '''The hunt runs before the body.'''
"""

NO_HUNT = """
import pytest

import emu.pytest_plugin


@pytest.fixture(autouse=True)
def no_hunt(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a hunt ran")

    monkeypatch.setattr(emu.pytest_plugin, "hunt", refuse)
"""
"""A conftest that makes any hunt fail the test: what passes or fails then did not hunt."""

PUBLISH = """
import pytest

import emu

BAD = {bad}


@emu.scenario("plug-publish")
def publish(m):
    '''The writer publishes BAD before the real value 2; the reader must never see 1.'''
    x = m.shared("x", 0)
    seen = []

    async def writer():
{writes}

    async def reader():
        seen.append(await x.read())

    m.spawn("writer", writer)
    m.spawn("reader", reader)
    m.final("published", lambda: "the reader saw the half-published 1" if seen == [1] else None)


@pytest.mark.emu("plug-publish", schedules=30)
def test_publish():
    pass
"""
BUGGY = PUBLISH.format(bad=1, writes="        await x.write(BAD)\n        await x.write(2)")
FIXED_SAME_SCHEDULE = PUBLISH.format(
    bad="2  # fixed: the first value published is the real one",
    writes="        await x.write(BAD)\n        await x.write(2)")
FIXED_ONE_WRITE = PUBLISH.format(bad=2, writes="        await x.write(2)")


def regressions(pytester: pytest.Pytester) -> list[Path]:
    return sorted((pytester.path / ".emu" / "regressions").glob("*.replay.json"))


def lines_with(out: str, prefix: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(prefix)]


def test_a_race_fails_with_its_timeline_is_saved_and_replayed_first_next_run(pytester, cli):
    pytester.makepyfile(test_race=LOST_UPDATE)
    first = pytester.runpytest()
    first.assert_outcomes(failed=1)
    out = first.stdout.str()
    assert re.search(r"emu: lost-update: VIOLATION found in seed \d+ of a hunt of seeds 0\.\.",
                     out)
    assert "invariant: counter: counter is" in out
    assert re.search(r"shrunk: \d+ preemptions, \d+ steps, \d+ actors -> \d+, \d+, \d+", out)
    preempts = re.search(r"^preemptions: (\d+)$", out, re.M)
    assert preempts is not None
    assert "interleaving (last" in out and "!! invariant" in out  # the shrunk timeline
    [saved] = regressions(pytester)
    relative = f".emu/regressions/{saved.name}"
    assert saved.name.startswith("test_race.py_test_counter-")
    assert f"regression saved: {relative}" in out
    assert f"replay with: emu replay {relative} --explain" in out
    assert f"or: pytest 'test_race.py::test_counter' --emu-replay {relative}" in out
    data = replay_file.load(saved)
    assert data["scenario"] == "lost-update" and data["violation"]["kind"] == "invariant"
    assert data["shrunk"]["preemptions"][1] == int(preempts[1])
    again = cli("replay", relative, "--explain")  # the command printed, from where pytest ran
    assert again.status == 1 and "trace hash" in again.out and "matched" in again.out

    pytester.makeconftest(NO_HUNT)
    second = pytester.runpytest()
    second.assert_outcomes(failed=1)
    out = second.stdout.str()
    assert "a hunt ran" not in out
    head, replayed = lines_with(out, "emu: ")[:2]
    assert head.startswith("emu: lost-update: VIOLATION found replaying the regression first "
                           "(no hunt ran): invariant: counter: counter is")
    assert replayed.startswith(f"emu: replayed the regression {relative}: invariant:")
    assert f"preemptions: {preempts[1]}" in out and "!! invariant" in out
    assert f"replay with: emu replay {relative} --explain" in out
    assert regressions(pytester) == [saved]


def test_a_fixed_model_passes_and_keeps_its_regression(pytester):
    """A fix that keeps the schedule: the regression replays clean (kept), then the hunt."""
    pytester.makepyfile(test_publish=BUGGY)
    first = pytester.runpytest()
    first.assert_outcomes(failed=1)
    out = first.stdout.str()
    assert "the reader saw the half-published 1" in out
    assert "(scenario plug-publish is defined in the test code, which 'emu replay' does not " \
           "load)" in out
    [saved] = regressions(pytester)
    assert f"or: pytest 'test_publish.py::test_publish' --emu-replay .emu/regressions/" \
           f"{saved.name}" in out

    pytester.makepyfile(test_publish=FIXED_SAME_SCHEDULE)
    second = pytester.runpytest("-rP")
    second.assert_outcomes(passed=1)
    replayed, kept, hunted = lines_with(second.stdout.str(), "emu: ")
    assert replayed == f"emu: replayed the regression .emu/regressions/{saved.name}: clean"
    assert kept.startswith(f"emu: the regression .emu/regressions/{saved.name} passes: the "
                           "fix holds (kept")
    assert hunted == "emu: hunted plug-publish (random): 30 schedules, seeds 0..29: clean"
    assert regressions(pytester) == [saved]


def test_a_regression_the_model_drifted_from_is_dropped_once_it_passes(pytester):
    """A fix that changes the schedule: the decisions no longer fit, the tolerant replay
    passes, the file is dropped with a warning, and the hunt decides."""
    pytester.makepyfile(test_publish=BUGGY)
    pytester.runpytest().assert_outcomes(failed=1)
    [saved] = regressions(pytester)
    pytester.makepyfile(test_publish=FIXED_ONE_WRITE)
    second = pytester.runpytest("-rP")
    second.assert_outcomes(passed=1, warnings=1)
    out = second.stdout.str()
    assert f"emu: replayed the regression .emu/regressions/{saved.name}: its decisions no " \
           "longer fit the model" in out
    assert "emu: tolerant replay:" in out and "; clean" in out
    assert "EmuRegressionWarning: emu: dropped the regression" in out
    assert "it tests nothing precise any more" in out
    assert "emu: hunted plug-publish (random): 30 schedules, seeds 0..29: clean" in out
    assert regressions(pytester) == []


def test_a_drifted_regression_that_still_fails_is_realigned_and_fails_at_once(pytester,
                                                                             changed_model):
    pytester.makepyfile(test_race=LOST_UPDATE)
    pytester.runpytest().assert_outcomes(failed=1)
    [saved] = regressions(pytester)
    before = replay_file.load(saved)["decisions"]
    changed_model["who"], changed_model["at"] = "worker0", "write counter"
    pytester.makeconftest(NO_HUNT)
    second = pytester.runpytest()
    second.assert_outcomes(failed=1)
    out = second.stdout.str()
    assert "a hunt ran" not in out
    assert "its decisions no longer fit the model" in out and "replayed tolerantly" in out
    assert "emu: tolerant replay:" in out and "counter is" in out
    assert f"emu: .emu/regressions/{saved.name} rewritten to the realigned schedule" in out
    after = replay_file.load(saved)["decisions"]
    assert any(op == "extra before write counter" for _, _, op in after) and after != before

    third = pytester.runpytest()  # the realigned schedule now fits: a strict replay
    third.assert_outcomes(failed=1)
    assert f"emu: replayed the regression .emu/regressions/{saved.name}: invariant:" in \
           third.stdout.str()


def test_an_unreadable_regression_is_dropped_and_the_hunt_saves_a_new_one(pytester):
    pytester.makepyfile(test_race=LOST_UPDATE)
    pytester.runpytest().assert_outcomes(failed=1)
    [saved] = regressions(pytester)
    good = saved.read_text()
    saved.write_text(good.replace('"seed": ', '"seed": 1'))  # edited: the checksum fails
    second = pytester.runpytest()
    second.assert_outcomes(failed=1, warnings=1)
    out = second.stdout.str()
    assert "dropped the regression" in out and "it is unreadable" in out
    assert "was edited after emu wrote it" in out
    assert re.search(r"VIOLATION found in seed \d+ of a hunt", out)
    assert saved.read_text() == good  # the hunt is deterministic: the same shrunk schedule


EXPECTED = """
import pytest


@pytest.mark.emu("lost-update", schedules=50, expect="invariant")
def test_expected_kind():
    pass


def test_expected_with_the_fixture(emu_hunt):
    h = emu_hunt("lost-update", schedules=50, expect=True)
    assert h.found.violation.kind == "invariant" and h.found.violation.fatal


@pytest.mark.emu("lost-update", schedules=50, expect="deadlock")
def test_another_kind():
    pass


@pytest.mark.emu("lost-update", params={"locked": True}, schedules=20, expect=True)
def test_not_found():
    pass
"""


def test_expected_findings(pytester):
    """An expected finding passes and is no regression; a finding of another kind is one."""
    pytester.makepyfile(test_expect=EXPECTED)
    result = pytester.runpytest()
    result.assert_outcomes(passed=2, failed=2)
    out = result.stdout.str()
    assert re.search(r"emu: lost-update: VIOLATION found in seed \d+ of a hunt of seeds "
                     r"0\.\.\d+: invariant: .* \(expected a deadlock violation: this is "
                     "another\\)", out)
    assert "emu: expected a violation of lost-update (quirks: none), none in a hunt of seeds " \
           "0..19: 20 schedule(s) ran" in out
    [saved] = regressions(pytester)
    assert saved.name.startswith("test_expect.py_test_another_kind-")
    assert f"replay with: emu replay .emu/regressions/{saved.name} --explain" in out

    pytester.makeconftest(NO_HUNT)
    again = pytester.runpytest("test_expect.py::test_another_kind")
    again.assert_outcomes(failed=1)
    assert "VIOLATION found replaying the regression first (no hunt ran): invariant:" in \
           again.stdout.str()


OPTIONS = """
import pytest


@pytest.mark.emu("lost-update", params={"locked": True}, schedules=50, seed=3)
def test_marked(emu_hunt):
    h = emu_hunt()
    assert (h.seed, h.schedules, h.params["locked"]) == (5, 7, True)
    h = emu_hunt(params={"locked": True, "actors": 2})
    assert (h.seed, h.schedules, h.params["actors"]) == (5, 7, 2)


def test_by_fixture(emu_hunt):
    h = emu_hunt("srcu-uaf", schedules=40)
    assert (h.seed, h.schedules) == (5, 7) and h.ok
"""


def test_the_seed_and_schedules_options_override_every_hunt(pytester):
    pytester.makepyfile(test_options=OPTIONS)
    result = pytester.runpytest("--emu-seed", "5", "--emu-schedules", "7", "-rP",
                                "--strict-markers")
    result.assert_outcomes(passed=2)
    hunted = lines_with(result.stdout.str(), "emu: hunted")
    assert hunted == ["emu: hunted lost-update (random): 7 schedules, seeds 5..11: clean"] * 2 \
        + ["emu: hunted srcu-uaf (random): 7 schedules, seeds 5..11: clean"]


REPLAYED = """
import pytest


@pytest.mark.emu("lost-update", schedules=50)
def test_racy():
    pass


@pytest.mark.emu("lost-update", params={"locked": True}, schedules=50)
def test_locked():
    pass
"""


def test_replay_option_replays_a_file_in_the_hunts_it_belongs_to(pytester, cli):
    out = pytester.path / "out"
    assert cli("hunt", "lost-update", "--out", str(out)).status == 1
    [shrunk] = sorted((out / "shrunk").glob("*.replay.json"))
    recorded = json.loads(shrunk.read_text())
    pytester.makepyfile(test_replayed=REPLAYED)
    pytester.makeconftest(NO_HUNT)
    result = pytester.runpytest("--emu-replay", str(shrunk), "-rs")
    result.assert_outcomes(failed=1, skipped=1)
    text = result.stdout.str()
    assert "a hunt ran" not in text
    assert "emu: lost-update: VIOLATION found by --emu-replay (no hunt ran): invariant:" in text
    assert f"preemptions: {recorded['shrunk']['preemptions'][1]}" in text
    assert "its schedule is of lost-update with other parameters, quirks or release than " \
           "this hunt of lost-update" in text
    assert regressions(pytester) == []  # a replayed file is not saved again


@pytest.mark.parametrize(("args", "message"), [
    (["--emu-seed", "-1"], "argument --emu-seed: bad seed -1 (between 0 and "),
    (["--emu-seed", "x"], "argument --emu-seed: 'x' is not a whole number"),
    (["--emu-schedules", "0"], "argument --emu-schedules: bad number of schedules 0 (at "
                               "least 1)"),
    (["--emu-replay", "missing.json"], "--emu-replay: no replay file 'missing.json'"),
    (["--emu-replay", "test_bad.py"], "--emu-replay: test_bad.py is not a replay file: invalid "
                                      "JSON"),
])
def test_bad_option_values_are_usage_errors(pytester, args, message):
    pytester.makepyfile(test_bad="def test_nothing():\n    pass\n")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


MISUSED = """
import pytest


@pytest.mark.emu("lost-update", schedule=5)
def test_misspelt():
    pass


@pytest.mark.emu("no-such-scenario")
def test_unknown_scenario():
    pass


@pytest.mark.emu("lost-update", params={"workers": 2})
def test_unknown_parameter():
    pass


@pytest.mark.emu("lost-update", "abba")
def test_two_scenarios():
    pass


def test_strategy(emu_hunt):
    emu_hunt("lost-update", strategy="bfs")


@pytest.mark.emu("lost-update", expect=3)
def test_expect():
    pass
"""


def test_a_misused_marker_or_fixture_fails_its_test_in_one_line(pytester):
    pytester.makepyfile(test_misused=MISUSED)
    result = pytester.runpytest("--strict-markers")
    result.assert_outcomes(failed=6)
    out = result.stdout.str()
    for message in ["emu: unknown hunt option 'schedule'; did you mean schedules?",
                    "emu: unknown scenario 'no-such-scenario'",
                    "emu: unknown parameter 'workers' for scenario lost-update",
                    "emu: a hunt takes one scenario (a name, 'file.py:function' or a "
                    "Scenario), not 2 positional arguments",
                    "emu: unknown strategy 'bfs'",
                    "emu: expect=3: expected True (any violation) or a violation kind"]:
        assert message in out
    assert "Traceback" not in out


HUNTS_NOTHING = """
import signal

import pytest

from emu.sim.interrupt import INTERRUPT


@pytest.mark.emu("lost-update", params={"locked": True}, schedules=20)
def test_never_hunts(emu_hunt):
    pass


def test_interrupted(emu_hunt):
    INTERRUPT.signum = signal.SIGINT
    try:
        emu_hunt("lost-update", params={"locked": True}, schedules=20)
    finally:
        INTERRUPT.signum = None
"""


def test_a_hunt_that_proves_nothing_fails(pytester):
    """A marked test that never calls its ``emu_hunt``, and a hunt interrupted before its
    schedules ran, are not passes."""
    pytester.makepyfile(test_nothing=HUNTS_NOTHING)
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, errors=1, failed=1)
    out = result.stdout.str()
    assert "ERROR at teardown of test_never_hunts" in out
    assert "asks for emu_hunt, but never called emu_hunt(): its marker hunted nothing" in out
    assert "emu: the hunt of lost-update was interrupted after 0 schedule(s): it proves " \
           "nothing" in out


def test_two_workers_give_the_same_failure_and_regression(pytester):
    pytester.makepyfile(test_race=LOST_UPDATE)
    one = pytester.runpytest()
    [saved] = regressions(pytester)
    by_one = saved.read_text()
    saved.unlink()
    pytester.makepyfile(test_race=LOST_UPDATE.replace("schedules=50", "schedules=50, workers=2"))
    two = pytester.runpytest()
    assert saved.read_text() == by_one
    head = [lines_with(r.stdout.str(), "emu: lost-update") for r in (one, two)]
    assert head[0] == head[1] and head[0]


def test_a_scenario_file_hunt_replays_from_its_file(pytester, cli, race_file):
    """``file.py:function``: ``emu replay`` finds the file again (the replay file records
    it), and so does the next run's replay."""
    pytester.makepyfile(test_file=f"""
def test_mine(emu_hunt):
    emu_hunt({str(race_file) + ':race'!r}, schedules=30)
""")
    first = pytester.runpytest()
    first.assert_outcomes(failed=1)
    [saved] = regressions(pytester)
    relative = f".emu/regressions/{saved.name}"
    assert f"replay with: emu replay {relative} --explain" in first.stdout.str()
    assert cli("replay", relative).status == 1
    pytester.makeconftest(NO_HUNT)
    second = pytester.runpytest()
    second.assert_outcomes(failed=1)
    assert "VIOLATION found replaying the regression first (no hunt ran): invariant: sum: c=1" \
        in second.stdout.str()


def test_a_regression_directory_that_cannot_be_written_still_reports_the_race(pytester):
    (pytester.path / ".emu").write_text("a file where the directory should be\n")
    pytester.makepyfile(test_race=LOST_UPDATE)
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "regression NOT saved: cannot write to the regression directory" in out
    assert "VIOLATION found in seed" in out and "!! invariant" in out
