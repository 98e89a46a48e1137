"""A hunt never loses a finding: files written whole before the finding is announced, kills
and interrupts that lose nothing, replay files that find their scenario file from anywhere
and say when it changed, and the command's own polish (usage, help, timeline)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import first_finding, interrupt, replay_saved, start_hunt

from emu.sim import replay as replay_file
from emu.sim.files import write_atomic
from emu.sim.findings import stem
from emu.sim.runner import detailed, run

ROOT = Path(__file__).resolve().parent.parent
def test_sigkill_right_after_a_finding_loses_nothing(tmp_path):
    proc = start_hunt(tmp_path)
    line = first_finding(proc)
    proc.kill()
    proc.wait()
    saved, replay = replay_saved(line, tmp_path)
    assert replay.returncode == 1, replay.stderr
    assert "matched" in replay.stdout
    index = (tmp_path / "out" / "findings.jsonl").read_text().splitlines()
    assert index and json.loads(index[0])["replay"] == saved


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_ends_the_hunt_cleanly(tmp_path, sig, status):
    proc = start_hunt(tmp_path)
    first_finding(proc)
    time.sleep(0.5)
    _, summary, index = interrupt(proc, sig, status, tmp_path)
    assert "To go on where it stopped: emu hunt lost-update --seed " in summary
    for entry in map(json.loads, index):
        data = replay_file.load(tmp_path / entry["replay"])
        assert data["seed"] == entry["seed"]
        assert (tmp_path / entry["trace"]).is_file()


def test_interrupt_is_not_a_finding_in_a_clean_hunt(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "emu.cli", "hunt", "lost-update", "-p", "locked=true",
         "--schedules", "1000000", "--out", str(tmp_path / "out")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    assert "0 finding(s), nothing was found" in out


def test_atomic_write_leaves_the_old_file_or_the_new(tmp_path):
    target = tmp_path / "f.json"
    write_atomic(target, "old\n")
    with pytest.raises(TypeError):
        write_atomic(target, 42)  # fails mid-write: nothing replaced, nothing left over
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_file_scenarios_get_distinct_names_and_replay_from_anywhere(cli, race_file, tmp_path):
    src = tmp_path / "proj" / "mine.py"
    src.parent.mkdir()
    race_file.rename(src)
    out = tmp_path / "proj" / "out"
    for func in ("race", "other"):
        assert cli("hunt", f"{src}:{func}", "--out", str(out), "--keep-going",
                   "--schedules", "20").status == 1
    names = sorted(p.name for p in out.glob("*.replay.json"))
    assert any(n.startswith("mine-race-seed") for n in names)
    assert any(n.startswith("mine-other-seed") for n in names)
    assert len(names) == len((out / "findings.jsonl").read_text().splitlines())
    first = out / names[0]
    data = json.loads(first.read_text())
    record = data["scenario_file"]
    assert record["sha256"] and Path(record["absolute"]) == src.resolve()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    p = subprocess.run([sys.executable, "-m", "emu.cli", "replay", str(first)],
                       capture_output=True, text=True, cwd=elsewhere)
    assert p.returncode == 1 and "matched" in p.stdout, p.stderr
    assert "changed" not in p.stdout
    # the whole tree moves: found beside the replay file
    moved = tmp_path / "moved"
    (tmp_path / "proj").rename(moved)
    p = subprocess.run([sys.executable, "-m", "emu.cli", "replay", str(moved / "out" /
                        names[0])], capture_output=True, text=True, cwd=elsewhere)
    assert p.returncode == 1 and "matched" in p.stdout, p.stderr


def test_replay_says_when_the_scenario_file_changed(cli, race_file, tmp_path):
    src = race_file
    cli("hunt", f"{src}:race", "--out", str(tmp_path))
    path = next(tmp_path.glob("mine-race-seed*.replay.json"))
    src.write_text(src.read_text().replace("workers=2", "workers=3"))
    r = cli("replay", str(path))
    note = r.out.splitlines()[0]
    assert note.startswith("note: ") and "changed since the replay file was written" in note
    src.unlink()
    r = cli("replay", str(path))
    assert r.status == 2 and "is gone" in r.err


def test_stem_keeps_function_and_seed():
    result = run("lost-update", seed=4)
    assert stem(result) == "lost-update-seed4"


def test_timeline_zero_prints_no_interleaving(cli):
    r = cli("run", "lost-update", "--seed", "3", "--timeline", "0")
    assert r.status == 1 and "interleaving" not in r.out and "step  worker0" not in r.out
    r = cli("run", "lost-update", "--seed", "3", "--timeline", "2")
    assert "interleaving (last 2 of 9 steps)" in r.out


def test_bare_emu_prints_a_short_usage(cli):
    r = cli()
    assert r.status == 2 and r.out == ""
    assert 1 <= len(r.err.strip().splitlines()) <= 3 and "usage: emu" in r.err


@pytest.mark.parametrize("command", ["list", "run", "hunt", "replay", "study"])
def test_every_command_has_a_description(cli, command):
    r = cli(command, "--help")
    assert r.status == 0
    lines = r.out.splitlines()
    assert lines[0].startswith(f"Usage: emu {command}")
    assert lines[2].strip(), f"'emu {command} --help' has no description"


def test_multi_line_errors_are_shown_whole_with_verbose(cli, tmp_path):
    f = tmp_path / "bad.py"
    f.write_text("raise RuntimeError('first\\nsecond\\nthird')\n")
    r = cli("-v", "run", f"{f}:race")
    assert r.status == 2 and "second" in r.err and "third" in r.err


def test_pct_bound_uses_the_calibrated_k_and_never_overflows(cli, tmp_path):
    r = cli("hunt", "lost-update", "--strategy", "pct", "--depth", "100", "--schedules", "3",
            "-p", "locked=true", "--out", str(tmp_path))
    line = next(x for x in r.out.splitlines() if x.startswith("PCT depth 100"))
    calibration = run("lost-update", params={"locked": True}, seed=0).steps
    assert f"k={calibration}:" in line and f"1/(3*{calibration}^99) = " in line
    assert "e-" in line


def test_sys_exit_in_an_actor_is_a_crash_not_an_exit(cli, tmp_path):
    f = tmp_path / "quits.py"
    f.write_text("import sys\n"
                 "async def quit():\n"
                 "    sys.exit(5)\n"
                 "def race(m):\n"
                 "    m.spawn('quitter', quit)\n")
    r = cli("run", f"{f}:race")
    assert r.status == 1 and "exception: quitter raised SystemExit: 5" in r.out


def test_format_1_files_still_replay(cli, tmp_path):
    cli("hunt", "lost-update", "--seed", "1", "--out", str(tmp_path))
    path = next(tmp_path.glob("*.replay.json"))
    data = json.loads(path.read_text())
    for key in ("checksum", "scenario_file"):
        del data[key]
    path.write_text(json.dumps({**data, "format_version": 1}))
    r = cli("replay", str(path))
    assert r.status == 1 and "matched" in r.out


def test_the_explained_timeline_names_kernel_functions_and_only_acting_actors(cli):
    found = run("share-vs-pageout", quirks=["page-out-lock-leak"], seed=1)
    again = detailed(found)
    assert again.trace_hash == found.trace_hash and not found.trace.where
    assert any(w.startswith("kvmppc_svm_page_out(") for w in again.trace.where.values())
    text = again.trace.timeline(4)
    head = text.splitlines()[0].split()
    assert head[0] == "step" and "vm1.vcpu1" not in head  # it did not act in those steps
    r = cli("run", "share-vs-pageout", "--quirk", "page-out-lock-leak", "--seed", "1")
    assert "kvmppc_svm_page_out(start=0x" in r.out
