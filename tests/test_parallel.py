"""Hunts in worker processes (``--workers``) equal the serial hunt, keep every finding across
interrupts, refuse strategies that learn; and the JSON event log (``--log-json``)."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import attrs
import pytest
from conftest import first_finding, interrupt, replay_saved, start_hunt

import emu
from emu.errors import EmuError, ScenarioError
from emu.sim.parallel import Arrivals, Job
from emu.sim.runner import RunResult, prepare, run
from emu.sim.trace import Trace


def _hunt(name: str, workers: int, **options) -> tuple[emu.HuntResult, list[int]]:
    reported: list[int] = []
    h = emu.hunt(name, workers=workers, shrink=False,
                 on_finding=lambda r: reported.append(r.seed), **options)
    return h, reported


def _summary(h: emu.HuntResult) -> tuple:
    found = (h.found.seed, h.found.trace_hash, h.found.violation.kind) if h.found else None
    return (h.schedules, found, h.violating, h.steps_total, h.steps_max, h.actors,
            h.mismatches, h.interrupted)


@pytest.mark.parametrize("name, quirks, params", [
    ("lost-update", [], {}),                                       # the engine demo
    ("share-vs-pageout", ["page-out-lock-leak"], {}),              # svm
    ("share-unshare-pin", ["check-apply-unlocked"], {}),           # pkvm
    ("nested-teardown-vs-enter", ["idr-alloc-unlocked"], {}),      # nested
    ("share-vs-pageout", [], {}),                                  # clean: every seed
])
def test_two_workers_hunt_as_one(name, quirks, params):
    serial, serial_reported = _hunt(name, 1, schedules=40, quirks=quirks, params=params)
    parallel, reported = _hunt(name, 2, schedules=40, quirks=quirks, params=params)
    assert _summary(parallel) == _summary(serial)
    # every finding the serial hunt reported was reported (and saved) as it arrived; beyond
    # them, only findings of seeds past the first fatal one that arrived before it
    assert set(serial_reported) <= set(reported)
    first = serial.found.seed if serial.found else None
    assert all(s in serial_reported or s > first for s in reported)


def test_keep_going_reports_exactly_the_serial_findings():
    serial, serial_reported = _hunt("lost-update", 1, schedules=150, keep_going=True)
    parallel, reported = _hunt("lost-update", 2, schedules=150, keep_going=True)
    assert _summary(parallel) == _summary(serial) and serial.violating > 10
    assert sorted(reported) == serial_reported


def test_determinism_check_across_processes():
    serial, _ = _hunt("lost-update", 1, schedules=60, check_determinism=True)
    parallel, _ = _hunt("lost-update", 2, schedules=60, check_determinism=True)
    assert _summary(parallel) == _summary(serial) and parallel.schedules == 60


def _result(seed: int, *violations) -> RunResult:
    return RunResult("s", {}, (), {"name": "random"}, seed, 10, list(violations),
                     Trace(), 1, 0)


def test_a_later_seed_found_first_is_saved_but_the_lowest_is_reported():
    fatal = run("lost-update", seed=3).violation
    warning = run("abba", seed=1).violation
    assert fatal.fatal and not warning.fatal
    saved: list[int] = []
    arrivals = Arrivals(100, keep_going=False, on_finding=lambda r: saved.append(r.seed))
    for seed in (30, 40, 20):  # 40 is not the lowest warning: unsaved; 20 is lower: saved
        arrivals.arrive(seed, _result(seed, warning))
        assert arrivals.limit == 100
    arrivals.arrive(50, _result(50, fatal))
    assert arrivals.limit == 51
    arrivals.arrive(45, _result(45, fatal))
    assert arrivals.limit == 46
    arrivals.arrive(48, _result(48, fatal))  # past the limit: the hunt stops first
    arrivals.arrive(47, _result(47))
    assert saved == [30, 20, 50, 45]
    assert sorted(arrivals.results) == [20, 30, 40, 45]
    boom = ScenarioError("boom")
    arrivals.arrive(41, boom)
    assert arrivals.limit == 42
    assert arrivals.take(20).seed == 20
    with pytest.raises(ScenarioError, match="boom"):
        arrivals.take(41)


BOOM = ("def boom(m):\n"
        "    x = m.random.random()\n"
        "    if x < 0.15:\n"
        "        raise ValueError(f'draw {x}')\n"
        "    m.spawn('a', _a)\n"
        "async def _a():\n"
        "    pass\n")


def test_an_error_is_raised_at_its_seed_as_serially(tmp_path):
    f = tmp_path / "boom.py"
    f.write_text(BOOM)
    raised = []
    for workers in (1, 2):
        with pytest.raises(ScenarioError) as info:
            emu.hunt(f"{f}:boom", schedules=60, workers=workers)
        raised.append(str(info.value))
    assert raised[0] == raised[1] and "failed to build: ValueError: draw 0." in raised[0]


def test_a_worker_that_dies_is_an_error_not_a_hang(tmp_path):
    f = tmp_path / "dies.py"
    f.write_text("import os\n" + BOOM.replace("raise ValueError(f'draw {x}')", "os._exit(3)"))
    with pytest.raises(EmuError, match=r"a hunt worker failed running seeds \d+\.\.\d+ "
                                       r"\(a worker died: pid \d+, exit code -?\d+"):
        emu.hunt(f"{f}:boom", schedules=60, workers=2)


@pytest.mark.parametrize("strategy", ["guided", "portfolio"])
def test_learning_strategies_are_refused(cli, strategy, tmp_path):
    with pytest.raises(EmuError, match="learns from every earlier schedule"):
        emu.hunt("lost-update", strategy=strategy, workers=2)
    r = cli("hunt", "lost-update", "--strategy", strategy, "--workers", "2", "--out",
            str(tmp_path))
    assert r.status == 2 and r.out == "" and len(r.err.strip().splitlines()) == 1
    assert f"--strategy {strategy} cannot run with --workers 2" in r.err


def test_workers_need_linux(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(EmuError, match=r"fork start method.*this is darwin.*--workers 1"):
        emu.hunt("lost-update", workers=2)
    assert emu.hunt("lost-update", workers=1, shrink=False).found.seed == 3


@pytest.mark.parametrize("value", ["0", "-1", "257", "two", ""])
def test_bad_worker_counts_are_one_line_errors(cli, value, tmp_path):
    r = cli("hunt", "lost-update", "--workers", value, "--out", str(tmp_path))
    assert r.status == 2 and len(r.err.strip().splitlines()) == 1 and "--workers" in r.err


@pytest.mark.parametrize("workers", ["1", "2"])
def test_log_json_has_batches_and_the_finding(cli, tmp_path, workers):
    log = tmp_path / "log" / "hunt.jsonl"
    r = cli("hunt", "lost-update", "--keep-going", "--schedules", "250", "--workers", workers,
            "--out", str(tmp_path / "out"), "--log-json", str(log), "--no-shrink")
    assert r.status == 1
    events = [json.loads(line)["record"]["extra"] for line in log.read_text().splitlines()]
    batches = [e for e in events if e["event"] == "batch"]
    findings = [e for e in events if e["event"] == "finding"]
    assert [b["schedules"] for b in batches] == [100, 200, 250]
    assert batches[-1]["final"] and batches[-1]["findings"] == len(findings) > 0
    assert all(b["rate"] > 0 for b in batches)
    index = (tmp_path / "out" / "findings.jsonl").read_text().splitlines()
    assert sorted(f["seed"] for f in findings) == sorted(json.loads(e)["seed"] for e in index)
    first = min(findings, key=lambda f: f["seed"])
    assert first["scenario"] == "lost-update" and first["kind"] and first["message"]
    assert Path(first["replay"]).is_file()


def test_bad_log_json_path_is_refused_up_front(cli, tmp_path):
    r = cli("hunt", "lost-update", "--log-json", str(tmp_path), "--out", str(tmp_path))
    assert r.status == 2 and "--log-json" in r.err and "directory" in r.err


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _gone(pids: list[int]) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not [p for p in pids if Path(f"/proc/{p}").exists() and
                "Z" not in Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1][:3]]:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_stops_the_workers_and_keeps_every_finding(tmp_path, sig, status):
    proc = start_hunt(tmp_path, "--workers", "2")
    first = first_finding(proc)
    workers = _children(proc.pid)
    assert len(workers) == 2
    out, summary, index = interrupt(proc, sig, status, tmp_path)
    announced = [first] + [x for x in out.splitlines() if x.startswith("finding:")]
    assert len(announced) == len(index)
    resume = int(summary.rsplit("--seed ", 1)[1].split()[0])
    assert resume > 0  # the seeds below it all ran
    for entry in map(json.loads, index):
        assert (tmp_path / entry["replay"]).is_file() and (tmp_path / entry["trace"]).is_file()
    assert _gone(workers)


def test_workers_end_when_the_hunt_is_killed(tmp_path):
    proc = start_hunt(tmp_path, "--workers", "2")
    line = first_finding(proc)
    workers = _children(proc.pid)
    proc.kill()
    proc.wait()
    assert _gone(workers), "a worker outlived its parent"
    _, replay = replay_saved(line, tmp_path)
    assert replay.returncode == 1 and "matched" in replay.stdout, replay.stderr


@pytest.mark.parametrize("hashes", [False, True])
def test_a_workers_clean_result_carries_its_hash_only_when_asked(hashes):
    """A clean schedule comes back from a worker as its trace's summary: with the hash the
    serial hunt computes when the hunt asks for hashes, else an error, never a made-up
    hash."""
    locked = {"params": {"locked": True}, "schedules": 6, "shrink": False}
    serial: list[str] = []
    assert emu.hunt("lost-update", progress=lambda n, r: serial.append(r.trace_hash),
                    **locked).ok
    got: list[str] = []

    def progress(n: int, r: RunResult) -> None:
        try:
            got.append(r.trace_hash)
        except EmuError as exc:
            got.append(str(exc))

    emu.hunt("lost-update", workers=2, hashes=hashes, progress=progress, **locked)
    assert got == (serial if hashes else ["this trace was summarised by a hunt worker "
                                          "without its hash (hunt(..., hashes=True) keeps "
                                          "it)"] * 6)


def test_a_cluster_worker_refuses_another_emu_or_another_scenario_file(tmp_path):
    """A worker rebuilds the hunt's schedules from its Job: not with another emu, nor from a
    scenario file that differs from the hunt's."""
    f = tmp_path / "boom.py"
    f.write_text(BOOM)
    sc, values, quirks = prepare(f"{f}:boom", None, ())
    job = Job.of(sc, values, quirks, 100, None)
    assert job.build() is not None
    with pytest.raises(EmuError, match=r"this worker runs emu .*, the hunt emu 0\.0: install "
                                       "the same emu on every host"):
        attrs.evolve(job, version="0.0").build()
    f.write_text(BOOM + "# edited\n")
    with pytest.raises(EmuError, match=f"the scenario file {f} differs on this worker"):
        job.build()
