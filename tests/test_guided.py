"""Conflict-guided search and the portfolio: conflict pairs are real conflicts, a reversed
pair is enforced, the search is a function of its seeds, and each finds quirks; the
portfolio's bounded search explores what ``explore`` does, bound by bound, and says when a
bound is exhausted."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import trio

from emu.sim import replay as replay_file
from emu.sim.accesses import dependent
from emu.sim.explore import explore
from emu.sim.guided import MEMBERS, GuidedSchedule, conflict_pairs
from emu.sim.runner import RunResult, hunt, prepare, run, run_schedule
from emu.sim.strategies import Label, labelled, make_strategy


def _run(strategy: GuidedSchedule, scenario: str = "lost-update", seed: int = 0,
         quirks: tuple[str, ...] = ()) -> RunResult:
    sc, values, chosen = prepare(scenario, None, quirks)
    return trio.run(run_schedule, sc, values, chosen, strategy, seed, 10_000)


def _spec(**extra) -> dict:
    return {"name": "guided", "base": "random", "timers": True, **extra}


def test_conflict_pairs_are_dependent_steps_of_two_actors_in_step_order():
    r = run("lost-update", seed=3)
    pairs = conflict_pairs(r)
    names = [name for _, name, _ in r.decisions]
    assert pairs
    for obj, i, j in pairs:
        assert i < j and names[i - 1] != names[j - 1]
        assert dependent(r.accesses[i - 1], r.accesses[j - 1])
        a, b = r.accesses[i - 1], r.accesses[j - 1]
        assert obj in (a.writes & (b.reads | b.writes)) | (a.reads & b.writes)


def _position(r: RunResult, label: Label) -> int:
    return labelled(r.decisions).index(label)


def test_a_reversed_conflicting_pair_is_enforced():
    """Every conflict pair of a run, reversed as a constraint, comes out reversed."""
    first = _run(GuidedSchedule(_spec(), 0, []))
    labels = labelled(first.decisions)
    reversed_ = 0
    for _, i, j in conflict_pairs(first):
        a, b = labels[i - 1], labels[j - 1]
        again = _run(GuidedSchedule(_spec(), 0, [(b, a)]))
        assert _position(again, b) < _position(again, a)
        reversed_ += 1
    assert reversed_ >= 3


def test_an_unsatisfiable_constraint_gives_way_rather_than_stall():
    """A constraint naming a step that never happens only delays its actor while others
    can run: the schedule still completes every worker."""
    never = ("worker0", "no such operation", 1)
    r = _run(GuidedSchedule(_spec(), 1, [(never, ("worker1", "read counter", 1))]))
    assert r.steps == _run(GuidedSchedule(_spec(), 1, [])).steps
    assert not [v for v in r.violations if v.kind == "deadlock"]
    read = _position(r, ("worker1", "read counter", 1))
    assert all(i < read for i, (_, name, _) in enumerate(r.decisions) if name != "worker1")


def test_the_same_seed_gives_the_same_guided_schedules():
    """The corpus is rebuilt from the hunt's seeds: two hunts, the same trace hashes; and
    each schedule's spec alone rebuilds it (``check_determinism`` re-runs it from there)."""
    def hashes() -> list[str]:
        got: list[str] = []
        h = hunt("share-vs-pageout", schedules=25, strategy="guided", keep_going=True,
                 progress=lambda _, r: got.append(r.trace_hash), shrink=False)
        assert h.search and "corpus entries" in h.search[0]
        return got
    first = hashes()
    assert len(first) == 25 and first == hashes() and len(set(first)) > 5
    h = hunt("share-unshare-pin", schedules=12, strategy="guided", check_determinism=True,
             shrink=False)
    assert h.schedules == 12 and not h.mismatches


def test_guided_schedules_carry_constraints_from_observed_conflicts():
    specs: list[dict] = []
    hunt("lost-update", schedules=20, strategy="guided", keep_going=True, shrink=False,
         progress=lambda _, r: specs.append(r.strategy))
    assert specs[0]["constraints"] == []
    constrained = [s for s in specs if s["constraints"]]
    assert len(constrained) >= 10
    for s in constrained:
        before, after = s["constraints"][-1]
        assert before[0] != after[0]  # two actors' steps, reversed


def test_guided_finds_a_quirk_of_each_platform_and_its_file_replays(tmp_path):
    for scenario, quirk in [("share-vs-pageout", "page-out-lock-leak"),
                            ("tlbiel-migrate", "no-prev-cpu-flush"),
                            ("concurrent-aborts", "abort-bug-on")]:
        h = hunt(scenario, quirks=[quirk], schedules=50, strategy="guided", shrink=False)
        assert h.found is not None and h.found.violation.fatal, scenario
    data = replay_file.load(replay_file.save(tmp_path / "g.replay.json", h.found))
    assert data["strategy"]["name"] == "guided"
    again = replay_file.replay(data)
    assert again.matched and again.reproduced
    rebuilt = _run(make_strategy(h.found.strategy, h.found.seed), scenario, h.found.seed,
                   (quirk,))
    assert rebuilt.trace_hash == h.found.trace_hash


def _member(spec: dict) -> str:
    if spec["name"] == "explore":
        return "bounded"
    return spec["name"] + (f" d{spec['depth']}" if spec["name"] == "pct" else "")


MEMBER_LINE = re.compile(r"^\s+(" + "|".join(MEMBERS) + r")\s+\d+ schedules: ")


def test_the_portfolio_takes_turns_and_says_who_found_what():
    names: list[str] = []
    h = hunt("lost-update", schedules=20, strategy="portfolio", keep_going=True, shrink=False,
             progress=lambda _, r: names.append(_member(r.strategy)))
    assert names == [*MEMBERS] * 4
    members = [line for line in h.search if MEMBER_LINE.match(line)]
    assert len(members) == len(MEMBERS)
    for member, line in zip(MEMBERS, members, strict=True):
        assert line.strip().startswith(member) and " 4 schedules: " in line
    assert any("first found invariant at schedule" in line for line in members)


def test_the_portfolio_stops_at_the_first_finding(cli, tmp_path):
    r = cli("hunt", "share-vs-pageout", "--quirk", "page-out-lock-leak", "--strategy",
            "portfolio", "--schedules", "40", "--out", str(tmp_path))
    assert "FOUND" in r.out and "hunt share-vs-pageout (portfolio)" in r.out
    members = [line for line in r.out.splitlines() if MEMBER_LINE.match(line)]
    assert len(members) == len(MEMBERS)
    assert sum("first found lock-leak" in line for line in members) == 1


def _bounded(scenario: str, schedules: int, **options) -> tuple[list[str], list]:
    """A portfolio hunt of ``scenario``: its summary and bounded search's results."""
    runs: list = []
    h = hunt(scenario, schedules=schedules, strategy="portfolio", keep_going=True,
             shrink=False, progress=lambda _, r: runs.append(r) if
             r.strategy["name"] == "explore" else None, **options)
    return h.search, runs


def test_bounded_search_explores_what_explore_does_bound_by_bound():
    """Each exhausted bound gives its verdict line, with exactly the complete and cut-short
    runs ``explore`` needs for that bound; every run is the hunt's first seed, and the next
    bound starts over with the first schedule."""
    params = {"locked": True}
    counts = [explore("lost-update", preemptions=k, params=params) for k in (0, 1)]
    assert all(e.exhausted and e.found is None for e in counts)
    turns = counts[0].schedules + counts[1].schedules + 1
    search, runs = _bounded("lost-update", len(MEMBERS) * turns, params=params, seed=5)
    verdicts = [line.strip() for line in search if "bounded search:" in line]
    assert verdicts == [
        f"bounded search: clean within {k} preemption{'s' if k != 1 else ''} (exhausted "
        f"after {e.schedules} schedules, {e.pruned} cut short)" for k, e in enumerate(counts)]
    assert len(runs) == turns and {r.seed for r in runs} == {5}
    assert [r.strategy["preemptions"] for r in runs] == \
        [0] * counts[0].schedules + [1] * counts[1].schedules + [2]
    assert runs[-1].trace_hash == runs[0].trace_hash  # bound 2's first schedule: bound 0's


def test_bounded_search_finds_a_quirk_names_itself_and_replays(tmp_path):
    """lost-update's lost write takes one preemption: bounded search exhausts bound 0 clean,
    then finds it at bound 1 (at the schedule ``explore`` does), says so in its member line,
    and its finding replays from the file and from its decisions (``check_determinism``)."""
    first = explore("lost-update", preemptions=0)
    at_one = explore("lost-update", preemptions=1)
    assert first.exhausted and first.found is None and at_one.found is not None
    turns = first.schedules + at_one.schedules
    search, runs = _bounded("lost-update", len(MEMBERS) * turns)
    assert f"bounded search: clean within 0 preemptions (exhausted after {first.schedules} " \
        "schedules, 0 cut short)" in [line.strip() for line in search]
    line = next(line for line in search if line.strip().startswith("bounded "))
    assert line.strip().endswith(f"first found invariant (a schedule with 1 preemption(s)) at "
                                 f"schedule {len(MEMBERS) * turns}")
    found = runs[-1]
    assert found.violation.kind == "invariant" and found.trace_hash == at_one.found.trace_hash
    again = replay_file.replay(replay_file.load(replay_file.save(tmp_path / "b.replay.json",
                                                                 found)))
    assert again.matched and again.reproduced
    h = hunt("lost-update", schedules=len(MEMBERS) * turns, strategy="portfolio",
             check_determinism=True, shrink=False)
    assert h.schedules == len(MEMBERS) * turns and not h.mismatches


def test_bounded_search_finds_a_pkvm_quirk_and_each_finding_keeps_its_file(cli, tmp_path):
    """Every bounded-search schedule runs with the hunt's first seed: its findings are saved
    under their bound and number, beside (never over) the seed-0 finding of random walk."""
    r = cli("hunt", "donate-vs-abort", "--quirk", "set-owner-no-tlbi", "--strategy",
            "portfolio", "--schedules", str(3 * len(MEMBERS)), "--keep-going", "--no-shrink",
            "--timeline", "0", "--out", str(tmp_path))
    assert "first found invariant (a schedule with 0 preemption(s)) at schedule 5" in r.out
    saved = sorted(p.name for p in tmp_path.glob("*.replay.json"))
    assert len(saved) == 3 * len(MEMBERS) and "donate-vs-abort-seed0.replay.json" in saved
    bounded = [name for name in saved if "-explore-" in name]
    specs = [replay_file.load(tmp_path / name)["strategy"] for name in bounded]
    assert [f"donate-vs-abort-explore-k{s['preemptions']}-{s['schedule']}-seed0.replay.json"
            for s in specs] == bounded and len(bounded) == 3


def test_a_portfolio_hunt_is_a_function_of_its_seed():
    def once() -> tuple[list[str], list[str]]:
        got: list[str] = []
        h = hunt("srcu-uaf", schedules=60, strategy="portfolio", keep_going=True, seed=3,
                 shrink=False, progress=lambda _, r: got.append(r.trace_hash))
        return got, h.search
    first = once()
    assert first == once()
    assert any("bounded search: clean within 0 preemptions" in line for line in first[1])


def test_guided_hunts_do_not_depend_on_the_hash_seed():
    """Conflict pairs come from frozensets of names: their order must not leak into the
    corpus, nor into bounded search's backtrack points, whatever PYTHONHASHSEED orders the
    sets by."""
    code = ("import emu; got = []; emu.hunt('share-unshare-pin', schedules=10, "
            "strategy='guided', keep_going=True, shrink=False, "
            "progress=lambda _, r: got.append(r.trace_hash)); "
            "emu.hunt('srcu-uaf', schedules=10 * 5, strategy='portfolio', keep_going=True, "
            "shrink=False, progress=lambda _, r: got.append(r.trace_hash)); "
            "print(' '.join(got))")
    outs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=env, check=True)
        outs.append(done.stdout.split())
    assert len(outs[0]) == 60 and outs[0] == outs[1]
