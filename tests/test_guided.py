"""Conflict-guided search and the portfolio: conflict pairs are real conflicts, a reversed
pair is enforced, the search is a function of its seeds, and each finds quirks."""

from __future__ import annotations

import os
import subprocess
import sys

import trio

from emu.sim import replay as replay_file
from emu.sim.accesses import dependent
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


def test_the_portfolio_takes_turns_and_says_who_found_what():
    names: list[str] = []
    h = hunt("lost-update", schedules=16, strategy="portfolio", keep_going=True, shrink=False,
             progress=lambda _, r: names.append(
                 r.strategy["name"] + (f" d{r.strategy['depth']}" if "depth" in r.strategy
                                       and r.strategy["name"] == "pct" else "")))
    assert names == [*MEMBERS] * 4
    assert len(h.search) == len(MEMBERS)
    for member, line in zip(MEMBERS, h.search, strict=True):
        assert line.strip().startswith(member) and " 4 schedules: " in line
    assert any("first found invariant at schedule" in line for line in h.search)


def test_the_portfolio_stops_at_the_first_finding(cli, tmp_path):
    r = cli("hunt", "share-vs-pageout", "--quirk", "page-out-lock-leak", "--strategy",
            "portfolio", "--schedules", "40", "--out", str(tmp_path))
    assert "FOUND" in r.out and "hunt share-vs-pageout (portfolio)" in r.out
    members = [line.strip() for line in r.out.splitlines()
               if line.strip().startswith(MEMBERS)]
    assert len(members) == len(MEMBERS)
    assert sum("first found lock-leak" in line for line in members) == 1


def test_guided_hunts_do_not_depend_on_the_hash_seed():
    """Conflict pairs come from frozensets of names: their order must not leak into the
    corpus, whatever PYTHONHASHSEED orders the sets by."""
    code = ("import emu; got = []; emu.hunt('share-unshare-pin', schedules=20, "
            "strategy='guided', keep_going=True, shrink=False, "
            "progress=lambda _, r: got.append(r.trace_hash)); print(' '.join(got))")
    outs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=env, check=True)
        outs.append(done.stdout.split())
    assert len(outs[0]) == 20 and outs[0] == outs[1]
