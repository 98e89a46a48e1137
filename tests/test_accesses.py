"""Every step's accesses: what each primitive reports, the dependence relation, and the
stable names of shared hypervisor state on every platform."""

from __future__ import annotations

import trio

import emu
from emu.sim import Controller, accesses
from emu.sim.accesses import NONE, StepAccesses, conflicts, dependent
from emu.sim.machine import Machine
from emu.sim.runner import run_schedule
from emu.sim.scenario import scenario
from emu.sim.strategies import RandomWalk


def steps(reads=(), writes=()) -> StepAccesses:
    return StepAccesses(frozenset(reads), frozenset(writes))


@scenario(name="accesses-lost-update")
def lost_update(m):
    """Two incrementers race on x without a lock; a third increments y under a mutex and
    marks what it did; a sleeper waits for the time."""
    x, y, lock = m.shared("x", 0), m.shared("y", 0), m.mutex("lock")
    done = m.kobject("done")

    async def incrementer():
        v = await x.read()
        await x.write(v + 1)

    async def locked():
        await lock.lock()
        await y.write(1)
        lock.unlock()
        await done.use()
        m.touch("note-board", True)

    async def sleeper():
        await m.sleep(5)
        done.free()

    m.spawn("a", incrementer)
    m.spawn("b", incrementer)
    m.spawn("c", locked)
    m.spawn("d", sleeper)


EXPECTED = {
    # the operation a step was chosen at -> what the step touches, up to the next point
    "start": NONE,
    "read x": steps(reads={"x"}),
    "write x": steps(writes={"x"}),
    "mutex_lock lock": steps(writes={"lock"}),
    "write y": steps(writes={"y", "lock"}),  # the unlock is in the same step
    "dereference done": steps(reads={"done"}, writes={"note-board"}),
    "sleep 5": steps(reads={"clock"}, writes={"done"}),
}


def test_every_step_touches_exactly_what_its_operation_predicts():
    seen = set()
    for seed in range(12):
        res = emu.run(lost_update, seed=seed)
        assert len(res.accesses) == res.steps
        for step, actor, op in res.decisions:
            got = res.accesses[step - 1]
            if actor == "timer":
                assert got == steps(writes={"clock"}), (seed, step)
            elif actor == "d" and op == "start":  # the sleeper queues its timer
                assert got == steps(writes={"clock"}), (seed, step)
            elif not res.ok and step == res.violation.step:  # a use after the free ends it
                assert res.violation.kind == "use-after-free"
                assert got == steps(reads={"done"}), (seed, step)
            else:
                assert got == EXPECTED[op], (seed, step, actor, op)
            seen.add(op)
    assert seen == {*EXPECTED, "fire timer at 5"}


def test_dependent_steps_share_an_object_one_of_them_writes():
    res = next(r for r in (emu.run(lost_update, seed=s) for s in range(20)) if r.ok)
    by_op = {}
    for step, actor, op in res.decisions:
        by_op.setdefault((actor, op), res.accesses[step - 1])
    read_a, read_b = by_op["a", "read x"], by_op["b", "read x"]
    write_a, write_b = by_op["a", "write x"], by_op["b", "write x"]
    assert not dependent(read_a, read_b)  # two reads commute
    assert dependent(read_a, write_b) and dependent(write_b, read_a)  # the lost update
    assert dependent(write_a, write_b)
    assert conflicts(read_a, write_b) == ["x"]
    assert not dependent(by_op["a", "start"], write_b) and conflicts(read_a, read_b) == []
    assert not dependent(write_a, by_op["c", "write y"])
    assert dependent(by_op["c", "mutex_lock lock"], by_op["c", "write y"])  # lock, unlock
    assert dependent(by_op["c", "dereference done"], by_op["d", "sleep 5"])  # use vs free
    assert by_op["c", "dereference done"].accesses() == [("done", False), ("note-board", True)]


def test_locks_srcu_rwsem_channels_and_completions_report_themselves():
    @scenario(name="accesses-primitives")
    def build(m):
        srcu, sem, ch, comp = m.srcu("srcu"), m.rwsem("sem"), m.channel("ch"), \
            m.completion("comp")
        spin = m.spinlock("spin")

        async def reader():
            idx = await srcu.read_lock()
            await sem.down_read()
            sem.up_read()
            srcu.read_unlock(idx)
            await ch.send("msg")
            await comp.wait_for_completion()

        async def writer():
            await srcu.synchronize()
            await sem.down_write()
            sem.up_write()
            await spin.lock()
            spin.unlock()
            await ch.receive()
            comp.complete()

        m.spawn("r", reader)
        m.spawn("w", writer)

    for seed in range(6):
        res = emu.run(build, seed=seed)
        assert res.ok
        touched = {}
        for step, actor, op in res.decisions:
            touched[actor, op] = res.accesses[step - 1]
        assert touched["r", "srcu_read_lock srcu"] == steps(reads={"srcu"})
        assert touched["r", "down_read sem"] == steps(reads={"sem", "srcu"})  # up_read too
        assert touched["r", "send ch"] == steps(writes={"ch"})
        assert touched["r", "wait_for_completion comp"] == steps(writes={"comp"})
        assert "srcu" in touched["w", "synchronize_srcu srcu"].writes
        assert touched["w", "start"] == NONE
        assert touched["w", "down_write sem"] == steps(writes={"sem"})
        assert touched["w", "spin_lock spin"] == steps(writes={"spin"})  # spin_unlock too
        assert touched["w", "recv ch"] == steps(writes={"ch", "comp"})  # then complete()


def test_accesses_stay_out_of_the_trace_and_cost_nothing_unless_asked():
    recorded = emu.run(lost_update, seed=4)
    assert recorded.accesses

    async def plain():
        return await run_schedule(lost_update, {}, (), RandomWalk(4, timers=True), 4, 1000)

    unrecorded = trio.run(plain)
    assert unrecorded.accesses is None
    assert unrecorded.trace_hash == recorded.trace_hash
    assert accesses.current is accesses.OFF  # no recorder outlives its run


def test_a_strategy_that_wants_accesses_sees_them_step_by_step():
    seen = []

    class Watching(RandomWalk):
        wants_accesses = True

        def choose(self, enabled, ctl):
            seen.append(list(ctl.step_accesses))
            return super().choose(enabled, ctl)

    async def main():
        return await run_schedule(lost_update, {}, (), Watching(2), 2, 1000)

    res = trio.run(main)
    assert len(seen) == res.steps == len(res.accesses)
    # at each decision, every step before it and not the one it decides
    assert all(seen[i] == res.accesses[:i] for i in range(len(seen)))


def test_a_violation_closes_the_step_in_progress():
    res = emu.run(lost_update, seed=0, max_steps=3)
    assert res.violation.kind == "liveness"
    assert len(res.accesses) == res.steps


def test_touch_outside_a_run_is_ignored():
    ctl = Controller(RandomWalk(0), record=True)
    m = Machine(ctl, {}, (), (), 0)
    m.touch("built", True)  # building is no step: dropped at the first decision
    ctl.recorder.close(0)
    assert ctl.step_accesses == []


def test_what_checks_and_predicates_read_is_no_steps():
    @scenario(name="accesses-checked")
    def build(m):
        x = m.shared("x", 0)

        def check():
            m.touch("checked")  # as an invariant reading model state would

        async def writer():
            await x.write(1)

        m.invariant("reads state", check)
        m.spawn("w", writer)

    res = emu.run(build)
    assert res.accesses == [NONE, steps(writes={"x"})]


# --------------------------------------------------------------------- hypervisor state
def _names(res) -> set[str]:
    return {n for a in res.accesses for n in a.reads | a.writes}


def _kinds(res) -> set[str]:
    return {n.split(":")[0] for n in _names(res) if ":" in n}


def _by(res, actor=None, op=None):
    """(step, accesses) of the steps of ``actor`` (a name prefix) whose operation contains
    ``op``."""
    return [(step, res.accesses[step - 1]) for step, who, what in res.decisions
            if (actor is None or who.startswith(actor)) and (op is None or op in what)]


def _stable(scenario_name: str, seed: int):
    first, again = emu.run(scenario_name, seed=seed), emu.run(scenario_name, seed=seed)
    assert first.accesses == again.accesses
    assert [a.accesses() for a in first.accesses] == [a.accesses() for a in again.accesses]
    return first


def test_svm_gfn_words_device_pages_and_host_ptes():
    res = _stable("share-vs-pageout", 5)
    assert {"gfn", "devpage", "hostpte", "frame"} <= _kinds(res)
    # QEMU's fault pages a GFN out (page_free writes its word) and a vCPU pages the same
    # GFN back in: the two steps conflict on the word
    out = {n for _, a in _by(res, "qemu") for n in a.writes if n.startswith("gfn:")}
    back = [(s, a) for s, a in _by(res, "pcpu") if a.writes & out]
    assert out and back
    for step, a in back:
        for q, b in _by(res, "qemu"):
            if b.writes & a.writes & out:
                assert dependent(a, b) and conflicts(a, b), (step, q)


def test_nested_radix_entries_tlb_groups_and_rmap():
    res = _stable("tlbiel-migrate", 5)
    assert {"radix", "tlb", "tlbinval", "rmap"} <= _kinds(res)
    assert any(n.startswith("radix:guest:") for n in _names(res))  # L1's own tables
    assert any(n.startswith("radix:host:") for n in _names(res))  # L0's shadow tables
    # seed 002: the tlbiel on the new group records an invalidation of the LPID, and the
    # other vCPU's load through pCPU 0's group consults it
    [(tlbiel, inval)] = _by(res, op="Tlbiel")
    loads = _by(res, op="Ld(")
    later = [(s, a) for s, a in loads if s > tlbiel]
    assert later
    for _, load in later:
        assert dependent(inval, load) and any(n.startswith("tlbinval:lpid")
                                              for n in conflicts(inval, load))
    # the L1 fault that maps the page writes L0's shadow leaf, which L2 accesses walk
    stores = _by(res, op="St(")
    shadow = {n for _, a in _by(res, "vm1.vcpu") for n in a.writes if n.startswith("radix:host")}
    assert any(a.reads & shadow for _, a in stores)


def test_pkvm_stage2_entries_tlbs_and_vmemmap():
    res = _stable("donate-vs-abort", 5)
    assert {"s2", "tlb", "vmemmap"} <= _kinds(res)
    # the donation's PTE store and the prober's walk of the same entry conflict
    stores = _by(res, "cpu1", "stage-2 pte store")
    walks = _by(res, "cpu0", "mmu walk")
    pairs = [(s, w) for s, a in stores for w, b in walks
             if {n for n in a.writes & b.reads if n.startswith("s2:")}]
    assert pairs
    for s, w in pairs:
        assert dependent(res.accesses[s - 1], res.accesses[w - 1])
    # two walks of the same entries are independent
    assert not dependent(walks[0][1], walks[1][1])
