"""emu against two Python peers, frontrun and simloom, on their own workload, in one run.

The workload (simloom's quickstart, scaled up): 3 asyncio tasks each do 10 increments of a
shared counter, ``value = state.value; await asyncio.sleep(0); state.value = value + 1``,
under an ``asyncio.Lock`` (locked: no failure exists) or without it (unlocked: the lost
update); the final check is ``value == 30``. emu's side is the engine demo ``lost-update``
with ``-p actors=3 -p increments=10 -p locked=true|false``: 3 workers, 10 increments each, a
mutex around each read-modify-write (``m.mutex``: lock, read point, write point, unlock).

Each tool runs in the way its documentation intends for asyncio code:

=================  ========================================================================
emu random         ``emu.hunt(strategy="random", shrink=False)``, seeds 0, 1, 2, ...
frontrun random    ``await frontrun.explore(..., strategy="random", max_attempts=, seed=)``
                   with its defaults (``timeout_per_run`` = ``deadlock_timeout`` = 5 s) and
                   ``total_timeout=`` the budget left; the row "dl 0.05 s" is the same with
                   ``deadlock_timeout=0.05``. It does not patch ``asyncio.Lock`` (its docs
                   say to prefer DPOR for lock-heavy code): a schedule that hands the turn
                   to a task blocked on the lock stalls until a timeout
frontrun DPOR      ``await frontrun.explore(..., max_executions=)`` (async DPOR, preemption
                   bound 2; it swaps ``asyncio.Lock`` for its cooperative lock)
simloom random     ``simloom.explore(main, runs=, scheduler="random", virtual_time=True,
                   seed_randomness=True)``: what ``@simloom.test(runs=N)`` runs
simloom syst. d2   ``simloom.explore_systematic(main, max_delays=2, max_schedules=)``: what
                   ``@simloom.test(systematic=True)`` runs
=================  ========================================================================

What one schedule is: emu, one seed run to the end (every decision among the live actors,
93 of them here); frontrun random, one attempt (a random round-robin list of await points);
frontrun DPOR, one execution of the search; simloom, one universe (one seed), or one
schedule of the delay-bounded odometer.

Measured for each row, in the same run: **locked**, the schedules run by one exploration of
``--schedules`` schedules (fewer if a bounded search runs out first, or ``--budget`` seconds
do) and its wall time, around the exploration calls only, after a warm-up (one unlocked
search); how many ran to the final check (the others timed out: inconclusive); every
failure reported, by kind (all false alarms: the locked workload has no failure). The
exploration keeps going after a failure (it calls again from the next seed where the tool
stops at its first). **unlocked**: schedules to the first lost update from each of
``--seeds`` seeds (seed i starts at 1000 i; a deterministic search runs once), and every
other failure reported before it (a false alarm). Ratio: schedules per second against
emu's in the same run (emu = 1.0x).

Every row runs in its own process (a peer's patches of asyncio stay out of the others):
emu and frontrun under this interpreter (``--frontrun-python`` to change it), simloom under
the one given by ``--simloom-python`` (simloom needs Python >= 3.12). A tool that is not
installed there, or a row that crashes or overruns, says "not measured: <why>". The peers
are not project dependencies; install them with::

    pip install frontrun==0.7.0                                    # Python >= 3.10
    python3.12 -m venv /tmp/sl312 && /tmp/sl312/bin/pip install simloom==0.5.0

Run: python benchmarks/peers.py [--schedules 500] [--seeds 100] [--budget 30] [--repeat 1]
     [--simloom-python /tmp/sl312/bin/python] [--frontrun-python PYTHON]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

ACTORS, INCREMENTS = 3, 10
LOST = "lost update"
"""The kind of the one true finding; every other failure reported is a false alarm."""


# -- the workload in asyncio (frontrun, simloom); runs in the probe process ----------------

class State:
    """The shared counter and its lock, made in setup (under the tool's patches)."""

    def __init__(self) -> None:
        self.value = 0
        self.lock = asyncio.Lock()


CHECKS = [0]
"""Final checks run in this process: the schedules that ran to the end."""


def holds(state: State) -> bool:
    CHECKS[0] += 1
    return state.value == ACTORS * INCREMENTS


async def _increment(state: State) -> None:
    value = state.value
    await asyncio.sleep(0)  # the scheduling point between the read and the write
    state.value = value + 1


async def locked_worker(state: State) -> None:
    for _ in range(INCREMENTS):
        async with state.lock:
            await _increment(state)


async def unlocked_worker(state: State) -> None:
    for _ in range(INCREMENTS):
        await _increment(state)


# -- one measurement (the probe process) ---------------------------------------------------

class Batch(NamedTuple):
    """A tool's search from one seed, stopped at its first failure or after ``limit``."""

    ran: int
    finding: str | None


Search = Callable[[bool, int, int, float], Batch]
"""(locked, seed, limit, seconds left) -> the batch."""


def drive(search: Search, locked: bool, seed: int, schedules: int, budget: float,
          until_lost: bool) -> tuple[int, float, Counter[str], int | None]:
    """Keep a stop-at-first search going from the next seed until ``schedules`` ran (or the
    lost update was found, with ``until_lost``, or ``budget`` seconds went): the schedules
    run, the wall seconds, the failures by kind, the schedule that found the lost update."""
    ran = 0
    findings: Counter[str] = Counter()
    start = time.perf_counter()
    while ran < schedules and time.perf_counter() - start < budget:
        batch = search(locked, seed + ran, schedules - ran,
                       budget - (time.perf_counter() - start))
        ran += batch.ran
        if batch.finding is not None:
            findings[batch.finding] += 1
            if until_lost and batch.finding == LOST:
                return ran, time.perf_counter() - start, findings, ran
        if batch.ran == 0:
            break
    return ran, time.perf_counter() - start, findings, None


def seeded(search: Search, args: argparse.Namespace) -> dict[str, Any]:
    """A seeded search: a warm-up, the locked exploration, the unlocked seeds."""
    drive(search, False, 10**6, 3, args.budget, True)
    CHECKS[0] = 0
    ran, seconds, alarms, _ = drive(search, True, 0, args.schedules, args.budget, False)
    completed = CHECKS[0]
    first: list[int | None] = []
    others: Counter[str] = Counter()
    start = time.perf_counter()
    for i in range(args.seeds):
        if time.perf_counter() - start > args.budget:
            break
        *_, found, at = drive(search, False, 1000 * i, args.schedules, args.budget, True)
        first.append(at)
        others.update({kind: n for kind, n in found.items() if kind != LOST})
    return {"ran": ran, "seconds": seconds, "completed": completed, "alarms": alarms,
            "first": first, "unlocked_alarms": others}


def deterministic(explore: Callable[[bool], Any], ran: Callable[[Any], int],
                  kinds: Callable[[Any], list[str]], first: Callable[[Any], int | None],
                  exhausted: Callable[[Any, float], bool]) -> dict[str, Any]:
    """A deterministic search: a warm-up, the locked search, the unlocked search once."""
    explore(False)
    CHECKS[0] = 0
    start = time.perf_counter()
    locked = explore(True)
    seconds = time.perf_counter() - start
    completed = CHECKS[0]
    unlocked = explore(False)
    found = kinds(unlocked)
    return {"ran": ran(locked), "seconds": seconds, "completed": completed,
            "exhausted": exhausted(locked, seconds), "alarms": Counter(kinds(locked)),
            "first": [first(unlocked) if found[:1] == [LOST] else None],
            "unlocked_alarms": Counter(found[:1]) - Counter([LOST])}


def _frontrun_kind(result: Any) -> str | None:
    if result.property_holds is not False:
        return None
    text = (result.explanation or "").strip()
    if text.startswith(("Invariant", "AssertionError")):
        return LOST
    # "Deadlock detected after 3 interleaving(s).": the kind, without the count
    return text.split(" after ")[0][:70] if text else "failure without explanation"


def _frontrun_random(deadlock_timeout: float | None) -> Callable[[argparse.Namespace], dict]:
    def probe(args: argparse.Namespace) -> dict[str, Any]:
        import frontrun

        options = {} if deadlock_timeout is None else {"deadlock_timeout": deadlock_timeout}

        def search(locked: bool, seed: int, limit: int, left: float) -> Batch:
            result = asyncio.run(frontrun.explore(
                setup=State, workers=locked_worker if locked else unlocked_worker,
                count=ACTORS, invariant=holds, strategy="random", max_attempts=limit,
                seed=seed, total_timeout=max(left, 0.001), **options))
            return Batch(result.num_explored, _frontrun_kind(result))

        return {"version": frontrun.__version__, **seeded(search, args)}
    return probe


def _frontrun_dpor(args: argparse.Namespace) -> dict[str, Any]:
    import frontrun

    def explore(locked: bool) -> Any:
        return asyncio.run(frontrun.explore(
            setup=State, workers=locked_worker if locked else unlocked_worker, count=ACTORS,
            invariant=holds, max_executions=args.schedules, stop_on_first=not locked,
            reproduce_on_failure=0, total_timeout=args.budget))

    def kinds(result: Any) -> list[str]:
        # every failing execution (stop_on_first=False); only the first has an explanation
        kind = _frontrun_kind(result) or "failure"
        return [kind] * max(len(result.failures), result.property_holds is False)

    def exhausted(result: Any, seconds: float) -> bool:
        # frontrun leaves ``exhausted`` unset for async: short of both limits is the end
        return result.num_explored < args.schedules and seconds < args.budget

    return {"version": frontrun.__version__, **deterministic(
        explore, lambda r: r.num_explored, kinds, lambda r: r.num_explored, exhausted)}


def _simloom_main(locked: bool) -> Callable[[], Any]:
    async def main() -> None:
        state = State()
        worker = locked_worker if locked else unlocked_worker
        await asyncio.gather(*(worker(state) for _ in range(ACTORS)))
        assert holds(state), f"counter is {state.value} after {ACTORS * INCREMENTS} increments"
    return main


def _simloom_kind(error: str) -> str:
    return LOST if error == "AssertionError" else error


SIMLOOM_RUN = {"virtual_time": True, "seed_randomness": True, "world": True}
"""What ``@simloom.test`` passes to each run."""


def _simloom_random(args: argparse.Namespace) -> dict[str, Any]:
    import simloom

    def search(locked: bool, seed: int, limit: int, left: float) -> Batch:
        found = simloom.explore(_simloom_main(locked), runs=limit, start_seed=seed,
                                scheduler="random", **SIMLOOM_RUN)
        return Batch(found.runs, _simloom_kind(found.failures[0].error)
                     if found.failures else None)

    return {"version": simloom.__version__, **seeded(search, args)}


def _simloom_systematic(args: argparse.Namespace) -> dict[str, Any]:
    import simloom

    def explore(locked: bool) -> Any:
        # as @simloom.test(systematic=True): no tape-seeded randomness
        return simloom.explore_systematic(
            _simloom_main(locked), max_delays=2, max_schedules=args.schedules,
            stop_on_failure=not locked, **{**SIMLOOM_RUN, "seed_randomness": False})

    return {"version": simloom.__version__, **deterministic(
        explore, lambda r: r.schedules, lambda r: [_simloom_kind(f.error) for f in r.failures],
        lambda r: r.first_failure_at, lambda r, _: r.exhaustive)}


def _emu_random(args: argparse.Namespace) -> dict[str, Any]:
    from importlib.metadata import version

    import emu

    def search(locked: bool, seed: int, limit: int, left: float) -> Batch:
        h = emu.hunt("lost-update", schedules=limit, seed=seed, strategy="random",
                     shrink=False, params={"actors": ACTORS, "increments": INCREMENTS,
                                           "locked": locked})
        CHECKS[0] += h.schedules  # each ran to its final check (or to a finding)
        if h.found is None:
            return Batch(h.schedules, None)
        v = h.found.violations[0]
        lost = v.kind == "invariant" and "update was lost" in v.message
        return Batch(h.schedules, LOST if lost else f"{v.kind}: {v.message[:60]}")

    return {"version": version("emu"), **seeded(search, args)}


@dataclass(frozen=True)
class Probe:
    tool: str
    mode: str
    run: Callable[[argparse.Namespace], dict[str, Any]]


PROBES = {f"{p.tool} {p.mode}": p for p in (
    Probe("emu", "random", _emu_random),
    Probe("frontrun", "random", _frontrun_random(None)),
    Probe("frontrun", "random dl 0.05 s", _frontrun_random(0.05)),
    Probe("frontrun", "DPOR", _frontrun_dpor),
    Probe("simloom", "random", _simloom_random),
    Probe("simloom", "systematic d2", _simloom_systematic),
)}


# -- the comparison (the caller's process) -------------------------------------------------

@dataclass
class Row:
    """One tool and mode: its locked exploration and its unlocked first findings."""

    tool: str
    mode: str
    asked: int
    """Schedules asked of the locked exploration (``--schedules``)."""
    version: str = ""
    ran: int = 0
    """Schedules the locked exploration ran."""
    seconds: float = 0.0
    completed: int = 0
    """Of them, those that ran to the final check (the rest timed out: inconclusive)."""
    exhausted: bool = False
    """The bounded search ran out before ``asked``."""
    alarms: dict[str, int] = field(default_factory=dict)
    """Failures reported on the locked workload, by kind (all false)."""
    first: list[int | None] = field(default_factory=list)
    """Schedules to the first lost update, per seed (None: not within ``asked``)."""
    unlocked_alarms: dict[str, int] = field(default_factory=dict)
    """Other failures reported on the unlocked workload before the lost update."""
    missing: str | None = None
    """Why the row was not measured."""

    @property
    def rate(self) -> float:
        return self.ran / self.seconds if self.seconds else 0.0


def measure(name: str, python: str | None, schedules: int, seeds: int, budget: float) -> Row:
    """Run one probe under ``python`` in its own process; a failure becomes ``missing``."""
    probe = PROBES[name]
    if python is None:
        return Row(probe.tool, probe.mode, schedules, missing="not measured: no interpreter "
                   "given (--simloom-python, a Python >= 3.12 with simloom)")
    command = [python, os.path.abspath(__file__), "--probe", name, "--schedules",
               str(schedules), "--seeds", str(seeds), "--budget", str(budget)]
    try:
        done = subprocess.run(command, capture_output=True, text=True,
                              timeout=3 * budget + 120, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Row(probe.tool, probe.mode, schedules, missing=f"not measured: {e}")
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        why = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return Row(probe.tool, probe.mode, schedules, missing=f"not measured: {why[:100]}")
    return Row(probe.tool, probe.mode, schedules, **json.loads(lines[-1]))


def compare(schedules: int = 500, simloom_python: str | None = None, *, seeds: int = 100,
            budget: float = 30.0, frontrun_python: str | None = None) -> list[Row]:
    """Every row of the comparison, measured now, one after the other."""
    where = {"emu": sys.executable, "frontrun": frontrun_python or sys.executable,
             "simloom": simloom_python}
    return [measure(name, where[p.tool], schedules, seeds, budget)
            for name, p in PROBES.items()]


def _first(row: Row) -> str:
    found = [n for n in row.first if n is not None]
    if not row.first:
        return "-"
    text = f"{statistics.median(found):g}" if found else "none"
    if len(row.first) > 1 and found:
        text += f" [{min(found)}-{max(found)}]"
    if len(row.first) > 1:
        text += f" of {len(row.first)} seeds"
    if 0 < len(found) < len(row.first):
        text += f", {len(row.first) - len(found)} none"
    return text


def _kinds(alarms: dict[str, int]) -> str:
    total = sum(alarms.values())
    return "0" if not total else f"{total} (" + "; ".join(
        f"{n}x {kind}" for kind, n in sorted(alarms.items(), key=lambda kv: -kv[1])) + ")"


def table(rows: list[Row]) -> str:
    """The comparison as text: schedules per second against emu's (emu = 1.0x), schedules
    completed, false alarms, schedules to the lost update; then the rows not measured."""
    emu = next((r for r in rows if r.tool == "emu" and r.missing is None), None)
    head = (f"{'tool':<33} {'locked ran':>10} {'s':>6} {'sched/s':>8} {'vs emu':>7} "
            f"{'complete':>8}  {'unlocked: to lost update':<30} false alarms")
    out = [head, "-" * len(head)]
    notes = []
    for r in rows:
        if r.missing is not None:
            notes.append(f"{r.tool} {r.mode}: {r.missing}")
            continue
        ratio = f"{r.rate / emu.rate:.3g}x" if emu and emu.rate else "-"
        ran = f"{r.ran}{'*' if r.exhausted else '+' if r.ran < r.asked else ''}"
        out.append(f"{f'{r.tool} {r.version} {r.mode}':<33} {ran:>10} {r.seconds:>6.2f} "
                   f"{r.rate:>8.1f} {ratio:>7} {r.completed:>8}  {_first(r):<30} "
                   f"locked {_kinds(r.alarms)}; unlocked {_kinds(r.unlocked_alarms)}")
    out.append("* the bounded search ran out (DPOR: preemption bound 2; systematic: 2 delays); "
               "+ cut by --budget. Unlocked: median [min-max].")
    return "\n".join(out + notes)


def spread(runs: list[list[Row]]) -> str:
    """Each row's schedules per second and ratio to emu, lowest to highest over the runs."""
    emus = [next((r.rate for r in rows if r.tool == "emu" and r.missing is None), 0.0)
            for rows in runs]
    out = [f"over {len(runs)} runs: sched/s and vs emu, lowest-highest"]
    for same in zip(*runs, strict=True):
        measured = [(r.rate, r.rate / emu) for r, emu in zip(same, emus, strict=True)
                    if r.missing is None and emu]
        if measured:
            rates, ratios = zip(*measured, strict=True)
            out.append(f"{same[0].tool + ' ' + same[0].mode:<27} {min(rates):>8.1f}-"
                       f"{max(rates):<8.1f} {min(ratios):.3g}x-{max(ratios):.3g}x")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schedules", type=int, default=500,
                    help="schedules of the locked exploration (and at most per unlocked seed)")
    ap.add_argument("--seeds", type=int, default=100, help="unlocked hunts per seeded tool")
    ap.add_argument("--budget", type=float, default=30.0,
                    help="seconds the locked exploration (and the unlocked seeds) may take")
    ap.add_argument("--simloom-python", help="a Python >= 3.12 with simloom installed")
    ap.add_argument("--frontrun-python", help="a Python with frontrun (default: this one)")
    ap.add_argument("--repeat", type=int, default=1, help="run the comparison this often")
    ap.add_argument("--probe", choices=sorted(PROBES), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        print(json.dumps(PROBES[args.probe].run(args)))
        return
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    runs = []
    for _ in range(args.repeat):
        runs.append(compare(args.schedules, args.simloom_python, seeds=args.seeds,
                            budget=args.budget, frontrun_python=args.frontrun_python))
        print(table(runs[-1]), flush=True)
    if args.repeat > 1:
        print(spread(runs))
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
