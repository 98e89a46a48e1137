"""Scheduling rules: timers as choices, retry points (yields), and liveness under a fair
continuation (emu/sim/controller.py's docstring states the rules)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import trio

import emu
from emu.errors import ReplayDivergence, ScenarioError
from emu.sim import replay as replay_file
from emu.sim import runner
from emu.sim.controller import TIMER
from emu.sim.strategies import PCT, make_strategy


def run_spec(sc, spec, seed=0, max_steps=None):
    """One schedule under an explicit strategy spec (``"timers": true`` included)."""
    sc, values, quirks = runner.prepare(sc, None, ())
    steps = runner.step_budget(sc, values, max_steps)

    async def main():
        return await runner.run_schedule(sc, values, quirks, make_strategy(spec, seed), seed,
                                         steps)

    return trio.run(main)


RANDOM_TIMERS = {"name": "random", "timers": True}


def copy_vs_spin(log):
    """A sleeps 1000 ns (a page copy); B spins through 50 scheduling points meanwhile."""
    def build(m):
        async def copier():
            await m.sleep(1000)
            log.append(("a woke", m.now))

        async def spinner():
            for i in range(50):
                await m.point(f"b{i}")
                log.append((f"b{i}", m.now))
        m.spawn("a", copier)
        m.spawn("b", spinner)
    return emu.scenario(name="copy-vs-spin")(build)


# --------------------------------------------------------------------------- timers
def test_a_copy_finishes_while_another_actor_runs_and_replays(tmp_path):
    log: list = []
    sc = copy_vs_spin(log)
    for seed in range(50):
        log.clear()
        res = run_spec(sc, RANDOM_TIMERS, seed)
        order = [what for what, _ in log]
        if order.index("a woke") < order.index("b49"):
            break
    else:
        pytest.fail("no schedule lets the copy finish before B's 50th point")
    assert res.ok and res.virtual_time == 1000
    fire = [d for d in res.decisions if d[1] == TIMER]
    assert fire and fire[0][2] == "fire timer at 1000"
    assert [s for s, _, _ in res.decisions] == list(range(1, res.steps + 1))
    first_run = list(log)

    path = replay_file.save(tmp_path / "copy.replay.json", res)
    data = replay_file.load(path)
    assert [TIMER, "fire timer at 1000"] in [d[1:] for d in data["decisions"]]
    assert data["strategy"] == RANDOM_TIMERS
    log.clear()
    again = replay_file.replay(data)  # Replay offers the timer whatever the setting
    assert again.matched and again.result.decisions == res.decisions
    assert log == first_run


def test_without_timer_choices_time_moves_only_when_nobody_can_run():
    log: list = []
    sc = copy_vs_spin(log)
    for seed in range(30):
        log.clear()
        res = emu.run(sc, seed=seed, timers=False)
        assert log[-1] == ("a woke", 1000)  # time moved only once B had finished
        assert TIMER not in res.trace.actors
        assert "timers" not in res.strategy


def test_timers_are_choices_by_default():
    log: list = []
    sc = copy_vs_spin(log)
    woke_early = 0
    for seed in range(30):
        log.clear()
        res = emu.run(sc, seed=seed)
        assert res.strategy["timers"] is True
        woke_early += log.index(("a woke", 1000)) < len(log) - 1
    assert woke_early  # some schedule fires the copy's timer while B still runs


def test_timers_are_choices_by_default_under_pct_too():
    log: list = []
    sc = copy_vs_spin(log)
    woke = []
    for seed in range(20):
        log.clear()
        res = emu.run(sc, seed=seed, strategy="pct", depth=2)
        assert res.strategy["timers"] is True
        run = [w for w, _ in log[-51:]]  # this schedule's, after PCT's calibration run's
        woke.append(run.index("a woke"))
    assert min(woke) < 50


def test_firing_when_nobody_can_run_is_forced_not_a_decision():
    def build(m):
        async def sleeper(dt):
            await m.sleep(dt)
            await m.sleep(dt)
        m.spawn("alone", sleeper, 700)

    res = run_spec(emu.scenario(name="alone")(build), RANDOM_TIMERS)
    assert res.ok and res.virtual_time == 1400
    assert all(name != TIMER for _, name, _ in res.decisions)


def test_a_replay_file_without_timer_decisions_still_replays(tmp_path):
    log: list = []
    sc = copy_vs_spin(log)
    res = emu.run(sc, seed=3)  # recorded the old way: no timer decisions
    data = replay_file.load(replay_file.save(tmp_path / "old.replay.json", res))
    assert replay_file.replay(data).matched


def test_replay_names_a_timer_decision_that_cannot_fire():
    sc = copy_vs_spin([])
    decisions = [(1, TIMER, "fire timer at 1000"), (2, "a", "start")]
    with pytest.raises(ReplayDivergence, match=r"chooses timer .* which cannot run here"):
        runner.run_decisions(sc, decisions, seed=0, params=None, quirks=(),
                             strategy={"name": "random"}, max_steps=100)


def test_pct_gives_the_timer_a_priority():
    log: list = []
    sc = copy_vs_spin(log)

    def when(depth):
        woke = set()
        for seed in range(40):
            log.clear()
            run_spec(sc, {"name": "pct", "depth": depth, "k": 52, "timers": True}, seed)
            at = [w for w, _ in log].index("a woke")
            woke.add("first" if at == 0 else "last" if at == 50 else "between")
        return woke

    assert when(1) == {"first", "last"}  # the timer above B, or below it
    assert "between" in when(2)  # a change point lowers B (or the timer) mid-way


def test_a_pct_change_point_lowers_the_timer():
    x = SimpleNamespace(name="x", index=0, op="x")
    timer = SimpleNamespace(name=TIMER, index=1, op="fire timer at 5")
    ctl = SimpleNamespace(actors=[x], timer=timer, step=0, fair=False, yielder=None)
    pct = PCT(seed=0, depth=2, k=10)
    pct.change_points = [1]
    assert pct.choose([x, timer], ctl) in (x, timer)
    pct.priority[:] = [2.0, 3.0]  # the timer on top: it fires first
    pct._last = None
    assert pct.choose([x, timer], ctl) is timer
    ctl.step = 1  # a change point right after the timer's step drops it below x
    assert pct.choose([x, timer], ctl) is x
    assert pct.priority[1] < pct.priority[0]


def test_reserved_timer_name():
    def build(m):
        async def body():
            pass
        m.spawn(TIMER, body)

    with pytest.raises(ScenarioError, match="reserved"):
        emu.run(emu.scenario(name="named-timer")(build))


def test_deadlock_stays_exact_with_timers_pending():
    def build(m):
        a, b = m.mutex("a"), m.mutex("b")
        other = {True: m.completion("cpu1 holds b"), False: m.completion("cpu0 holds a")}

        async def taker(first, second, gate):
            await first.lock()
            gate.complete()
            await other[first is a].wait_for_completion()
            await second.lock()

        async def sleeper():
            await m.sleep(5000)
        m.spawn("cpu0", taker, a, b, other[False])
        m.spawn("cpu1", taker, b, a, other[True])
        m.spawn("napper", sleeper)

    sc = emu.scenario(name="deadlock-with-timer")(build)
    for seed in range(30):
        res = run_spec(sc, RANDOM_TIMERS, seed)
        assert res.violation.kind == "deadlock"
        assert res.virtual_time == 5000  # not reported while the timer could still fire
        assert "cpu0 waits in 'mutex_lock b' for cpu1" in res.violation.message


def test_lock_free_code_with_sleeps_never_deadlocks():
    def build(m):
        ch = m.channel("mailbox", capacity=1)

        async def producer():
            for i in range(4):
                await m.sleep(300)
                await ch.send(i)

        async def consumer():
            for _ in range(4):
                await ch.receive()
                await m.sleep(100)
        m.spawn("producer", producer)
        m.spawn("consumer", consumer)

    sc = emu.scenario(name="pc-timed")(build)
    for seed in range(200):
        assert run_spec(sc, RANDOM_TIMERS, seed).ok


# --------------------------------------------------------------------------- yields, liveness
def waiter_and_worker(retry):
    """A spins (retry point) until B, which needs 20 steps, sets the flag."""
    def build(m):
        flag = m.shared("flag", False)

        async def waiter():
            while not await flag.read():
                await (m.yield_point("retry") if retry == "yield" else m.point("retry"))

        async def worker():
            for i in range(20):
                await m.point(f"work {i}")
            await flag.write(True)
        m.spawn("waiter", waiter)
        m.spawn("worker", worker)
    return emu.scenario(name=f"spin-{retry}", max_steps=2000)(build)


def test_a_yield_drops_the_spinner_below_the_actor_it_waits_for():
    for seed in range(30):
        res = emu.run(waiter_and_worker("yield"), seed=seed, strategy="pct", depth=1)
        assert res.ok and res.steps < 100, (seed, res.steps)


def test_the_fair_suffix_rescues_an_actor_pct_starves():
    """Without the yield, PCT (depth 1: no change point) starves the worker whenever the
    waiter has the higher priority; the fair second half of the budget lets it finish, so
    no bogus 'no progress' is reported."""
    steps = [emu.run(waiter_and_worker("point"), seed=seed, strategy="pct", depth=1)
             for seed in range(20)]
    assert all(r.ok for r in steps)
    assert any(r.steps > 1000 for r in steps)  # starved through the unfair half
    assert any(r.steps < 100 for r in steps)


def test_a_livelock_names_the_actors_that_kept_stepping():
    def build(m):
        go = m.shared("go", False)  # nobody ever sets it

        async def poller():
            while not await go.read():
                await m.yield_point("cpu_relax")

        async def bystander():
            await m.point("once")
        m.spawn("a", poller)
        m.spawn("b", poller)
        m.spawn("c", bystander)

    sc = emu.scenario(name="pollers", max_steps=400)(build)
    for seed in range(10):
        for strategy in ("random", "pct"):
            r = emu.run(sc, seed=seed, strategy=strategy, depth=2)
            v = r.violation
            assert v.kind == "liveness" and r.steps == 400
            assert v.message == ("no progress in 400 steps: a, b kept stepping through the "
                                 "last 200 steps, under a fair schedule") or \
                v.message == ("no progress in 400 steps: b, a kept stepping through the "
                              "last 200 steps, under a fair schedule")
            assert "c:" not in v.details  # it finished: not part of the cycle


def test_svm_reboot_under_pct_no_longer_reports_a_bogus_livelock():
    """QEMU's SVM_OFF retry loop kept PCT's top priority and starved the pCPU it waited for
    (1,829 of 8,000 depth-3 schedules reported 'no progress', seed 1 the first)."""
    assert emu.run("svm-reboot", strategy="pct", depth=3, seed=1).ok
