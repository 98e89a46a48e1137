"""The controller and the model primitives, one behaviour at a time."""

from __future__ import annotations

import pytest
import trio

import emu
from emu.errors import ScenarioError
from emu.sim import Controller


def run(build, seed: int = 0, **kw):
    return emu.run(emu.scenario(**kw)(build), seed=seed)


def test_one_actor_at_a_time_and_every_decision_recorded():
    log = []

    def build(m):
        async def actor(name):
            for i in range(3):
                await m.point(f"{name}{i}")
                log.append(f"{name}{i}")
        m.spawn("a", actor, "a")
        m.spawn("b", actor, "b")

    res = run(build, seed=7, name="interleave")
    ops = [op for _, _, op in res.decisions if op != "start"]
    assert ops == log  # the recorded decisions are exactly the order the actors ran in
    assert [s for s, _, _ in res.decisions] == list(range(1, res.steps + 1))


def test_random_walk_reaches_every_interleaving():
    seen = set()

    def build(m):
        out = []

        async def actor(name):
            for _ in range(2):
                await m.point(name)
                out.append(name)
        m.spawn("a", actor, "a")
        m.spawn("b", actor, "b")
        m.final("record", lambda: seen.add("".join(out)))

    sc = emu.scenario(name="all-interleavings")(build)
    emu.hunt(sc, schedules=300)
    assert seen == {"aabb", "abab", "abba", "baab", "baba", "bbaa"}


def test_deadlock_is_exact_and_names_the_cycle():
    def build(m):
        a, b = m.mutex("a"), m.mutex("b")

        async def taker(first, second, gate):
            await first.lock()
            gate.complete()
            await other[first is a].wait_for_completion()
            await second.lock()

        other = {True: m.completion("cpu1 holds b"), False: m.completion("cpu0 holds a")}
        m.spawn("cpu0", taker, a, b, other[False])
        m.spawn("cpu1", taker, b, a, other[True])

    res = run(build, name="forced-deadlock")
    v = res.violation
    assert v.kind == "deadlock"
    assert "cpu0 waits in 'mutex_lock b' for cpu1" in v.message
    assert "cpu1 waits in 'mutex_lock a' for cpu0" in v.message


def test_lock_free_code_never_reports_deadlock():
    def build(m):
        ch = m.channel("mailbox", capacity=2)

        async def producer():
            for i in range(5):
                await ch.send(i)

        async def consumer():
            for _ in range(5):
                await ch.receive()
        m.spawn("producer", producer)
        m.spawn("consumer", consumer)

    assert emu.hunt(emu.scenario(name="pc")(build), schedules=500).ok


def test_step_budget_reports_livelock_with_what_actors_do():
    def build(m):
        flag = m.shared("flag", False)

        async def spinner():
            while not await flag.read():
                pass
        m.spawn("spinner", spinner)

    sc = emu.scenario(name="spin", max_steps=200)(build)
    res = emu.run(sc)
    assert res.violation.kind == "liveness"
    # the last half of the budget ran under a fair schedule, and the spinner kept stepping
    assert res.violation.message == ("no progress in 200 steps: spinner kept stepping through "
                                     "the last 100 steps, under a fair schedule")
    assert "spinner: runnable at 'read flag'" in res.violation.details
    assert "steps in the fair suffix: spinner 100" in res.violation.details


def test_without_timer_choices_time_advances_only_when_nobody_can_run():
    """--no-timer-choices: time moves only when no actor is enabled (the default, timers as
    choices, is covered by tests/test_scheduling.py)."""
    order = []

    def build(m):
        async def sleeper(name, dt):
            await m.sleep(dt)
            order.append((name, m.now))
        m.spawn("slow", sleeper, "slow", 300)
        m.spawn("fast", sleeper, "fast", 100)

    res = emu.run(emu.scenario(name="sleepers")(build), timers=False)
    assert order == [("fast", 100), ("slow", 300)]
    assert res.virtual_time == 300


@pytest.mark.parametrize("raw, named", [
    (lambda: trio.Event().wait(), r"actor 'rogue-vcpu' is blocked in trio Event.wait"),
    (lambda: trio.sleep(5), r"actor 'rogue-vcpu' is blocked in trio sleep"),
])
def test_raw_trio_primitive_is_named(raw, named):
    def build(m):
        async def bad():
            await raw()
        m.spawn("rogue-vcpu", bad)

    with pytest.raises(ScenarioError, match=named):
        run(build, name="raw")


def test_sleeping_under_spinlock_is_a_bug():
    def build(m):
        mmu_lock, tlb_lock = m.spinlock("mmu_lock"), m.mutex("tlb_lock")

        async def bad():
            await mmu_lock.lock()
            await tlb_lock.lock()
        m.spawn("vcpu0", bad)

    v = run(build, name="atomic").violation
    assert v.kind == "sleep-in-atomic"
    assert "sleeping function called from invalid context" in v.message
    assert "mutex_lock(tlb_lock) while holding spinlock mmu_lock" in v.message


def test_exception_in_actor_is_a_violation_with_traceback():
    def build(m):
        async def crash():
            await m.point("about to crash")
            raise ValueError("bad pte")
        m.spawn("l1", crash)

    v = run(build, name="crash").violation
    assert v.kind == "exception" and "l1 raised ValueError: bad pte" in v.message
    assert "Traceback" in v.details


def test_exiting_with_a_lock_held_is_a_leak():
    def build(m):
        lock = m.mutex("uvmem_lock")

        async def leaky():
            await lock.lock()
        m.spawn("hcall", leaky)

    v = run(build, name="leak").violation
    assert v.kind == "lock-leak" and "hcall exits holding uvmem_lock" in v.message


def test_unlock_by_non_owner():
    def build(m):
        lock = m.mutex("uvmem_lock")

        async def thief():
            lock.unlock()
        m.spawn("thief", thief)

    v = run(build, name="thief").violation
    assert v.kind == "bad-unlock" and "held by nobody" in v.message


def test_srcu_synchronize_waits_for_earlier_readers():
    def build(m):
        srcu = m.srcu("kvm->srcu")
        obj = m.kobject("slots")
        reader_in = m.completion("reader inside")

        async def reader():
            idx = await srcu.read_lock()
            reader_in.complete()
            for _ in range(3):
                await obj.use()
            srcu.read_unlock(idx)

        async def updater():
            await reader_in.wait_for_completion()
            await srcu.synchronize()
            obj.free()
        m.spawn("reader", reader)
        m.spawn("updater", updater)

    assert emu.hunt(emu.scenario(name="srcu-wait")(build), schedules=300).ok


def test_srcu_synchronize_does_not_wait_for_later_readers():
    def build(m):
        srcu = m.srcu("kvm->srcu")
        gp_started = m.completion("grace period started")
        done = m.shared("synchronized", False)

        async def late_reader():
            await gp_started.wait_for_completion()
            idx = await srcu.read_lock()
            while not await done.read():  # stays inside until synchronize returns
                pass
            srcu.read_unlock(idx)

        async def updater():
            gp_started.complete()
            await srcu.synchronize()
            await done.write(True)
        m.spawn("late_reader", late_reader)
        m.spawn("updater", updater)

    sc = emu.scenario(name="srcu-late", max_steps=500)(build)
    for seed in range(20):
        res = emu.run(sc, seed=seed)
        if res.ok:
            continue
        # a reader that began after the flip is never waited for; one that began before
        # the flip is, and only then can the spin on 'done' starve
        assert res.violation.kind == "liveness"
    assert any(emu.run(sc, seed=s).ok for s in range(20))


def test_srcu_misuse():
    def build(m):
        srcu = m.srcu("kvm->srcu")

        async def actor():
            idx = await srcu.read_lock()
            srcu.read_unlock(idx ^ 1)
        m.spawn("vcpu", actor)

    v = run(build, name="srcu-idx").violation
    assert v.kind == "srcu" and "without a matching srcu_read_lock" in v.message

    def build2(m):
        srcu = m.srcu("kvm->srcu")

        async def actor():
            await srcu.read_lock()
            await srcu.synchronize()
        m.spawn("vcpu", actor)

    v = run(build2, name="srcu-self").violation
    assert v.kind == "deadlock" and "inside its own read-side critical section" in v.message


def srcu_vs_mutex(m):
    """A reader takes a mutex inside its SRCU section; the updater synchronizes under it."""
    srcu, mu = m.srcu("srcu"), m.mutex("M")

    async def reader():
        idx = await srcu.read_lock()
        await mu.lock()
        mu.unlock()
        srcu.read_unlock(idx)

    async def updater():
        await mu.lock()
        await srcu.synchronize()
        mu.unlock()
    m.spawn("r", reader)
    m.spawn("u", updater)


def test_lockdep_srcu_reader_lock_vs_synchronize_under_lock():
    h = emu.hunt(emu.scenario(name="srcu-lockdep")(srcu_vs_mutex), schedules=200,
                 keep_going=True)
    assert h.found is not None
    kinds = {v.kind for v in h.found.violations}
    assert "lockdep" in kinds or "deadlock" in kinds


def test_lockdep_three_lock_cycle_across_three_actors():
    def build(m):
        locks = [m.mutex(n) for n in "abc"]

        async def taker(i):
            await locks[i].lock()
            await locks[(i + 1) % 3].lock()
            locks[(i + 1) % 3].unlock()
            locks[i].unlock()
        for i in range(3):
            m.spawn(f"cpu{i}", taker, i)

    sc = emu.scenario(name="abc")(build)
    reports = [v for s in range(30) for v in emu.run(sc, seed=s).violations if v.kind == "lockdep"]
    assert reports and all("possible circular locking dependency" in v.message for v in reports)


def test_lockdep_no_false_positive_on_global_order():
    def build(m):
        locks = [m.mutex(n) for n in ("srcu_like", "mmap_lock", "uvmem_lock")]

        async def taker(first, last):
            for lk in locks[first:last]:
                await lk.lock()
            for lk in reversed(locks[first:last]):
                lk.unlock()
        m.spawn("a", taker, 0, 3)
        m.spawn("b", taker, 1, 3)
        m.spawn("c", taker, 0, 2)

    assert emu.hunt(emu.scenario(name="ordered")(build), schedules=500).ok


def test_channel_blocks_when_full_and_traces_flows():
    def build(m):
        ch = m.channel("ipi", capacity=1)

        async def sender():
            await ch.send("kick")
            await ch.send("flush")

        async def receiver():
            assert await ch.receive() == "kick"
            assert await ch.receive() == "flush"
        m.spawn("cpu0", sender)
        m.spawn("cpu1", receiver)

    res = run(build, name="chan")
    assert res.ok
    flows = [(kind, data[0]) for _, _, kind, _, data in res.trace.events
             if kind in ("send", "recv")]
    assert sorted(f for k, f in flows if k == "send") == sorted(f for k, f in flows if k == "recv")


def test_completion_all_releases_every_waiter():
    def build(m):
        done = m.completion("init_done")

        async def waiter():
            await done.wait_for_completion()

        async def finisher():
            await m.point("work")
            done.complete_all()
        for i in range(3):
            m.spawn(f"vcpu{i}", waiter)
        m.spawn("uv", finisher)

    assert emu.hunt(emu.scenario(name="completion")(build), schedules=100).ok


def test_invariant_checked_between_steps():
    def build(m):
        gfn_state = m.shared("state", "normal")

        async def actor():
            await gfn_state.write("both")   # a transient illegal state...
            await gfn_state.write("secure")  # ...visible between these two steps
        m.spawn("hv", actor)
        m.invariant("legal-state", lambda: "both" if gfn_state.value == "both" else None)

    v = run(build, name="inv").violation
    assert v.kind == "invariant" and v.message == "legal-state: both" and v.step == 2


def test_rwsem_readers_share_writer_excludes_and_waiting_writer_blocks_readers():
    def build(m):
        mmap_lock = m.rwsem("mmap_lock")
        inside = m.shared("inside", 0)

        async def reader():
            await mmap_lock.down_read()
            await inside.write(inside.value + 1)
            await inside.write(inside.value - 1)
            mmap_lock.up_read()

        async def writer():
            await mmap_lock.down_write()
            await m.point("exclusive")
            mmap_lock.downgrade_write()
            mmap_lock.up_read()
        m.spawn("r0", reader)
        m.spawn("r1", reader)
        m.spawn("w", writer)
        m.invariant("writer alone", lambda: "reader inside with writer"
                    if mmap_lock.writer is not None and mmap_lock.readers else None)

    assert emu.hunt(emu.scenario(name="rwsem")(build), schedules=300).ok

    def build_recursive(m):
        mmap_lock = m.rwsem("mmap_lock")
        holds, queued = m.completion("reader holds"), m.completion("writer queued")

        async def reader():
            await mmap_lock.down_read()
            holds.complete()
            await queued.wait_for_completion()
            await mmap_lock.down_read()   # a writer waits in between: deadlock
            mmap_lock.up_read()
            mmap_lock.up_read()

        async def writer():
            await holds.wait_for_completion()
            queued.complete()
            await mmap_lock.down_write()
            mmap_lock.up_write()
        m.spawn("reader", reader)
        m.spawn("writer", writer)

    res = emu.run(emu.scenario(name="rwsem-recursive")(build_recursive))
    assert [v.kind for v in res.violations] == ["lockdep", "deadlock"]
    assert "possible recursive locking detected" in res.violations[0].message
    assert "reader waits in 'down_read mmap_lock' for writer" in res.violations[1].message


def test_teardown_is_inert_and_deterministic():
    """Actors parked inside `async with lock:` when another fails must not run their
    cleanup as the failing actor, add violations, or change the trace."""

    def build(m):
        ready, gate = m.completion("ready"), m.completion("gate")

        async def holder(lock):
            async with lock:
                ready.complete()
                await gate.wait_for_completion()

        async def boom():
            await ready.wait_for_completion()
            await ready.wait_for_completion()
            m.fail("invariant", "boom")
        m.spawn("h0", holder, m.mutex("l0"))
        m.spawn("h1", holder, m.mutex("l1"))
        m.spawn("bad", boom)

    sc = emu.scenario(name="teardown")(build)
    results = [emu.run(sc, seed=0) for _ in range(20)]
    assert {r.trace_hash for r in results} == {results[0].trace_hash}
    assert [(v.kind, v.message) for v in results[0].violations] == [("invariant", "boom")]
    assert not emu.hunt(sc, schedules=50, check_determinism=True).mismatches


def test_deadlock_teardown_with_async_with_adds_nothing():
    def build(m):
        a, b = m.mutex("a"), m.mutex("b")

        async def taker(first, second):
            async with first:
                await m.point("between")
                async with second:
                    pass
        m.spawn("cpu0", taker, a, b)
        m.spawn("cpu1", taker, b, a)

    found = emu.hunt(emu.scenario(name="abba-with")(build), schedules=100).found
    assert [v.kind for v in found.violations] == ["lockdep", "deadlock"]


def test_sleep_under_spinlock_is_a_bug():
    def build(m):
        lock = m.spinlock("mmu_lock")

        async def actor():
            await lock.lock()
            await m.sleep(1000)
            lock.unlock()
        m.spawn("vcpu", actor)

    v = run(build, name="sleep-atomic").violation
    assert v.kind == "sleep-in-atomic" and "sleep(1000)" in v.message


def test_srcu_deadlock_names_reader_and_updater():
    sc = emu.scenario(name="srcu-cycle")(srcu_vs_mutex)
    deadlocks = [v for s in range(40) for v in emu.run(sc, seed=s).violations
                 if v.kind == "deadlock"]
    assert deadlocks
    for v in deadlocks:
        assert "u waits in 'synchronize_srcu srcu" in v.message
        assert "r waits in 'mutex_lock M' for u" in v.message


def test_raw_checkpoint_spin_is_reported(monkeypatch):
    monkeypatch.setattr(Controller, "stall_seconds", 0.2)

    def build(m):
        flag = m.shared("flag", False)

        async def spinner():
            while not flag.value:
                await trio.sleep(0)
        m.spawn("spinner", spinner)

    with pytest.raises(ScenarioError, match="'spinner' took no scheduling decision"):
        run(build, name="raw-spin")


def test_fail_while_building():
    def build(m):
        m.fail("invariant", "bad initial state")

    res = run(build, name="fail-build")
    assert [v.message for v in res.violations] == ["bad initial state"]


def _keyed_counter(monkeypatch, verify: bool, key_tracks_value: bool):
    """An actor bumps a value past the limit its invariant allows; the invariant's key
    tracks the value, or (a broken key) never changes."""
    from emu.sim import machine

    monkeypatch.setattr(machine, "VERIFY_KEYS", verify)
    calls = []

    def build(m):
        state = {"value": 0}

        def check():
            calls.append(state["value"])
            return "value above 1" if state["value"] > 1 else None

        m.invariant("limit", check,
                    key=(lambda: state["value"]) if key_tracks_value else (lambda: 0))

        async def bump():
            for _ in range(3):
                await m.point("bump")
                state["value"] += 1

        m.spawn("bumper", bump)

    return run(build, seed=0, name="keyed"), calls


def test_a_keyed_invariant_is_skipped_while_its_key_is_unchanged(monkeypatch):
    result, calls = _keyed_counter(monkeypatch, verify=False, key_tracks_value=True)
    assert [v.message for v in result.violations] == ["limit: value above 1"]
    assert calls == sorted(set(calls))  # each value checked once, however many decisions


def test_a_key_that_misses_a_change_is_reported_under_verify_keys(monkeypatch):
    result, _ = _keyed_counter(monkeypatch, verify=False, key_tracks_value=False)
    assert not result.violations  # the broken key hides the violation...
    result, _ = _keyed_counter(monkeypatch, verify=True, key_tracks_value=False)
    assert "the key misses a change" in result.violations[0].message  # ...and is caught
