"""Bounded exhaustive search (emu/sim/explore.py): exact counts on a scenario counted by
hand, the engine demos and a pKVM quirk found within small bounds, timers as choices, the
sleep-set reduction keeping every outcome, checkpoints, and the ``emu explore`` command."""

from __future__ import annotations

import json
import signal

import pytest

import emu
from emu.errors import EmuError
from emu.scenarios import nested, pkvm, svm
from emu.sim.explore import estimate, explore
from emu.sim.interrupt import INTERRUPT


@emu.scenario(name="explore-two-by-two")
def two_by_two(m):
    """Two actors of two steps each ("start", then "x"), touching nothing shared."""
    async def worker():
        await m.point("x")

    m.spawn("a", worker)
    m.spawn("b", worker)


# By hand: the 6 interleavings of a a / b b, with a preemption wherever the actor that just
# stepped could go on: aabb 0, bbaa 0, abba 1, baab 1, abab 2, baba 2.
@pytest.mark.parametrize(("bound", "count"), [(0, 2), (1, 4), (2, 6), (3, 6)])
def test_schedules_counted_by_hand(bound, count):
    r = explore(two_by_two, preemptions=bound, prune=False)
    assert (r.schedules, r.pruned, r.exhausted, r.clean) == (count, 0, True, True)


def test_independent_steps_leave_one_schedule():
    # Nothing is shared, so every interleaving is equivalent: DPOR finds no race to reverse.
    for bound in (0, 1, 2):
        r = explore(two_by_two, preemptions=bound)
        assert (r.schedules, r.pruned, r.exhausted, r.clean) == (1, 0, True, True)


@emu.scenario(name="explore-two-writers", params={"locked": False, "seen": ""})
def two_writers(m, locked, seen):
    """Two actors write the same word once, after a step of their own (optionally under a
    lock): the only race is the pair of writes; the final value goes to ``SEEN[seen]``."""
    x, lock = m.shared("x", 0), m.mutex("lock")

    async def worker(v):
        await m.point("local")
        if locked:
            await lock.lock()
        await x.write(v)
        if locked:
            lock.unlock()

    m.spawn("a", worker, 1)
    m.spawn("b", worker, 2)
    m.final("record", lambda: SEEN[seen].append(x.value))


@pytest.mark.parametrize("locked", [False, True])
def test_dpor_reverses_the_one_race(locked):
    # Both orders of the writes, each reached by switching where the other actor's run
    # began (free) and, within a bound of 1 or more, right before its write (bounded POR
    # plans both): 4 schedules unlocked, against every interleaving unreduced. Locked, an
    # arrival at the lock is dependent on its acquisition (it decides whether the switch
    # there is free): in a space this small that leaves nothing to prune.
    for bound in (0, 1, 2):
        SEEN.update(full=[], pruned=[])
        r = explore(two_writers, preemptions=bound, params={"locked": locked, "seen": "pruned"})
        full = explore(two_writers, preemptions=bound, prune=False,
                       params={"locked": locked, "seen": "full"})
        assert r.clean and full.clean
        assert sorted(set(SEEN["pruned"])) == sorted(set(SEEN["full"])) == [1, 2]
        assert r.schedules + r.pruned <= full.schedules
        if not locked:
            assert r.schedules == (2 if bound == 0 else 4)
            assert bound == 0 or r.schedules < full.schedules


def test_the_estimate_bounds_the_two_by_two_space():
    for bound, count in ((0, 2), (1, 4), (2, 6)):
        assert estimate(4, 2, bound) >= count
    assert estimate(4, 2, 0) == 2  # exact without preemptions: the two orders


def test_lost_update_needs_one_preemption():
    clean = explore("lost-update", preemptions=0)
    assert clean.clean and clean.schedules == 6  # 3! orders of whole increments
    for bound in (1, 2):
        r = explore("lost-update", preemptions=bound)
        assert not r.clean and r.found.violation.kind == "invariant"
        assert "an update was lost" in r.found.violation.message
        assert r.found_preemptions == 1


def test_abba_deadlocks_with_one_preemption():
    lockdep = explore("abba", preemptions=0)
    assert lockdep.exhausted and not lockdep.clean  # the inversion, as a warning only
    assert not lockdep.found.violation.fatal
    r = explore("abba", preemptions=1)
    assert r.found.violation.kind == "deadlock" and r.found_preemptions == 1
    assert explore("abba", preemptions=2, params={"ordered": True}).clean


def test_pkvm_set_owner_without_tlbi_is_found_and_the_fixed_model_is_clean_within_one():
    r = explore("donate-vs-abort", preemptions=1, quirks=("set-owner-no-tlbi",))
    assert r.found is not None and "stale tlbs" in r.found.violation.message
    fixed = explore("donate-vs-abort", preemptions=1)
    assert fixed.clean


@emu.scenario(name="explore-copy-vs-check")
def copy_vs_check(m):
    """A copy finishes (a timer) and publishes; a checker reads the flag twice and must see
    the same value: only the timer firing between the two reads breaks it."""
    flag = m.shared("flag", 0)

    async def copier():
        await m.sleep(100)
        await flag.write(1)

    async def checker():
        first = await flag.read()
        if await flag.read() != first:
            m.fail("check-then-use", "the flag changed between two reads")

    m.spawn("copier", copier)
    m.spawn("checker", checker)


def test_firing_a_timer_is_a_choice(tmp_path):
    # Firing the copy's timer while the checker could go on is the one preemption it takes.
    for prune in (False, True):
        assert explore(copy_vs_check, preemptions=0, prune=prune).clean
        r = explore(copy_vs_check, preemptions=1, prune=prune)
        assert r.found.violation.kind == "check-then-use" and r.found_preemptions == 1
        assert "timer" in [name for _, name, _ in r.found.decisions]


@emu.scenario(name="explore-outcomes", params={"seen": ""})
def outcomes(m, seen):
    """Three actors on two words, some steps dependent, some not; every final state is
    appended to the list ``SEEN[seen]`` (a test's record; nothing fails)."""
    x, y = m.shared("x", 0), m.shared("y", 0)
    got = {}

    async def a():
        await x.write(1)
        got["a"] = await y.read()

    async def b():
        await y.write(1)
        got["b"] = await x.read()

    async def c():
        got["c"] = await x.read()
        await m.point("local work")
        await y.write(await y.read() + 10)

    for name, fn in (("a", a), ("b", b), ("c", c)):
        m.spawn(name, fn)
    m.final("record", lambda: SEEN[seen].append((sorted(got.items()), x.value, y.value)))


@emu.scenario(name="explore-locked-outcomes", params={"seen": ""})
def locked_outcomes(m, seen):
    """A mutex, a completion and a timer: a release must not be reordered past the arrival
    it unblocks (which decides whether a switch is free); final states go to ``SEEN``."""
    x, y = m.shared("x", 0), m.shared("y", 0)
    lock, done = m.mutex("lock"), m.completion("done")
    got = {}

    async def a():
        await lock.lock()
        await x.write(await x.read() + 1)
        lock.unlock()
        done.complete_all()

    async def b():
        await y.write(5)
        await lock.lock()
        await x.write(await x.read() * 2)
        lock.unlock()

    async def c():
        await done.wait_for_completion()
        first = await x.read()
        await m.sleep(10)
        got["c"] = (first, await y.read())

    for name, fn in (("a", a), ("b", b), ("c", c)):
        m.spawn(name, fn)
    m.final("record", lambda: SEEN[seen].append((sorted(got.items()), x.value, y.value)))


SEEN: dict[str, list] = {}


@pytest.mark.parametrize("sc", [outcomes, locked_outcomes], ids=lambda sc: sc.name)
@pytest.mark.parametrize("bound", [0, 1, 2])
def test_sleep_sets_keep_every_outcome_and_explore_fewer_schedules(sc, bound):
    SEEN.update(full=[], pruned=[])
    full = explore(sc, preemptions=bound, prune=False, params={"seen": "full"})
    pruned = explore(sc, preemptions=bound, params={"seen": "pruned"})
    assert full.clean and pruned.clean
    assert set(map(repr, SEEN["full"])) == set(map(repr, SEEN["pruned"]))
    assert pruned.schedules < full.schedules or bound == 0


def test_the_reduction_on_a_pkvm_scenario_keeps_the_verdict():
    full = explore("donate-vs-abort", preemptions=1, prune=False)
    pruned = explore("donate-vs-abort", preemptions=1)
    assert full.clean and pruned.clean
    assert full.schedules >= 5 * pruned.schedules  # 962 and 37 (none cut short)
    assert full.schedules > pruned.schedules + pruned.pruned


SMALLEST = {"svm": svm.SMALLEST, "nested": nested.SMALLEST, "pkvm": pkvm.SMALLEST}


@pytest.mark.parametrize("platform", sorted(SMALLEST))
def test_the_smallest_scenario_of_each_platform_finds_its_quirk_within_two(platform):
    name, params, quirk = SMALLEST[platform]
    r = explore(name, preemptions=2, params=params, quirks=(quirk,))
    assert r.found is not None and r.found.violation.fatal and not r.clean


def test_dpor_on_the_smallest_svm_scenario_keeps_the_verdict_with_far_fewer_schedules():
    name, params, _ = SMALLEST["svm"]
    reduced = explore(name, preemptions=2, params=params)
    full = explore(name, preemptions=2, params=params, prune=False)
    assert reduced.clean and full.clean
    assert full.schedules >= 5 * (reduced.schedules + reduced.pruned)  # 2,273 and 8


def test_dpor_exhausts_the_smallest_nested_scenario_without_preemptions():
    # (within 2 it is clean too: 8,135 schedules, in the README's table, too long for here)
    name, params, _ = SMALLEST["nested"]
    assert explore(name, preemptions=0, params=params).clean


def test_resuming_from_a_checkpoint_gives_the_same_total(tmp_path):
    whole = explore("lost-update", preemptions=2, params={"locked": True})
    path = tmp_path / "search.json"
    part = explore("lost-update", preemptions=2, params={"locked": True}, max_schedules=10,
                   checkpoint=path)
    assert not part.exhausted and part.schedules + part.pruned == 10
    saved = json.loads(path.read_text())
    assert saved["scenario"] == "lost-update" and saved["preemptions"] == 2 and saved["stack"]
    rest = explore("lost-update", preemptions=2, params={"locked": True}, checkpoint=path)
    assert rest.clean and rest.resumed == 10
    assert (rest.schedules, rest.pruned) == (whole.schedules, whole.pruned)
    again = explore("lost-update", preemptions=2, params={"locked": True}, checkpoint=path)
    assert again.clean and again.schedules == whole.schedules  # exhausted: nothing re-run
    with pytest.raises(EmuError, match="another search"):
        explore("lost-update", preemptions=1, params={"locked": True}, checkpoint=path)


def test_an_interrupt_saves_a_checkpoint_to_resume_from(tmp_path):
    whole = explore("lost-update", preemptions=1, params={"locked": True})
    path = tmp_path / "search.json"

    def ctrl_c(schedules, pruned):
        if schedules + pruned == 7:
            INTERRUPT.request(signal.SIGINT)

    try:
        part = explore("lost-update", preemptions=1, params={"locked": True},
                       checkpoint=path, progress=ctrl_c)
    finally:
        INTERRUPT.signum = None
    assert part.interrupted == signal.SIGINT and not part.exhausted
    assert part.schedules + part.pruned == 7
    rest = explore("lost-update", preemptions=1, params={"locked": True}, checkpoint=path)
    assert rest.clean and (rest.schedules, rest.pruned) == (whole.schedules, whole.pruned)


def test_a_violation_found_before_resuming_forbids_the_clean_verdict(tmp_path):
    path = tmp_path / "search.json"
    first = explore("lost-update", preemptions=1, checkpoint=path)
    assert first.found is not None
    for _ in range(100):  # each resumed search stops at the next violation
        rest = explore("lost-update", preemptions=1, checkpoint=path)
        if rest.exhausted:
            break
    assert rest.exhausted and rest.earlier and not rest.clean


def test_explore_command_finds_saves_and_replays(cli, tmp_path):
    out = tmp_path / "out"
    r = cli("explore", "lost-update", "--preemptions", "1", "--out", str(out))
    assert r.status == 1 and "FOUND with 1 preemption(s)" in r.out
    assert "space: the first schedule takes 9 decisions among 3 candidates" in r.out
    (replay,) = out.glob("*.replay.json")
    again = cli("replay", str(replay))
    assert again.status == 1 and "matched" in again.out and "an update was lost" in again.out
    clean = cli("explore", "lost-update", "--preemptions", "0", "--out", str(out))
    assert clean.status == 0 and "clean within 0 preemption(s)" in clean.out


def test_explore_command_gives_no_verdict_when_stopped_early(cli, tmp_path):
    path = tmp_path / "cp.json"
    r = cli("explore", "lost-update", "-p", "locked=true", "--preemptions", "2",
            "--max-schedules", "5", "--checkpoint", str(path), "--out", str(tmp_path))
    assert r.status == 0 and "clean within" not in r.out and "not exhausted" in r.out
    done = cli("explore", "lost-update", "-p", "locked=true", "--preemptions", "2",
               "--checkpoint", str(path), "--out", str(tmp_path))
    assert done.status == 0 and "clean within 2 preemption(s)" in done.out
