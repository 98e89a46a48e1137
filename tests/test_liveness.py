"""Liveness: hot/cold monitors, the livelock's repeating cycle, the injected livelock, each
model monitor made to stay hot, and the fixed model clean under every monitor."""

from __future__ import annotations

import pytest
import trio

import emu
from emu.actors.ultravisor import Ultravisor
from emu.kvm import uvmem
from emu.kvm.enter_nested import ENTER_NESTED, RESUME_GUEST
from emu.kvm.hvcall import H_STATE, H_SUCCESS, H_SVM_INIT_DONE
from emu.machines import nested as nested_machine
from emu.machines.svm import SvmMachine
from emu.pkvm import mem_protect
from emu.pkvm.errno_base import EAGAIN
from emu.pkvm.mem_protect import HOST_ABORT
from emu.sim import Machine
from emu.sim.liveness import find_cycle, shortest_period
from emu.sim.runner import prepare, run_schedule
from emu.sim.scenario import suites
from emu.sim.strategies import RandomWalk

MONITORS = (uvmem.SHARE_RETRY, uvmem.VM_TRANSIENT, ENTER_NESTED, HOST_ABORT)


def cycle_of(result):
    """The cycle of a result that ran out of steps (its fair suffix is the second half)."""
    trace = result.trace
    fair_from = result.max_steps - result.max_steps // 2
    return find_cycle(trace.events, trace.actors, fair_from, set(range(len(trace.actors))))


# --------------------------------------------------------------------------- the engine
def test_shortest_period():
    assert shortest_period(list("abababab")) == (2, 8)
    assert shortest_period(list("xyzab" + "abc" * 10)) == (3, 30)  # from the prefix's 'ab'
    assert shortest_period(list("aaaa")) == (1, 4)
    assert shortest_period(list("abcdefgh")) is None
    assert shortest_period(list("ab")) is None  # fewer than three rounds


def test_a_monitor_still_hot_at_the_end_is_a_liveness_violation():
    def build(m, cool):
        async def worker():
            m.hot("request", "req 1", "submitted")
            await m.point("work")
            if cool:
                m.cold("request", "req 1")
            await m.point("exit")
        m.spawn("worker", worker)

    hot = emu.run(emu.scenario(name="hot-end", params={"cool": False})(build))
    v = hot.violation
    assert v.kind == "liveness" and "\n" not in v.message
    assert v.message == "request req 1 never cooled: hot since step 1 (worker): submitted"
    assert "hot at the end: request req 1 (hot since step 1, worker: submitted)" in v.details
    assert emu.run(emu.scenario(name="hot-end", params={"cool": True})(build)).ok


def test_monitors_change_no_schedule_and_no_trace():
    """hot and cold are no scheduling points and leave the trace alone: a scenario's trace
    hashes are the same with and without them."""
    def build(m, monitors):
        flag = m.shared("flag", 0)

        async def actor(i):
            for r in range(3):
                if monitors:
                    m.hot("round", (i, r))
                await flag.write(await flag.read() + 1)
                if monitors:
                    m.cold("round", (i, r))
        for i in range(3):
            m.spawn(f"a{i}", actor, i)

    sc = emu.scenario(name="mon", params={"monitors": False})(build)
    for seed in range(10):
        for strategy in ("random", "pct"):
            a = emu.run(sc, seed=seed, strategy=strategy)
            b = emu.run(sc, seed=seed, strategy=strategy, params={"monitors": True})
            assert a.ok and b.ok and a.trace_hash == b.trace_hash


def test_the_state_fingerprint_tells_progress_cut_short_from_a_livelock():
    """Two counters counting further than the budget allows: no loop of states, new states
    to the end (the budget was too small, not a livelock); with a fingerprint that ignores
    the counts, the same actors in the same loop keep returning to one state."""
    def build(m, whole):
        counts = [0, 0]

        async def counter(i):
            for _ in range(1000):
                await m.point("count")
                counts[i] += 1
        m.spawn("c0", counter, 0)
        m.spawn("c1", counter, 1)
        m.state_fingerprint(lambda: tuple(counts) if whole else "counting")

    sc = emu.scenario(name="counters", max_steps=400, params={"whole": True})(build)
    progress = emu.run(sc).violation
    assert progress.kind == "liveness" and "last new one at step 400 (new ones still " \
        "appearing: progress the budget cut short?)" in progress.details
    assert "livelock cycle: " in progress.details  # (each actor's own op does repeat)
    same = emu.run(sc, params={"whole": False}).violation
    assert "model states in the fair suffix: 1 distinct over 200 decisions, the last new " \
        "one at step 201 (none new in its second half" in same.details
    assert emu.run(sc).trace_hash == emu.run(sc, params={"whole": False}).trace_hash


# --------------------------------------------------------------------------- injected livelock
def test_the_injected_livelock_is_reported_with_its_cycle():
    found = emu.hunt("trylock-livelock", quirks=["no-backoff"], schedules=50, seed=0,
                     shrink=False).found
    v = found.violation
    assert v.kind == "liveness" and found.steps == found.max_steps and "\n" not in v.message
    # the message says why: both CPUs still want their pair of locks
    assert v.message.endswith("; still hot: lock pair (x2)")
    assert "hot: lock pair cpu0 (hot since step 1, cpu0: lock_a then lock_b)" in v.details
    assert "hot: lock pair cpu1 (hot since step " in v.details
    cycle = cycle_of(found)
    loops = {lp.actor: lp.ops for lp in cycle.loops}
    assert loops == {"cpu0": ("spin_trylock lock_b", "cpu_relax (lock_b busy)"),
                     "cpu1": ("spin_trylock lock_a", "cpu_relax (lock_a busy)")}
    assert sorted(cycle.round) == [("cpu0", "cpu_relax (lock_b busy)"),
                                   ("cpu0", "spin_trylock lock_b"),
                                   ("cpu1", "cpu_relax (lock_a busy)"),
                                   ("cpu1", "spin_trylock lock_a")]
    # the whole fair suffix (half the budget, 4 steps a round) is the cycle
    assert cycle.repeats >= found.max_steps // 2 // 4 * 0.8 and not cycle.others
    assert cycle.since <= found.max_steps // 2 + 4
    assert f"livelock cycle: {cycle.describe()}" in v.details
    assert " -> " in cycle.describe() and f"repeats {cycle.repeats} times" in v.details
    # it replays: the same schedule, the same report
    again = emu.run("trylock-livelock", quirks=["no-backoff"], seed=found.seed)
    assert (again.trace_hash, again.violation) == (found.trace_hash, v)


def test_the_backoff_version_is_live_and_backs_off():
    for strategy in ("random", "pct"):
        hunt = emu.hunt("trylock-livelock", schedules=150, seed=0, strategy=strategy)
        assert hunt.ok, hunt.found and hunt.found.violation
    # the race is reached: some schedules back off, the same that livelock without it
    backed = [s for s in range(40) if any(
        "back off" in op for _, _, op in emu.run("trylock-livelock", seed=s).decisions)]
    assert backed
    for s in backed[:3]:
        assert emu.run("trylock-livelock", quirks=["no-backoff"], seed=s).violation.kind == \
            "liveness"


class LockStep(RandomWalk):
    """The kernel's lock-step: the CPUs strictly alternate (each step goes to another actor
    than the last, when one can run) until the fair continuation, then uniform."""

    last = None

    def choose(self, enabled, ctl):
        if ctl.fair:
            return super().choose(enabled, ctl)
        others = [a for a in enabled if a is not self.last]
        self.last = others[0] if others else enabled[0]
        return self.last


def test_the_fair_suffix_ends_a_lock_step_retry():
    """In lock-step the backing-off CPUs retry through the whole unfair half of the budget
    (a livelock only that schedule keeps up); the fair half lets one through. Without the
    back-off no schedule can."""
    def lock_step(quirks):
        sc, values, chosen = prepare("trylock-livelock", {}, quirks)
        return trio.run(run_schedule, sc, values, chosen, LockStep(0), 0, 2000)

    live = lock_step(())
    assert live.ok and 1000 < live.steps < 1100
    unfair = [(actor, op) for step, actor, op in live.decisions if step <= 1000]
    period, tail = shortest_period(unfair)
    assert period == 6 and tail >= 990  # the same round from the first steps on
    assert set(unfair[-6:]) == {
        ("cpu0", "spin_trylock lock_a"), ("cpu1", "spin_trylock lock_b"),
        ("cpu0", "spin_trylock lock_b"), ("cpu1", "spin_trylock lock_a"),
        ("cpu0", "back off: spin_unlock lock_a"), ("cpu1", "back off: spin_unlock lock_b")}
    stuck = lock_step(("no-backoff",))
    assert stuck.violation.kind == "liveness" and stuck.steps == 2000


def test_same_seed_same_trace_and_two_workers_same_finding():
    args = dict(quirks=["no-backoff"], schedules=12, seed=3, shrink=False)
    one = emu.hunt("trylock-livelock", **args)
    two = emu.hunt("trylock-livelock", workers=2, **args)
    again = emu.hunt("trylock-livelock", **args)
    for other in (two, again):
        assert other.found.seed == one.found.seed
        assert other.found.trace_hash == one.found.trace_hash
        assert other.found.violation == one.found.violation


def test_a_livelock_shrinks_to_the_same_violation():
    found = emu.hunt("trylock-livelock", quirks=["no-backoff"], schedules=50, seed=0)
    shrunk = found.shrunk
    assert shrunk.result.violation.kind == "liveness"
    assert "still hot: lock pair (x2)" in shrunk.result.violation.message
    assert len(shrunk.result.decisions) <= len(found.found.decisions)
    # a livelock spends its whole budget, so the shrink shows in its preemptions: one
    assert shrunk.after[0] == 1 < shrunk.before[0]


# --------------------------------------------------------------------------- model monitors
def test_a_share_that_retries_for_ever_names_its_monitor_and_its_loop():
    """page-in-fail-leaves-uvmem: the later share's 'goto retry' never ends."""
    found = emu.hunt("page-in-fail-vs-share", quirks=["page-in-fail-leaves-uvmem"],
                     schedules=20, seed=0, shrink=False).found
    v = found.violation
    assert v.kind == "liveness" and "pcpu1 kept stepping" in v.message
    assert v.message.endswith(f"; still hot: {uvmem.SHARE_RETRY}")
    assert f"hot: {uvmem.SHARE_RETRY} GFN 0x4 of VM 1 (pcpu1) (hot since step " in v.details
    assert "pcpu1: H_SVM_PAGE_IN(H_PAGE_IN_SHARED))" in v.details
    cycle = cycle_of(found)
    (loop,) = cycle.loops
    assert loop.actor == "pcpu1" and "mutex_lock uvmem_lock" in loop.ops
    # the GFN words, device pages and VM flags never change while it spins
    assert "model states in the fair suffix: 1 distinct over " in v.details


def _esm(monkeypatch, breakage: str, then: str | None = None):
    """UV_ESM with ``breakage``: ``init-done-fails`` (its migration made to fail, as a
    pinned page does: the VM stays Transient, "the VM must be terminated" by its owner; the
    guest accepts the failure) or ``uv-skips-init-done`` (the UV returns success without
    issuing H_SVM_INIT_DONE). Then QEMU ``then`` resets the VM (``reset``), destroys it
    (``destroy``), or does nothing."""
    if breakage == "init-done-fails":
        async def fails(kvm, memslot):
            return H_STATE
        monkeypatch.setattr(uvmem, "kvmppc_uv_migrate_mem_slot", fails)
    else:
        issue = Ultravisor._issue

        async def skips(self, svm, req, *args):
            return H_SUCCESS if req == H_SVM_INIT_DONE else await issue(self, svm, req, *args)
        monkeypatch.setattr(Ultravisor, "_issue", skips)

    def build(m):
        sm = SvmMachine(m, secure_pages=64)
        kvm = sm.vm(1, ((0, 16),))
        done = m.completion("guest done")

        async def guest(g):
            await g.esm(0, 4, accept={H_STATE, H_SUCCESS})
            done.complete()

        async def qemu(h):
            await done.wait_for_completion()
            if then == "reset":
                await h.svm_off(1)
            elif then == "destroy":
                await h.destroy(1)
        sm.vcpu(kvm, guest)
        sm.host(qemu)
    return emu.run(emu.scenario(name=f"esm-{breakage}")(build))


def test_an_esm_that_leaves_the_vm_transient_is_flagged(monkeypatch):
    v = _esm(monkeypatch, "uv-skips-init-done").violation
    assert v.kind == "liveness"
    assert v.message.startswith(f"{uvmem.VM_TRANSIENT} 1 never cooled: hot since step ")
    assert v.message.endswith(": UV_ESM: H_SVM_INIT_START")
    assert _esm(monkeypatch, "uv-skips-init-done", then="reset").ok  # QEMU resets it
    assert _esm(monkeypatch, "uv-skips-init-done", then="destroy").ok  # or QEMU exits


def test_a_failed_init_done_leaves_the_vm_to_its_owner(monkeypatch):
    """The kernel's protocol: after H_STATE the caller must terminate the VM; a scenario
    without that owner ends with the VM Transient, and nothing is flagged."""
    assert _esm(monkeypatch, "init-done-fails").ok
    assert _esm(monkeypatch, "init-done-fails", then="reset").ok


def test_a_guest_program_that_stops_mid_boot_is_not_flagged():
    """A raw H_SVM_INIT_START (not UV_ESM) promises no INIT_DONE: the VM may end Transient."""
    box = {}

    def build(m):
        sm = SvmMachine(m, secure_pages=64)
        kvm = box["kvm"] = sm.vm(1, ((0, 16),))

        async def guest(g):
            assert await g.uv_hcall("H_SVM_INIT_START") == H_SUCCESS
        sm.vcpu(kvm, guest)
    assert emu.run(emu.scenario(name="mid-boot")(build)).ok
    assert uvmem.vm_state(box["kvm"]) == "Transient"


def test_an_h_enter_nested_that_never_returns_is_named(monkeypatch):
    """L0's nested fault handler made to resume L2 without installing anything: L2 faults
    on the same access for ever, and its H_ENTER_NESTED never returns to L1."""
    async def resume(fault, gp):
        return RESUME_GUEST
    monkeypatch.setattr(nested_machine, "kvmhv_nested_page_fault", resume)
    r = emu.run("nested-boot", seed=0, max_steps=4000)
    v = r.violation
    assert v.kind == "liveness" and r.steps == 4000
    assert f"still hot: {ENTER_NESTED}" in v.message
    assert f"hot: {ENTER_NESTED} " in v.details
    assert "livelock cycle: " in v.details


def test_a_host_abort_never_resolved_is_named(monkeypatch):
    """host_stage2_idmap made to answer -EAGAIN without mapping: the host CPU retries its
    access for ever."""
    async def again(hyp, addr):
        return -EAGAIN
    monkeypatch.setattr(mem_protect, "host_stage2_idmap", again)
    r = emu.run("pkvm-boot", seed=0, max_steps=2000)
    v = r.violation
    assert v.kind == "liveness" and v.message.endswith(f"; still hot: {HOST_ABORT} (x3)")
    assert all(f"hot: {HOST_ABORT} {cpu} (" in v.details for cpu in range(3))
    cycle = cycle_of(r)
    assert any("host retries the access" in lp.ops for lp in cycle.loops)


# --------------------------------------------------------------------------- the fixed model
MODEL_SCENARIOS = sorted(n for suite in ("svm", "nested", "pkvm") for n in suites()[suite][1])


@pytest.mark.parametrize("name", MODEL_SCENARIOS)
def test_the_fixed_model_is_clean_under_the_monitors(name):
    for strategy in ("random", "pct"):
        hunt = emu.hunt(name, schedules=30, seed=0, strategy=strategy, shrink=False)
        assert hunt.ok, hunt.found.violation.describe()


def test_every_model_monitor_goes_hot_and_cools_in_the_fixed_model(monkeypatch):
    """A clean hunt whose monitors never went hot would prove nothing: each goes hot (and
    cools: the runs are clean) in the scenarios of its kind, an aborted ESM included."""
    went_hot: dict[str, set[str]] = {}
    hot = Machine.hot

    def spy(self, monitor, key, why=""):
        went_hot.setdefault(name, set()).add(monitor)
        hot(self, monitor, key, why)
    monkeypatch.setattr(Machine, "hot", spy)
    for name in ("share-storm", "abort-on-register-failure", "svm-reboot", "svm-destroy",
                 "nested-boot", "concurrent-aborts"):
        assert emu.hunt(name, schedules=3, seed=0, shrink=False).ok
    assert set().union(*went_hot.values()) == set(MONITORS)
    assert went_hot["abort-on-register-failure"] == {uvmem.VM_TRANSIENT}
    assert went_hot["svm-reboot"] >= {uvmem.VM_TRANSIENT, uvmem.SHARE_RETRY}
