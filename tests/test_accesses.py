"""Every step's accesses: what each primitive reports, the dependence relation, the stable
names of shared hypervisor state on every platform (page references, the Ultravisor's books,
memslots, mmu_ready and vcpus_running, L1's nested-guest IDR, the LPID allocator, L0's
partition table, the guest's calls in flight), and a check that the relation misses no
dependence: two adjacent steps it calls independent, swapped, leave the same state."""

from __future__ import annotations

import array
import collections
import contextlib
import types

import pytest
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


# ------------------------------------------- the shared state every platform reports (issue 10)
def _detailed(scenario_name: str, seed: int, **params):
    from emu.sim.runner import detailed

    return detailed(emu.run(scenario_name, seed=seed, params=params or None))


def _steps_on(res, name: str, write: bool | None = None):
    """(step, actor, where) of the steps touching ``name``: any (``write`` None), writing
    it (True), or only reading it (False)."""
    found = []
    for step, actor, _ in res.decisions:
        a = res.accesses[step - 1]
        touched = {None: a.reads | a.writes, True: a.writes, False: a.reads - a.writes}[write]
        if name in touched:
            found.append((step, actor, res.trace.where.get(step, "")))
    return found


def _conflict(res, i: int, j: int) -> list[str]:
    return conflicts(res.accesses[i - 1], res.accesses[j - 1])


def test_page_references_are_objects():
    """get_page, put_page and the mapping going write page:<kind>:<pfn>; counting reads it."""
    from emu.hw.memory import FramePool

    rec, before = accesses.Recorder(True), accesses.current
    accesses.current = rec
    try:
        pool = FramePool("normal")
        pfn = pool.alloc()
        rec.close(0)
        pool.refs.get_page(pfn)
        rec.close(1)
        assert pool.refs.count(pfn) == 1
        rec.close(2)
        pool.refs.release(pfn)  # the mapping goes while the reference is held
        rec.close(3)
        assert pool.refs.unmapped(pfn)
        rec.close(4)
        pool.refs.put_page(pfn)  # the last reference frees the page
        rec.close(5)
    finally:
        accesses.current = before
    name = f"page:normal:{pfn:#x}"
    get, count, release, unmapped, put = rec.steps
    assert get == steps(writes={name}) and release == steps(writes={name})
    assert count == steps(reads={name}) and unmapped == steps(reads={name})
    assert put.writes == {name, f"frame:normal:{pfn:#x}", "frames:normal"}


def test_a_step_that_takes_a_page_reference_writes_the_page():
    res = _detailed("share-vs-pageout", 5)
    # kvmppc_share_page: gfn_to_pfn takes a reference to QEMU's page (get_user_pages)
    taken = [(s, who) for s, who, where in _steps_on(res, "page:normal:0x4", True)
             if "get_user_page" in where]
    assert taken, _steps_on(res, "page:normal:0x4")
    step, who = taken[0]
    # a page-in's migrate_vma_setup by another actor counts that page's references: the two
    # steps conflict on it
    counted = [s for s, other, where in _steps_on(res, "page:normal:0x4", False)
               if other != who and "mmu_notifier_invalidate" in where]
    assert counted and all("page:normal:0x4" in _conflict(res, s, step) for s in counted)


def test_the_ultravisor_reports_its_books():
    res = _detailed("share-vs-pageout", 5)
    # UV_PAGE_OUT (served by the ucall server) writes what the UV knows of the GFN; the
    # SVM's own access to that GFN (the firmware path on its vCPU) reads it
    outs = [(s, where) for s, who, where in _steps_on(res, "uv:1:0x4", True)
            if who == "ultravisor"]
    assert outs
    reads = [s for s, who, _ in _steps_on(res, "uv:1:0x4") if who.startswith("pcpu")]
    assert reads and any(_conflict(res, s, o) for s in reads for o, _ in outs)
    # H_SVM_INIT_DONE's success makes the SVM secure: the SVM record is written, and every
    # look-up of the SVM reads it
    record = _steps_on(res, "uvsvm:1", True)
    lookups = _steps_on(res, "uvsvm:1", False)
    assert record and lookups and any(_conflict(res, w, r) == ["uvsvm:1"] for w, _, _ in record
                                      for r, _, _ in lookups if r != w)


def test_svm_off_and_a_vcpu_entry_conflict_on_vcpus_running_and_mmu_ready():
    """B6's race (svm-off-no-guard): the entry counts itself in vcpus_running and reads
    mmu_ready; KVM_PPC_SVM_OFF clears mmu_ready and reads vcpus_running."""
    res = _detailed("svm-off-vs-entry", 0)
    entries = [s for s, _, where in _steps_on(res, "vcpus_running:1", True)
               if "recv" in res.decisions[s - 1][2]]
    check = [s for s, who, where in _steps_on(res, "vcpus_running:1", False)
             if "kvmhv_svm_off" in where]
    assert entries and check
    assert all("vcpus_running:1" in _conflict(res, e, c) for e in entries for c in check)
    off = [s for s, _, where in _steps_on(res, "mmu:1", True) if "kvmhv_svm_off" in where]
    ready = [s for s, _, where in _steps_on(res, "mmu:1", False) if where.startswith("_enter")]
    assert off and ready and all("mmu:1" in _conflict(res, o, r) for o in off for r in ready)


def test_memslots_are_written_by_a_hotplug_and_read_by_lookups():
    res = _detailed("dimm-hotplug", 0)
    plugs = [s for s, who, _ in _steps_on(res, "memslots:1", True) if who == "qemu"]
    lookups = [s for s, who, _ in _steps_on(res, "memslots:1", False) if who != "qemu"]
    assert plugs and lookups
    assert all(_conflict(res, p, q) for p in plugs for q in lookups)


def test_nested_idr_lpids_guests_and_l0_partition_table():
    res = _detailed("nested-teardown-vs-enter", 0)
    # __prealloc_nested's idr_alloc and idr_replace write L1's nested-guest IDR; the
    # debugfs cursor (idr_get_next) and __find_nested read it
    writes = _steps_on(res, "idr:1", True)
    assert any("idr_alloc" in res.decisions[s - 1][2] for s, _, _ in writes)
    finds = _steps_on(res, "idr:1", False)
    assert finds and all("idr:1" in _conflict(res, w, f) for w, _, _ in writes
                         for f, _, _ in finds)
    # kvmhv_alloc_nested takes a shadow LPID from the host's allocator
    assert any("kvmhv_alloc_nested" in where for _, _, where in _steps_on(res, "lpids", True))
    # a nested guest's references: get_nested and put_nested write it, a use reads it
    guest = _steps_on(res, "nested:1:1:2")  # (L1 lpid 1, nested lpid 1, shadow LPID 2)
    assert {who for _, who, _ in guest} >= {"vm1.vcpu0", "debugfs"}
    # L0's partition-table entry of a shadow LPID: set and cleared by the guest's life cycle
    assert any(n.startswith("ptbl:") for a in res.accesses for n in a.writes)
    assert _steps_on(res, "ptcr:1", False)


def test_pkvm_pin_check_reads_the_pinned_page():
    """__pkvm_host_unshare_hyp's pin check (hyp_page_count) reads the page the pin wrote."""
    res = _detailed("share-unshare-pin", 0)
    pins = [(step, n) for step, _, _ in res.decisions
            if "hyp_pin_shared_mem" in res.trace.where.get(step, "")
            for n in sorted(res.accesses[step - 1].writes) if n.startswith("vmemmap:")]
    assert pins
    step, page = pins[0]
    checks = [s for s, _, where in _steps_on(res, page) if "__pkvm_host_unshare_hyp" in where
              and s != step]
    assert checks and any(page in _conflict(res, step, c) for c in checks)


def test_guest_calls_and_hcall_windows_are_objects():
    """Which calls overlapped decides what a return code may be: starting and ending a
    guest's call, and an hcall's window, write check:guestcalls:<lpid> and
    check:hcalls:<lpid> (the checks' own state)."""
    res = emu.run("share-storm", seed=1)
    kinds = _kinds(res)
    assert {"check", "uv", "uvsvm", "page", "memslots", "mmu", "vcpus_running"} <= kinds
    assert {"check:hcalls:1", "check:guestcalls:1"} <= _names(res)
    calls = {who for step, who, _ in res.decisions
             if "check:guestcalls:1" in res.accesses[step - 1].writes}
    assert {"vm1.vcpu0", "vm1.vcpu1"} <= calls


# ------------------------------------------------- the relation misses no dependence (a check)
# Swap two adjacent steps of different actors that the relation calls independent, and the
# model must end up in the same state after both: every object reachable from the actors
# (their functions, arguments and the locals of their stacks) and the checks, compared by the
# path it is first reached by. Whatever an actor read is in its locals, so a missed read shows
# up as well as a missed write. Left out: bookkeeping that orders nothing (trace flow ids, the
# step numbers lockdep keeps, the checks' caches and fingerprints, the TLBs' epoch clock,
# counters for the views).
_PRIMITIVE = (int, float, str, bytes, bool, type(None), range)
_BOOKKEEPING = {"flow", "step", "passed", "epoch", "version", "tlb_version", "accesses",
                "copies", "lifetime_version", "guests_version", "rmap_version",
                "pte_version", "watched_version"}


def _model_frames(actor, ctl):
    from emu.sim import controller

    if actor.task is None or actor.done:
        return []
    frames = []
    for frame in controller._await_chain(actor, actor is ctl.current):
        if frame.f_code.co_filename == contextlib.__file__:  # a suspended chain ends at an
            break                                            # async generator: cut both here
        if not frame.f_code.co_filename.startswith(controller._NOT_MODEL) and \
                frame.f_code.co_filename != __file__:
            frames.append(frame)
    return frames


def _snapshot(ctl) -> dict[str, object]:
    roots = [(a.name, (a.fn, a.args)) for a in ctl.actors]
    roots += [(f"{a.name}.{n}", dict(f.f_locals)) for a in ctl.actors
              for n, f in enumerate(_model_frames(a, ctl))]
    roots += [(name, check) for name, check in ctl.invariants + ctl.finals]
    out, seen, queue = {}, {}, collections.deque(roots)
    while queue:
        path, obj = queue.popleft()
        if isinstance(obj, _PRIMITIVE):
            out[path] = obj
            continue
        if isinstance(obj, type | types.ModuleType | types.CodeType | types.FrameType |
                      types.CoroutineType | types.BuiltinFunctionType | Controller) or \
                type(obj).__module__.startswith(("trio", "random", "emu.sim.controller",
                                                 "emu.sim.trace", "emu.sim.lockdep")):
            continue
        if id(obj) in seen:  # (ids only to find shared objects within one snapshot)
            out[path] = ("ref", seen[id(obj)])
            continue
        seen[id(obj)] = path
        if isinstance(obj, types.FunctionType):
            cells = zip(obj.__code__.co_freevars, obj.__closure__ or (), strict=True)
            items = [(n, c.cell_contents) for n, c in cells if c.cell_contents is not None]
        elif isinstance(obj, types.MethodType):
            items = [("self", obj.__self__)]
        elif isinstance(obj, dict):
            items = sorted(((repr(k), v) for k, v in obj.items()), key=lambda kv: kv[0])
        elif isinstance(obj, list | tuple | collections.deque):
            items = list(enumerate(obj))
            if path.endswith("._queue"):  # a channel's (flow id, message)
                items = [(i, v[1]) for i, v in items]
        elif isinstance(obj, set | frozenset):
            items, out[path] = [], sorted(map(repr, obj))
        elif isinstance(obj, bytearray | array.array):
            items, out[path] = [], bytes(obj)
        else:
            fields = dict(getattr(obj, "__dict__", {}))
            for klass in type(obj).__mro__:
                for slot in getattr(klass, "__slots__", ()):
                    if slot not in ("__dict__", "__weakref__") and hasattr(obj, slot):
                        fields[slot] = getattr(obj, slot)
            items = list(fields.items())
        queue.extend((f"{path}.{k}", v) for k, v in items if k not in _BOOKKEEPING)
    return out


class _Follow(RandomWalk):
    """Takes the actors ``names`` in turn, snapshots before decision ``at`` (0: each one)."""

    wants_accesses = True

    def __init__(self, names, at):
        super().__init__(0, timers=True)
        self.names, self.at, self.snaps, self.enabled = names, at, {}, []

    def choose(self, enabled, ctl):
        n = len(self.enabled) + 1
        self.enabled.append([a.name for a in enabled])
        if self.at in (0, n):
            self.snaps[n] = _snapshot(ctl)
        want = self.names[n - 1] if n <= len(self.names) else None
        return next((a for a in enabled if a.name == want), None) or \
            super().choose(enabled, ctl)


def _follow(name: str, names: list[str], at: int) -> tuple[_Follow, list]:
    from emu.sim.runner import prepare

    sc, values, quirks = prepare(name, None, ())
    follow = _Follow(names, at)

    async def main():
        ctl = Controller(follow, max_steps=sc.step_budget(values))
        sc.build(Machine(ctl, values, quirks, tuple(sc.quirks), 0), **values)
        await ctl.run()
        return ctl

    ctl = trio.run(main)
    return follow, ctl.step_accesses


@pytest.mark.parametrize("name, seed", [("svm-off-vs-entry", 0), ("nested-boot", 0),
                                         ("donate-vs-abort", 1)])
def test_steps_the_relation_calls_independent_commute(name, seed):
    base = emu.run(name, seed=seed)
    names = [who for _, who, _ in base.decisions]
    first, steps = _follow(name, names, 0)
    assert steps == base.accesses  # the same schedule
    swapped = 0
    for s in range(1, len(names) - 1):  # steps s and s + 1 (1-based)
        a, b = names[s - 1], names[s]
        if a == b or dependent(steps[s - 1], steps[s]):
            continue
        # independent: b could already run at a's decision, and running b first leaves the
        # same state once both have run
        assert b in first.enabled[s - 1], (s, a, b)
        other, _ = _follow(name, [*names[:s - 1], b, a, *names[s + 1:]], s + 2)
        before, after = first.snaps[s + 2], other.snaps[s + 2]
        differ = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        assert not differ, (s, base.decisions[s - 1], base.decisions[s], differ[:5])
        swapped += 1
    assert swapped >= 5


def test_the_commutation_check_finds_a_missed_report(monkeypatch):
    """Without vcpus_running and mmu_ready in the relation, B6's two sides look independent:
    swapping them changes what SVM_OFF and the entry see."""
    from emu.kvm.vm import KVM

    monkeypatch.setattr(KVM, "touch_running", lambda self, write=False: None)
    monkeypatch.setattr(KVM, "touch_mmu", lambda self, write=False: None)
    with pytest.raises(AssertionError, match="smp_mb"):
        test_steps_the_relation_calls_independent_commute("svm-off-vs-entry", 0)
