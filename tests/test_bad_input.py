"""Every bad input gets one line on stderr and exit status 2: never a traceback, a hang, a
bogus finding or a silently ignored value.

Each case is ``(argv, text)``: ``argv`` is a list, or a function of a scratch directory that
makes the files the case needs and returns the list; ``text`` must be in the one line.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from emu.sim import replay as replay_file
from emu.sim.runner import hunt

HANG_GUARD = 60
"""Seconds after which a case counts as hung (a guard, not a timing assertion)."""


def _replay(tmp: Path, edit=None, *, accept: bool = False, checksum: bool = False) -> list:
    """A genuine replay file of lost-update, edited by ``edit(data)``; ``checksum``: the
    editor also recomputed the checksum (so only the content checks can catch it)."""
    found = hunt("lost-update", schedules=50, seed=1).found
    path = replay_file.save(tmp / "r.replay.json", found)
    if edit is not None:
        data = json.loads(path.read_text())
        edit(data)
        if checksum:
            data["checksum"] = replay_file._checksum(data)
        path.write_text(json.dumps(data))
    return ["replay", str(path), *(["--accept-edits"] if accept else [])]


def _raw_replay(text: str | bytes):
    def make(tmp: Path) -> list:
        path = tmp / "raw.replay.json"
        (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
        return ["replay", str(path)]
    return make


def _scenario_file(source: str, func: str = "race"):
    def make(tmp: Path) -> list:
        path = tmp / "mine.py"
        path.write_text(source)
        return ["run", f"{path}:{func}"]
    return make


def _under_a_file(*argv: str):
    """``argv`` with ``{f}`` standing for a path below a regular file."""
    def make(tmp: Path) -> list:
        (tmp / "plain").write_text("")
        return [a.replace("{f}", str(tmp / "plain" / "sub")) for a in argv]
    return make


def _set(key, value):
    def edit(data):
        data[key] = value
    return edit


def _decision(i, value):
    def edit(data):
        data["decisions"][i] = value
    return edit


HEADER = {"format": "emu-replay", "format_version": 2}

CASES = [
    # scenarios, parameters, quirks
    (["run", "no-such-scenario"], "unknown scenario 'no-such-scenario'"),
    (["hunt", "lost-updat"], "did you mean lost-update?"),
    (["run", "svm"], "'svm' is a suite"),
    (["hunt", "svm", "-p", "pool=5"], "unknown parameter 'pool' for scenario abort-on-register"),
    (["hunt", "srcu-uaf", "--quirk", "nope"], "unknown quirk 'nope' for scenario srcu-uaf"),
    (["run", "lost-update", "-p", "locked"], "bad -p 'locked': expected NAME=VALUE"),
    (["run", "lost-update", "-p", "=3"], "bad -p '=3'"),
    (["run", "lost-update", "-p", "locked=maybe"], "bad value for parameter locked"),
    (["run", "lost-update", "-p", "actors=three"], "expected int"),
    (["run", "lost-update", "-p", "actors=0"], "at least 1"),
    (["run", "lost-update", "-p", "actors=" + "9" * 5000], "expected int"),
    (["run", "lost-update", "-p", "actors=100000"], "at most 2048"),
    (["run", "lost-update", "-p", "increments=100000000000"], "GiB of memory"),
    (["run", "lost-update", "-p", "color=red"], "unknown parameter 'color'"),
    (["run", "svm-boot", "-p", "design=three-state"], "one of: gfn-states, two-state"),
    (["run", "svm-boot", "-p", "vcpus=100000"], "vcpus: 100000 (at most 2048)"),
    (["run", "svm-boot", "-p", "pcpus=-1"], "at least 0"),
    (["run", "svm-boot", "-p", "mem_mb=100000000"], "GiB of memory"),
    (["run", "share-vs-pageout", "-p", "setup_fail_pct=200"], "at most 100"),
    (["run", "abort-on-register-failure", "-p", "fail_slot=99"], "fail_slot 99"),
    (["run", "share-storm", "-p", "pool=1000000"], "pool 1000000"),
    # strategy, seeds, budgets, output
    (["run", "lost-update", "--strategy", "dfs"], "unknown strategy 'dfs'"),
    (["run", "lost-update", "--strategy", "pct", "--depth", "0"], "--depth"),
    (["run", "lost-update", "--strategy", "pct", "--depth", "330"], "1<=x<=100"),
    (["run", "lost-update", "--strategy", "pct", "--depth", "100000000000"], "1<=x<=100"),
    (["run", "lost-update", "--seed", "x"], "'x' is not a valid integer"),
    (["run", "lost-update", "--seed", "-1"], "--seed"),
    (["run", "lost-update", "--seed", str(2**64)], "--seed"),
    (["hunt", "lost-update", "--schedules", "0"], "--schedules"),
    (["hunt", "lost-update", "--schedules", "-3"], "--schedules"),
    (["run", "lost-update", "--max-steps", "0"], "--max-steps"),
    (["run", "lost-update", "--max-steps", "-1"], "--max-steps"),
    (["run", "lost-update", "--timeline", "-5"], "--timeline"),
    (["hunt", "lost-update", "--timeline", "-1"], "--timeline"),
    (["run", "lost-update", "--trace", ""], "--trace needs a file path"),
    (lambda tmp: ["run", "lost-update", "--trace", str(tmp)], "is a directory"),
    (_under_a_file("run", "lost-update", "--trace", "{f}/t.json"), "Not a directory"),
    (["run", "lost-update", "--trace", "/proc/emu/t.json"], "cannot write"),
    (_under_a_file("hunt", "lost-update", "--out", "{f}"), "cannot write to --out"),
    (["hunt", "lost-update", "--out", "/proc/emu-out"], "cannot write to --out"),
    (["hunt", "lost-update", "--out", ""], "--out"),
    (["frobnicate"], "No such command"),
    (["run", "lost-update", "--frob"], "No such option"),
    (["list", "extra"], "ending in .py, not 'extra'"),
    (["list", "a.py", "b.py"], "unexpected extra argument"),
    (["list", "missing.py"], "no scenario file 'missing.py'"),
    (["study", "nope"], "unknown study 'nope'"),
    (["study", "esm-scaling", "--sizes", "abc"], "bad --sizes"),
    (["study", "esm-scaling", "--sizes", "-1"], "sizes must be positive"),
    (_under_a_file("study", "esm-scaling", "--sizes", "1", "--out", "{f}"), "--out"),
    # scenario files
    (["run", "missing.py:f"], "no scenario file 'missing.py'"),
    (_scenario_file("def oops(:\n"), "cannot load"),
    (_scenario_file("x = 1\n"), "has no scenario function 'race'"),
    (_scenario_file("import sys\nsys.exit(3)\n"), "called sys.exit(3)"),
    (_scenario_file("raise RuntimeError('first\\nsecond\\nthird')\n"), "2 more line(s)"),
    (_scenario_file("def race(m):\n    raise ValueError('no\\nway')\n"), "more line(s)"),
    (_scenario_file("import sys\ndef race(m):\n    sys.exit(4)\n"), "failed to build: SystemExit"),
    (lambda tmp: (tmp / "d.py").mkdir() or ["run", f"{tmp / 'd.py'}:race"], "no scenario file"),
    # replay files: not a file, not JSON, not a replay file
    (["replay", "/nonexistent/r.json"], "no replay file"),
    (["replay", "/dev/zero"], "not a regular file"),
    (lambda tmp: ["replay", str(tmp)], "is a directory"),
    (lambda tmp: os.mkfifo(tmp / "fifo") or ["replay", str(tmp / "fifo")], "not a regular file"),
    (_raw_replay(""), "invalid JSON"),
    (_raw_replay("{not json"), "invalid JSON"),
    (_raw_replay(b"\x80garbage"), "not UTF-8"),
    (_raw_replay("[" * 100_000 + "]" * 100_000), "nested too deeply"),
    (_raw_replay('{"seed": ' + "7" * 5000 + "}"), "invalid JSON"),
    (_raw_replay(json.dumps([1, 2])), "not a replay file"),
    (_raw_replay(json.dumps({**HEADER, "format_version": 99})), "format version 99"),
    (_raw_replay(json.dumps(HEADER)), "corrupt replay file"),
    # replay files emu wrote, then edited
    (lambda tmp: _replay(tmp, _set("seed", 4)), "was edited after emu wrote it"),
    (lambda tmp: _replay(tmp, _set("trace_hash", "0" * 16)), "was edited"),
    (lambda tmp: _replay(tmp, _decision(1, [7, "worker0", "start"])), "was edited"),
    (lambda tmp: _replay(tmp, _decision(1, [7, "worker0", "start"]), checksum=True),
     "decision 2 is numbered step 7"),
    (lambda tmp: _replay(tmp, _decision(0, [1, "worker0"]), accept=True),
     "decision 1 is not [step, actor, operation]"),
    (lambda tmp: _replay(tmp, _set("seed", -1), accept=True), "seed -1 out of range"),
    (lambda tmp: _replay(tmp, _set("seed", True), accept=True), "'seed' missing or not a int"),
    (lambda tmp: _replay(tmp, _set("max_steps", 0), accept=True), "max_steps 0 out of range"),
    (lambda tmp: _replay(tmp, _set("max_steps", 3), accept=True), "more than max_steps 3"),
    (lambda tmp: _replay(tmp, _set("trace_hash", "zz"), accept=True), "not 16 hex digits"),
    (lambda tmp: _replay(tmp, _set("strategy", {"name": "pct", "depth": 10**9, "k": 3}),
                         accept=True), "bad strategy"),
    (lambda tmp: _replay(tmp, _set("quirks", [1]), accept=True), "quirks must be names"),
    (lambda tmp: _replay(tmp, _set("scenario", "abba"), accept=True),
     "unknown parameter 'actors' for scenario abba"),
    (lambda tmp: _replay(tmp, _set("params", {"actors": 2}), accept=True),
     "the replay file chooses worker2"),
    (lambda tmp: _replay(tmp, lambda d: d["decisions"].pop(), checksum=True),
     "the schedule goes on past the 8 recorded decisions"),
    (lambda tmp: _replay(tmp, _decision(2, [3, "worker9", "start"]), accept=True),
     "the replay file chooses worker9"),
    (lambda tmp: ["replay", "--trace", "", *_replay(tmp)[1:]], "--trace needs a file path"),
]


@pytest.fixture
def hang_guard():
    def hung(*_):
        raise TimeoutError(f"the case took over {HANG_GUARD} s: it hangs")
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(HANG_GUARD)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_there_are_at_least_60_cases():
    assert len(CASES) >= 60


@pytest.mark.parametrize("make, text", CASES, ids=range(len(CASES)))
def test_bad_input_is_one_line_exit_2(cli, tmp_path, hang_guard, make, text):
    argv = make(tmp_path) if callable(make) else make
    r = cli(*argv)
    assert r.status == 2, r
    assert r.out == "", "a bad input must be refused before anything runs"
    assert "Traceback" not in r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("emu: error: "), r.err
    assert text in lines[0], lines[0]
