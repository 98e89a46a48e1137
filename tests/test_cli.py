"""The emu command as a user meets it: listings, files, and one clear line for every mistake."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_list_shows_scenarios_params_and_quirks(cli):
    r = cli("list")
    assert r.status == 0
    for text in ("lost-update", "abba", "srcu-uaf", "-p locked=false", "--quirk no-synchronize"):
        assert text in r.out


def test_list_shows_a_file_s_scenarios(cli, race_file, tmp_path):
    r = cli("list", str(race_file))
    assert r.status == 0 and r.err == ""
    assert f"{race_file}:race" in r.out and f"{race_file}:other" in r.out
    assert "-p workers=" in r.out
    helper = tmp_path / "helpers.py"
    helper.write_text("def snapshot(kvm, what):\n    pass\n")
    r = cli("list", str(helper))
    assert r.status == 2 and "defines no scenario" in r.err


def test_scenario_from_a_file_outside_the_package(cli, race_file, tmp_path):
    r = cli("hunt", f"{race_file}:race", "-p", "workers=3", "--out", str(tmp_path / "out"))
    assert r.status == 1 and "sum: c=" in r.out
    replay = next((tmp_path / "out").glob("*.replay.json"))
    again = cli("replay", str(replay))
    assert again.status == 1 and "matched" in again.out


def test_example_file_by_path(cli, tmp_path):
    spec = f"{ROOT / 'examples' / 'engine_quickstart.py'}:racy_counter"
    assert cli("hunt", spec, "--schedules", "300", "--out", str(tmp_path)).status == 0
    assert cli("hunt", spec, "--quirk", "no-lock", "--out", str(tmp_path)).status == 1


def test_run_writes_valid_perfetto_trace(cli, tmp_path):
    out = tmp_path / "t.json"
    r = cli("run", "srcu-uaf", "--quirk", "no-synchronize", "--seed", "9", "--trace", str(out))
    assert r.status == 1
    counters = tmp_path / "c.json"
    cli("run", "lost-update", "--trace", str(counters))
    assert any(e["ph"] == "C" and "counter" in e["args"]
               for e in json.loads(counters.read_text())["traceEvents"])
    doc = json.loads(out.read_text())
    events = doc["traceEvents"]
    threads = {e["tid"]: e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert sorted(threads.values()) == ["reader0", "reader1", "updater"]
    for e in events:
        assert {"name", "ph", "pid", "tid"} <= e.keys()
        if e["ph"] != "M":
            assert isinstance(e["ts"], float)
    slices = [e for e in events if e["ph"] == "X"]
    assert slices and all(e["tid"] in threads and e["dur"] > 0 for e in slices)
    for tid in threads:  # slices on one track must not overlap
        spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in slices if e["tid"] == tid)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    violation = [e for e in events if e.get("cat") == "violation"]
    assert len(violation) == 1 and violation[0]["ph"] == "i" and violation[0]["s"] == "g"


def test_replay_trace_is_byte_identical(cli, tmp_path):
    cli("hunt", "lost-update", "--seed", "1", "--out", str(tmp_path))
    replay = next(tmp_path.glob("*.replay.json"))
    original = next(tmp_path.glob("*.trace.json"))
    again = tmp_path / "again.json"
    cli("replay", str(replay), "--trace", str(again))
    assert again.read_bytes() == original.read_bytes()


def test_replay_explain(cli, tmp_path):
    cli("hunt", "lost-update", "--seed", "1", "--out", str(tmp_path))
    r = cli("replay", str(next(tmp_path.glob("*.replay.json"))), "--explain")
    assert "write-write conflict on counter" in r.out and "interleaving" in r.out


def test_hunt_a_suite_runs_each_scenario(cli, tmp_path):
    r = cli("hunt", "engine", "--schedules", "200", "--out", str(tmp_path))
    assert r.status == 1
    for name in ("abba", "lost-update", "srcu-uaf"):
        assert f"hunt {name} (random)" in r.out
    assert "suite svm" in cli("list").out


SUITE_MODULE = '''
import emu

SUITE = "a third-party suite"


@emu.scenario("third-party-race")
def race(m, workers=2):
    """Two workers lose an update."""
    c = m.shared("c", 0)

    async def work(c):
        v = await c.read()
        await c.write(v + 1)

    for i in range(workers):
        m.spawn(f"w{i}", work, c)
    m.final("sum", lambda: None if c.value == workers else f"c={c.value}")
'''


def test_a_third_party_package_adds_a_suite(cli, tmp_path, monkeypatch):
    """Suites are found through the ``emu.scenarios`` entry-point group: an installed
    package (here a dist-info directory on sys.path) adds its own."""
    (tmp_path / "emu_thirdparty.py").write_text(SUITE_MODULE)
    dist = tmp_path / "emu_thirdparty-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: emu-thirdparty\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[emu.scenarios]\nmine = emu_thirdparty\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    r = cli("list")
    assert "suite mine: a third-party suite: third-party-race" in r.out
    assert "suite svm" in r.out
    r = cli("hunt", "mine", "--schedules", "50", "--out", str(tmp_path / "out"))
    assert r.status == 1 and "sum: c=1" in r.out
