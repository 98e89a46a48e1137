"""Explanations: the conflicting pair that decides a violation, lockdep's two-CPU table,
and --why (the probability curve, the step it becomes inevitable, the nearest passing
schedule, the curve as a Perfetto counter track)."""

from __future__ import annotations

import json

import attrs
import pytest

import emu
from emu.sim import replay as replay_file
from emu.sim.accesses import conflicts
from emu.sim.explain import deciding_pair, explain, named
from emu.sim.runner import run_decisions
from emu.sim.strategies import labelled
from emu.sim.violations import About, Violation, objects_of, prefixed
from emu.sim.why import COUNTER, why


def _shrunk(tmp_path, cli, *args: str):
    """Hunt with the CLI; the shrunk replay file and its strict replay (accesses and all)."""
    r = cli("hunt", *args, "--out", str(tmp_path / "out"))
    assert r.status == 1, r.out
    path = next((tmp_path / "out" / "shrunk").glob("*.shrunk.replay.json"))
    return path, replay_file.replay(replay_file.load(path)).result


@pytest.fixture
def lost_update(tmp_path, cli):
    return _shrunk(tmp_path, cli, "lost-update", "--schedules", "50")


def _is_last_pair(result, pair) -> None:
    """``pair`` conflicts on its object, between two actors, and no later pair does."""
    steps, actors = result.accesses, [d[1] for d in result.decisions]
    obj = pair.objects[0]
    assert actors[pair.first - 1] != actors[pair.second - 1]
    assert obj in conflicts(steps[pair.first - 1], steps[pair.second - 1])
    later = [(i, j) for j in range(result.violation.step) for i in range(j)
             if actors[i] != actors[j] and obj in conflicts(steps[i], steps[j])
             and (j + 1, i + 1) > (pair.second, pair.first)]
    assert later == []


def test_explain_names_the_pair_on_the_counter(lost_update, cli):
    path, result = lost_update
    pair = deciding_pair(result)
    assert pair is not None and pair.about and pair.objects == ("counter",)
    _is_last_pair(result, pair)
    out = cli("replay", str(path), "--explain").out
    head = "conflicting pair that decides the outcome (the last conflicting pair on counter"
    assert head in out
    first, second = (f"step {s} {result.decisions[s - 1][1]} worker(): "
                     f"{result.decisions[s - 1][2]}" for s in (pair.first, pair.second))
    assert f"{first} (writes counter) /" in out or f"{first} (reads counter) /" in out
    assert f"{second} (writes counter)" in out


def test_why_on_a_lost_update(lost_update):
    _, result = lost_update
    answer = why(result, runs=20)
    curve = answer.curve
    assert [pt.prefix for pt in curve] == list(range(result.steps + 1)) and answer.stride == 1
    assert curve[-1].p == 1.0
    # a random walk of three workers loses an update about 70% of the time: below 1, but
    # not low; the race window opens with the first read and closes with the second
    assert curve[0].p < 1.0
    k = answer.inevitable
    assert k is not None and 1 <= k <= result.steps
    assert all(pt.p == 1.0 for pt in curve if pt.prefix >= k) and curve[k - 1].p < 1.0
    assert result.decisions[k - 1][2] == "read counter"  # the second stale read
    ps = answer.passing
    assert ps is not None and ps.result.ok
    # the pair is really reversed in the passing schedule, which diverges where it moved
    first, second = (labelled(result.decisions)[s - 1] for s in (ps.pair.first, ps.pair.second))
    mine = labelled(ps.result.decisions)
    assert mine.index(second) < mine.index(first)
    assert ps.divergence == min(ps.pair.first, *ps.moved)
    # and it is an ordinary schedule: replayed strictly, it is clean again
    again = run_decisions(result.scenario, ps.result.decisions, seed=result.seed,
                          params=result.params, quirks=result.quirks,
                          strategy=result.strategy, max_steps=result.max_steps)
    assert again.ok and again.trace_hash == ps.result.trace_hash
    text = answer.report()
    assert f"inevitable after step {k} " in text and "clean" in text


def test_why_samples_every_kth_prefix_within_its_budget(lost_update):
    _, result = lost_update
    answer = why(result, runs=4, budget=12)
    assert answer.stride == 4
    assert [pt.prefix for pt in answer.curve] == [0, 4, 8, result.steps]
    assert "one prefix in 4 and the last" in answer.report()


def test_the_curve_is_a_perfetto_counter_track(lost_update, cli, tmp_path):
    path, _ = lost_update
    trace = tmp_path / "why.json"
    r = cli("replay", str(path), "--why", "--why-runs", "5", "--trace", str(trace))
    assert r.status == 1 and "why: P(the same violation)" in r.out
    assert "nearest passing schedule" in r.out and "clean" in r.out
    events = json.loads(trace.read_text())["traceEvents"]
    track = [e for e in events if e["ph"] == "C" and e["name"] == COUNTER]
    assert len(track) >= 2 and track[-1]["args"][COUNTER] == 1.0
    assert [e["ts"] for e in track] == sorted(e["ts"] for e in track)
    assert all(0.0 <= e["args"][COUNTER] <= 1.0 for e in track)


def test_a_pkvm_finding_is_decided_on_a_page_s_state(tmp_path, cli):
    path, result = _shrunk(tmp_path, cli, "share-unshare-pin", "--quirk", "unshare-ignores-pin",
                           "--schedules", "200")
    pair = deciding_pair(result)
    assert pair is not None and pair.about
    assert pair.objects[0].startswith(("vmemmap:", "s2:"))
    _is_last_pair(result, pair)
    out = cli("replay", str(path), "--explain").out
    assert f"the last conflicting pair on {pair.objects[0]}" in out
    assert "hyp_pin_shared_mem" in out and "__pkvm_host_unshare_hyp" in out
    answer = why(result, runs=5)
    assert answer.curve[-1].p == 1.0 and answer.inevitable is not None


def test_objects_are_named_whole_or_by_their_hex_numbers():
    names = ["vmemmap:0x200", "s2:0x22f:0", "counter", "host_mmu.lock", "counter_lock"]
    assert named("pfn 0x200: host OWNED, 0 guest mapping(s)", names) == ["vmemmap:0x200"]
    assert named("counter: counter is 2 after 3 increments", names) == ["counter"]
    assert named("cpu0 holds host_mmu.lock", names) == ["host_mmu.lock"]
    assert named("nothing here 0x22f0", names) == []


def test_a_number_counts_only_for_the_kinds_its_word_names():
    """The model says which message words number which objects (``explain.numbered``):
    "GFN 0x1" is about the GFN's state word and the UV's books on it, never the host
    frame 0x1 or page 0x1; "pfn 0x1" about frames, page references and hyp_vmemmap, never
    a GFN; a number after a word no kind claims ("AT of") may number anything."""
    import emu.kvm.uvmem
    import emu.pkvm.memory  # noqa: F401

    names = ["frame:normal:0x1", "gfn:1:0x1", "uv:1:0x1", "page:normal:0x1", "vmemmap:0x1",
             "uv gfn 1:0x1", "hostpte:0x1", "s2:0x1:3"]
    assert named("GFN 0x1 Normal --unshare--> Normal (succeeded): the table says Secure",
                 names) == ["gfn:1:0x1", "uv gfn 1:0x1", "uv:1:0x1"]
    assert named("pfn 0x1: host OWNED, hyp NOPAGE", names) == \
        ["frame:normal:0x1", "page:normal:0x1", "vmemmap:0x1"]
    assert named("BUG_ON(!__get_fault_info()): AT of 0x1 failed", names) == sorted(names)
    # "GFNs 0x1, 0x2": the second number is a GFN too (the first one's digits are no word)
    assert named("GFNs 0x2, 0x1 are shared", names) == ["gfn:1:0x1", "uv gfn 1:0x1",
                                                        "uv:1:0x1"]


def test_a_call_s_positional_arguments_number_nothing():
    """"UV_ESM(0x0, 0x8, 0x8, 0x1)" does not say which objects its arguments are; an
    argument given by name ("gfn=0x8") numbers what its name says."""
    import emu.actors.ultravisor  # noqa: F401  (numbers "gfn" for the GFN word and the UV)

    names = ["uv:1:0x8", "gfn:1:0x8", "frame:normal:0x8", "frame:normal:0x1"]
    assert named("vm1.vcpu0: UV_ESM(0x0, 0x8, 0x8, 0x1) returned H_STATE", names) == []
    assert named("H_SVM_PAGE_IN(gfn=0x8) failed", names) == ["gfn:1:0x8", "uv:1:0x8"]


def test_a_check_names_the_objects_its_violation_is_about(lost_update):
    """``About`` carries the objects through ``fail`` and a wrapping check (``prefixed``);
    explain takes them over what the message seems to name, and a replay file keeps them
    (and only then has the key)."""
    _, result = lost_update
    message = prefixed("outer: ", About("counter_lock is free", "counter"))
    assert message == "outer: counter_lock is free" and objects_of(message) == ("counter",)
    v = result.violation
    told = attrs.evolve(v, message=str(message), objects=objects_of(message))
    pair = deciding_pair(attrs.evolve(result, violations=[told]))
    assert pair is not None and pair.about and pair.objects[0] == "counter"
    assert told.to_json()["objects"] == ["counter"] and "objects" not in v.to_json()


def test_without_a_named_object_the_pair_involves_the_failing_actor(lost_update):
    _, result = lost_update
    actor = result.decisions[4][1]
    quiet = attrs.evolve(result, violations=[Violation("invariant", "it broke", result.steps,
                                                       actor)])
    pair = deciding_pair(quiet)
    assert pair is not None and not pair.about
    assert actor in (quiet.decisions[pair.first - 1][1], quiet.decisions[pair.second - 1][1])
    assert "the violation names none of the objects touched" in explain(quiet, 0)


def test_a_lock_order_warning_prints_lockdep_s_two_cpu_table():
    found = emu.hunt("abba", schedules=20, keep_going=True).found
    run = next(emu.run("abba", seed=s) for s in range(20)
               if any(v.kind == "lockdep" for v in emu.run("abba", seed=s).violations))
    for result in (found, run):
        text = explain(result, 0)
        assert "possible circular locking dependency" in text
        assert "possible unsafe locking scenario:" in text and "*** DEADLOCK ***" in text
        assert "lock(lock_a);" in text and "lock(lock_b);" in text


def test_why_needs_a_failing_schedule():
    clean = emu.run("lost-update", params={"locked": True})
    with pytest.raises(emu.EmuError, match="violation"):
        why(clean)
