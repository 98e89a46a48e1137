"""Coverage (``emu.sim.coverage``): the items model code reports, the goals scenarios
declare, the report of a hunt or a suite, and the ``emu hunt`` options that print, save,
draw and require it."""

from __future__ import annotations

import json
import pickle

import pytest

from emu.kvm.lifecycle import GFN_CELLS, GFN_TABLE, VM_CELLS, VM_TABLE
from emu.sim import Machine, Scenario, coverage, hunt
from emu.sim.accesses import NONE, StepAccesses
from emu.sim.coverage import Goal, HuntCoverage, Report, Stage, conflicts, reason
from emu.sim.runner import run_schedule
from emu.sim.scenario import builtin_scenarios
from emu.sim.strategies import RandomWalk

GOALS = {  # scenario: (parameters, schedules): a budget in which every goal it declares is met
    "share-storm": ({}, 20),
    "share-vs-pageout": ({}, 5),
    "init-done-vs-share": ({}, 5),
    "svm-reboot": ({"share_during_reset": True}, 2),
    "tlbiel-migrate": ({}, 1),
    "nested-teardown-vs-enter": ({}, 2),
    "share-unshare-pin": ({}, 40),
}
"""Every scenario that declares goals (``test_goals_listed`` keeps this complete)."""


def acc(reads: tuple[str, ...] = (), writes: tuple[str, ...] = ()) -> StepAccesses:
    return StepAccesses(frozenset(reads), frozenset(writes))


# ----------------------------------------------------------------------------- the engine
def test_goal_progress_counts_leading_stages():
    goal = Goal("g", "about", (Stage("one", ("e", "1")), Stage("two", ("e", "2"))))
    assert goal.progress({("e", "1")}) == 1
    assert goal.progress({("e", "2")}) == 0  # the second stage counts only after the first
    assert goal.progress({("e", "1"), ("e", "2")}) == 2
    h = HuntCoverage("s", 10)
    cov = coverage.Coverage(frozenset({("e", "1")}), (), (goal,))
    h.add(10, cov)
    h.add(11, coverage.Coverage(frozenset({("e", "1"), ("e", "2")}), (), (goal,)))
    assert h.best["g"] == (2, 11) and h.unmet() == []
    h2 = HuntCoverage("s", 0)
    h2.add(0, cov)
    assert h2.unmet() == ["g"]
    assert "NOT REACHED, best stage 1/2: one (seed 0)" in "\n".join(coverage.summary(h2, "s"))


def test_reason_names_what_the_hunt_lacked():
    reached = [("t", "Normal|share"), ("t", "Secure|unshare")]
    assert reason(("t", "Normal|terminate"), "", reached) == "Normal occurs, never with terminate"
    assert reason(("t", "Shared|share"), "", reached) == "share occurs, never with Shared"
    assert reason(("t", "Normal|unshare"), "", reached) == \
        "Normal and unshare both occur, never together"
    assert reason(("t", "X|Y"), "", reached) == "neither X nor Y occurs in this hunt"
    assert reason(("t", "X|Y"), "N/A", reached) == "N/A"


def test_conflicting_pairs():
    steps = [(0, "write x at 0x10"), (1, "read x"), (0, "read x again"), (1, "write y 5")]
    accs = [acc(writes=("x", "check:books")), acc(reads=("x", "check:books")), acc(reads=("x",)),
            acc(reads=("x",), writes=("y", "clock"))]
    # a write and each later read of another actor (the last step reads x too); the
    # checks' books and the clock are no race
    first = {"read x ~ write x at #", "write x at # ~ write y #"}
    assert conflicts(steps, accs) == first
    # a write pairs with the last writer and with each reader since, of other actors
    steps += [(2, "write x"), (0, "noop")]
    accs += [acc(writes=("x",)), NONE]
    assert conflicts(steps, accs) == first | {
        "write x ~ write x at #", "read x ~ write x", "read x again ~ write x",
        "write x ~ write y #"}


class _Box:
    """A method, named by its qualified name ``_Box.wait``."""

    async def wait(self, m: Machine) -> None:
        await m.point("waits in the box")


def _two_actors(m: Machine) -> None:
    """Actor a waits inside ``inner(v=1)``, called from ``inner(v=0)``, then in
    ``_Box.wait``; actor b asks whether a is inside them."""

    async def inner(v: int) -> None:
        if v == 0:  # the outer frame of the same function has other locals
            await inner(1)
            return
        await m.point("inside")
        await m.point("still inside")

    async def a() -> None:
        await inner(0)
        await _Box().wait(m)

    async def b() -> None:
        await m.point("look")
        m.racing("b ~ inner(v=1)", "a", "inner", v=1)
        m.racing("b ~ inner(v=2)", "a", "inner", v=2)
        m.racing("b ~ other", "other")
        m.racing("b ~ _Box.wait", "_Box.wait")
        m.cover("event", "looked")

    m.spawn("a", a)
    m.spawn("b", b)


def test_racing_reads_the_other_actors_stacks():
    sc = Scenario("two-actors", _two_actors)
    seen = set()
    for seed in range(20):
        h = hunt(sc, schedules=1, seed=seed, coverage=True)
        seen |= set(h.coverage.first)
    assert ("event", "looked") in seen
    assert ("race", "b ~ inner(v=1)") in seen  # some schedule looks while a is inside
    assert ("race", "b ~ _Box.wait") in seen  # a method, by its qualified name
    assert ("race", "b ~ inner(v=2)") not in seen and ("race", "b ~ other") not in seen


# ----------------------------------------------------------------------------- results
@pytest.mark.parametrize(("name", "strategy"), [
    ("share-storm", "random"), ("hostile-uv", "pct"), ("tlbiel-migrate", "pct"),
    ("share-unshare-pin", "random"), ("guest-share-storm", "guided")])
def test_off_by_default_and_never_changes_a_schedule(name, strategy):
    """Coverage off: nothing recorded, no accesses kept; on: the same schedules (hashes), on
    every platform, whatever the strategy (guided reads the accesses)."""
    got: dict[bool, list[tuple[str, bool, bool]]] = {False: [], True: []}
    for on in (False, True):
        h = hunt(name, schedules=4, coverage=on, strategy=strategy,
                 progress=lambda _, r, on=on: got[on].append(
                     (r.trace_hash, r.coverage is None,
                      r.accesses is None or strategy == "guided")))
        assert (h.coverage is None) is not on
        assert all(off is not on and no_acc for _, off, no_acc in got[on])
    assert [g[0] for g in got[True]] == [g[0] for g in got[False]]
    assert coverage.current is coverage.OFF  # reset once a schedule ends


def test_run_result_coverage_is_small_and_pickles():
    import trio

    from emu.sim.runner import prepare, step_budget

    sc, values, quirks = prepare("share-storm", None, ())

    async def main():
        return await run_schedule(sc, values, quirks, RandomWalk(3), 3, step_budget(sc, values,
                                                                                  None),
                                  coverage=True)

    result = trio.run(main)
    cov = result.coverage
    assert (GFN_CELLS, "Secure|share") in cov.items
    assert pickle.loads(pickle.dumps(cov)) == cov
    assert len(pickle.dumps(cov)) < 20_000


def test_workers_give_the_same_coverage():
    one = hunt("share-storm", schedules=24, coverage=True)
    two = hunt("share-storm", schedules=24, coverage=True, workers=2)
    assert Report([two.coverage]).json() == Report([one.coverage]).json()
    assert one.coverage.first  # (something to compare)


# ----------------------------------------------------------------------------- the hooks
def test_seed_000_tables_are_declared_and_exercised():
    h = hunt("abort-on-register-failure", schedules=3, coverage=True).coverage
    cells = {f"{s}|{op}" for s, row in GFN_TABLE.items() for op in row}
    assert {key for kind, key in h.universe if kind == GFN_CELLS} == cells
    vm = {key for kind, key in h.universe if kind == VM_CELLS}
    assert {f"{s}|{op}" for s, row in VM_TABLE.items() for op in row} < vm
    assert h.universe[(VM_CELLS, "Transient|start VM")] == "N/A in the seed's table"
    assert (VM_CELLS, "Transient|INIT_ABORT") in h.first  # the abort the scenario is about
    assert (VM_CELLS, "Normal|start VM") in h.first
    assert any(kind == "hcall-rc" and key.startswith("H_SVM_INIT_ABORT|")
               for kind, key in h.first)


def test_vm_wide_operations_cover_the_gfn_cells_of_the_states_they_meet():
    """INIT_DONE and TERMINATE cover a GFN cell per state the VM's GFNs are in
    (``lifecycle.cover_gfn_states``): a reboot meets Secure and Shared GFNs."""
    h = hunt("svm-reboot", schedules=3, coverage=True).coverage
    for cell in ("Secure|init_done", "Secure|terminate", "Shared|terminate"):
        assert (GFN_CELLS, cell) in h.first, cell


@pytest.mark.parametrize(("extra", "cell"), [("init-done-twice", "Secure|INIT_DONE"),
                                             ("init-start-secure", "Secure|INIT_START")])
def test_error_cells_are_exercised_by_a_hostile_uv(extra, cell):
    """The Error cells a faithful UV never issues (their declared reason says so) are reached
    by the hostile UV's known findings, in the schedule that finds them."""
    h = hunt("hostile-uv", schedules=5, params={"extra": extra}, coverage=True)
    assert h.found is not None and h.found.violation.kind == "life-cycle"
    assert (VM_CELLS, cell) in h.coverage.first
    assert "hostile-uv -p extra=" + extra in h.coverage.universe[(VM_CELLS, cell)]


def test_nested_and_pkvm_transitions_are_reported():
    nested = hunt("nested-teardown-vs-enter", schedules=1, coverage=True).coverage
    assert ("nested-transition", "live --remove_nested--> out of the IDR") in nested.first
    assert ("nested-transition", "refcnt 0 --release_nested--> freed") in nested.first
    pkvm = hunt("share-unshare-pin", schedules=10, coverage=True).coverage
    assert ("pkvm-transition", "B -> B pinned") in pkvm.first
    assert ("return-code", "__pkvm_host_donate_hyp|0") in pkvm.first
    assert pkvm.universe[("pkvm-transition", "A -> D")] == \
        "no __pkvm_host_share_ffa took a page this way"


# ----------------------------------------------------------------------------- goals
def _declared_goals(name: str) -> list[str]:
    sc = builtin_scenarios()[name]
    params = GOALS.get(name, ({}, 1))[0]
    h = hunt(sc, schedules=1, coverage=True, params=params, max_steps=5)
    return sorted(h.coverage.goals)


def test_goals_listed():
    """Every built-in scenario that declares a goal is in GOALS (so each is tested)."""
    declaring = [name for name in builtin_scenarios() if _declared_goals(name)]
    assert sorted(declaring) == sorted(GOALS)


@pytest.mark.parametrize("name", sorted(GOALS))
def test_each_goal_is_reached(name):
    params, schedules = GOALS[name]
    h = hunt(name, schedules=schedules, params=params, coverage=True)
    assert h.ok
    assert h.coverage.goals and h.coverage.unmet() == []


def test_require_coverage_fails_when_a_goal_is_out_of_reach(cli):
    """One vCPU: no unshare can lose to another vCPU's; the report says how far it got."""
    r = cli("hunt", "share-storm", "-p", "vcpus=1", "--schedules", "20", "--require-coverage")
    assert r.status == 3
    assert ("goal unshare-loses-race: NOT REACHED, best stage 1/2: a Shared GFN is unshared "
            "(seed 0)") in r.out
    assert "coverage goals not reached (1): share-storm: unshare-loses-race" in r.out
    assert "goal share-races-page-out: REACHED" in r.out
    ok = cli("hunt", "share-storm", "--schedules", "20", "--require-coverage")
    assert ok.status == 0, ok.out
    assert "goal unshare-loses-race: REACHED" in ok.out


def test_require_coverage_keeps_a_violation_first(cli, tmp_path):
    r = cli("hunt", "share-storm", "-p", "vcpus=1", "--schedules", "20", "--require-coverage",
            "--quirk", "fault-ref-no-page-lock", "--out", str(tmp_path), "--no-shrink",
            "--timeline", "0")
    assert r.status == 1


# ----------------------------------------------------------------------------- the CLI
def test_json_plot_and_suite_report(cli, tmp_path):
    out, png = tmp_path / "c.json", tmp_path / "c.png"
    r = cli("hunt", "svm", "--schedules", "2", "--coverage-json", str(out), "--coverage-plot",
            str(png), "--out", str(tmp_path / "o"))
    assert r.status == 0, r.out
    assert "coverage of the suite, merged (15 scenarios): 30 schedules" in r.out
    data = json.loads(out.read_text())
    assert data["format"] == 1 and len(data["scenarios"]) == 15
    merged = data["merged"]["kinds"]
    cells = merged[GFN_CELLS]
    assert cells["declared"] == 12
    for row in cells["items"] + merged[VM_CELLS]["items"]:  # reached, or named with a reason
        assert ("first" in row) != ("reason" in row)
        assert "first" in row or row["reason"] in r.out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_explore_reports_coverage(cli):
    r = cli("explore", "tlbiel-migrate", "--preemptions", "1", "--max-schedules", "3",
            "--require-coverage")
    assert r.status == 0, r.out
    assert "coverage of tlbiel-migrate (schedules 0..2): 3 schedules" in r.out
    assert "goal tlbiel-left-behind: REACHED (first in schedule 0)" in r.out


def test_unwritable_outputs_are_refused_up_front(cli, tmp_path):
    r = cli("hunt", "share-storm", "--schedules", "1", "--coverage-json", str(tmp_path))
    assert r.status == 2 and "--coverage-json" in r.err and "hunt share-storm" not in r.out
