"""Running schedules: one (``run``), many (``hunt``), and the result objects.

A schedule is a pure function of (scenario, parameters, quirks, strategy, seed): the
scenario is built afresh on a new controller, and every schedule of a hunt runs inside one
``trio.run``. PCT needs k, the expected number of steps; it is measured by one calibration
schedule (random walk, seed 0) of the same scenario, parameters and quirks, so it too is a
function of those alone, and is stored in the replay file.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ..errors import EmuError, ReplayDivergence, ScenarioError
from . import coverage as covering
from .accesses import StepAccesses
from .controller import Controller
from .guided import Run, rebuilt
from .guided import search as make_search
from .interrupt import INTERRUPT, Interrupted
from .machine import Machine
from .parallel import Job, Pool, Workers, fork_pool, frozen_heap
from .parallel import check as check_workers
from .scenario import Scenario, resolve, resolve_release
from .strategies import RandomWalk, Replay, make_strategy
from .trace import Trace
from .violations import Stop, Violation

if TYPE_CHECKING:
    from .coverage import Coverage, HuntCoverage
    from .shrink import Shrunk

STRATEGIES = ("random", "pct", "guided", "portfolio")
MAX_DEPTH = 100
"""PCT's depth limit: its guarantee 1/(n*k^(d-1)) is vanishing long before this."""
MAX_STEPS = 1 << 40


@attrs.define
class RunResult:
    """One schedule: what it found, its trace, and how to replay it."""

    scenario: str
    params: dict[str, Any]
    quirks: tuple[str, ...]
    strategy: dict[str, Any]
    seed: int
    max_steps: int
    violations: list[Violation]
    trace: Trace
    steps: int
    virtual_time: int
    source: tuple[str, str] | None = None
    """The scenario file's absolute path and SHA-256, for a scenario loaded from a file."""
    release: str | None = None
    """The release the model ran as (``--kernel``); None: the model's default."""
    views: dict[str, str] = attrs.Factory(dict)
    """The model's views of its state at the end of the run (``Machine.view``), by name:
    filled by ``run`` and replays, and by a hunt for a schedule that found something."""
    accesses: list[StepAccesses] | None = None
    """What each step read and wrote (step ``i`` at index ``i - 1``; ``sim.accesses``),
    outside the trace and its hash: recorded by ``run``, replays and ``run_schedule(...,
    accesses=True)``, or for a strategy that wants them; None when not recorded (a hunt)."""
    coverage: Coverage | None = None
    """What the schedule covered (``sim.coverage``): only when asked for (``coverage``)."""

    @property
    def ok(self) -> bool:
        return not self.violations

    def view(self, name: str) -> str:
        """The view ``name``; EmuError, naming the views offered, if there is none."""
        if name not in self.views:
            close = difflib.get_close_matches(name, list(self.views), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise EmuError(f"scenario {self.scenario} offers no view {name!r} (offered: "
                           f"{', '.join(self.views) or 'none'}){hint}")
        return self.views[name]

    @property
    def violation(self) -> Violation | None:
        """The first fatal violation, else the first warning, else None."""
        fatal = [v for v in self.violations if v.fatal]
        return (fatal or self.violations or [None])[0]

    @property
    def decisions(self) -> list[tuple[int, str, str]]:
        names = self.trace.actors
        return [(step, names[actor], op) for step, actor, _, op, _ in self.trace.steps()]

    @property
    def trace_hash(self) -> str:
        return self.trace.hash


@attrs.define
class HuntResult:
    """Many schedules: the first violation found (if any) and the statistics."""

    scenario: str
    params: dict[str, Any]
    quirks: tuple[str, ...]
    strategy: dict[str, Any]
    seed: int
    schedules: int
    """How many schedules ran."""
    found: RunResult | None
    """The first schedule with a fatal violation; else the first with a warning."""
    violating: int
    """How many schedules found something (all of them only with ``keep_going``)."""
    mismatches: list[tuple[int, str, str]]
    """(seed, first hash, second hash) for each seed that did not repeat itself."""
    steps_total: int
    steps_max: int
    actors: int
    elapsed: float
    """Wall-clock seconds (statistics only; never feeds a decision)."""
    interrupted: int | None = None
    """The signal that ended the hunt early (SIGINT, SIGTERM), if one did."""
    release: str | None = None
    """The release the model ran as (``--kernel``); None: the model's default."""
    shrinking: bool = True
    """Whether ``shrunk`` shrinks ``found`` (``hunt(shrink=False)``: it stays None)."""
    search: list[str] = attrs.Factory(list)
    """What the search says at the end, in lines (``guided``): a portfolio's member by
    member (what each found first, at which schedule), the guided corpus; else empty."""
    coverage: HuntCoverage | None = None
    """What the hunt covered, item by item and goal by goal (``hunt(coverage=True)``)."""
    _shrunk: Shrunk | None = attrs.field(default=None, init=False, repr=False)

    @property
    def ok(self) -> bool:
        return self.found is None

    @property
    def shrunk(self) -> Shrunk | None:
        """``found`` shrunk (``shrink.shrink``: fewest preemptions, steps, actors), computed
        the first time it is asked for, so a hunt whose caller never looks pays nothing;
        None when nothing was found, the hunt was interrupted or told not to shrink."""
        if self._shrunk is None and self.shrinking and self.found is not None and \
                self.interrupted is None:
            from .shrink import shrink  # (shrink runs schedules: it imports this module)
            self._shrunk = shrink(self.found)
        return self._shrunk

    @property
    def decisions_per_second(self) -> float:
        return self.steps_total / self.elapsed if self.elapsed else 0.0


def prepare(scenario: str | Scenario, params: Mapping[str, Any] | None,
            quirks: Iterable[str], release: str | None = None
            ) -> tuple[Scenario, dict[str, Any], tuple[str, ...]]:
    """The scenario, its parameter values and quirks, checked (EmuError if they are bad).
    A ``release`` adds the quirks it had to ``quirks`` (quirks only add bugs)."""
    sc = resolve(scenario) if isinstance(scenario, str) else scenario
    values = sc.resolve_params(params)
    sc.check_size(values)
    chosen = sc.resolve_quirks(quirks)
    return sc, values, sc.resolve_quirks((*chosen, *resolve_release(sc, release)))


def step_budget(sc: Scenario, values: dict[str, Any], max_steps: int | None) -> int:
    """``max_steps`` if given (at least 1), else the scenario's budget for these values."""
    if max_steps is None:
        return sc.step_budget(values)
    if not 1 <= max_steps <= MAX_STEPS:
        raise EmuError(f"bad --max-steps {max_steps} (between 1 and {MAX_STEPS:,})")
    return max_steps


async def run_schedule(sc: Scenario, params: dict[str, Any], quirks: tuple[str, ...],
                       strategy: Any, seed: int, max_steps: int,
                       release: str | None = None, detail: bool = False,
                       views: bool = False, accesses: bool = False,
                       coverage: bool = False) -> RunResult:
    """Build the scenario on a fresh controller and run one schedule (inside trio.run).
    ``release`` is handed to the model as ``machine.release`` (an opaque name); ``detail``
    records where in the model each step is taken (slow: for explanations); ``views``
    takes the model's views at the end (always taken when the schedule found something);
    ``accesses`` records every step's accesses (``RunResult.accesses``); ``coverage``
    collects what the schedule covered (``RunResult.coverage``; it records accesses)."""
    INTERRUPT.check()
    ctl = Controller(strategy, max_steps=max_steps, record=accesses or coverage)
    ctl.detail = detail
    machine = Machine(ctl, params, quirks, tuple(sc.quirks), seed, release)
    if coverage:
        machine.coverage = covering.Recorder(True)
    try:
        sc.build(machine, **params)
    except EmuError:
        raise
    except Stop:  # the scenario found a violation while building (m.fail)
        ctl.actors.clear()
    except (Exception, SystemExit) as exc:
        raise ScenarioError(f"scenario {sc.name} failed to build: {type(exc).__name__}: {exc}") \
            from exc
    if not ctl.stopped:
        INTERRUPT.attach(ctl)
        covering.current = machine.coverage  # (model code without the machine reports here)
        try:
            await ctl.run()
        finally:
            INTERRUPT.detach()
            covering.current = covering.OFF
    if ctl.error is not None:
        raise ctl.error
    kept = accesses or getattr(strategy, "wants_accesses", False)
    return RunResult(sc.name, params, quirks, strategy.spec(), seed, max_steps,
                     ctl.violations, ctl.trace, ctl.step, ctl.now, sc.source, release,
                     _take_views(machine) if views or ctl.violations else {},
                     ctl.step_accesses if kept else None,
                     _coverage(machine, ctl) if coverage else None)


def _coverage(machine: Machine, ctl: Controller) -> Coverage:
    steps = [(actor, op) for _, actor, _, op, _ in ctl.trace.steps()]
    return covering.take(machine.coverage, steps, ctl.step_accesses)


def schedules_of(sc: Scenario, params: dict[str, Any], quirks: tuple[str, ...], max_steps: int,
                 release: str | None, **options: Any) -> Run:
    """A hunt's ``one(strategy, seed)``: one schedule of ``sc`` with these values and
    ``run_schedule``'s ``options``, in this process or a worker's (``parallel.Job``)."""

    async def one(strategy: Any, seed: int) -> RunResult:
        return await run_schedule(sc, params, quirks, strategy, seed, max_steps, release,
                                  **options)

    return one


def _take_views(machine: Machine) -> dict[str, str]:
    """Every view's text. A view that fails says so in its text: a broken view must not
    cost the run's result."""
    taken = {}
    for name, show in machine.views.items():
        try:
            taken[name] = show()
        except Exception as exc:
            taken[name] = f"(the view failed: {type(exc).__name__}: {exc})\n"
    return taken


async def _calibrate(sc: Scenario, params: dict[str, Any], quirks: tuple[str, ...],
                     max_steps: int, release: str | None = None) -> int:
    probe = await run_schedule(sc, params, quirks, RandomWalk(0), 0, max_steps, release)
    return probe.steps


def _strategy_spec(name: str, depth: int, timers: bool) -> dict[str, Any]:
    """The strategy's replay-file spec. ``timers``: firing a pending timer is one of its
    choices (the default; off, virtual time advances only when no actor can run, which
    prunes interleavings and is kept only to compare with)."""
    if name not in STRATEGIES:
        raise EmuError(f"unknown strategy {name!r} (known: {', '.join(STRATEGIES)})")
    if name in ("pct", "guided") and not 1 <= depth <= MAX_DEPTH:
        raise EmuError(f"bad PCT depth {depth} (between 1 and {MAX_DEPTH})")
    spec: dict[str, Any] = {"name": name}
    if name in ("pct", "guided"):
        spec["depth"] = depth
    return {**spec, "timers": True} if timers else spec


async def _complete_spec(spec: dict[str, Any], sc: Scenario, params: dict[str, Any],
                         quirks: tuple[str, ...], max_steps: int,
                         release: str | None = None) -> dict[str, Any]:
    if spec["name"] in ("pct", "guided", "portfolio") and "k" not in spec:
        return {**spec, "k": await _calibrate(sc, params, quirks, max_steps, release)}
    return spec


def run(scenario: str | Scenario, *, seed: int = 0, params: Mapping[str, Any] | None = None,
        quirks: Iterable[str] = (), strategy: str = "random", depth: int = 3,
        max_steps: int | None = None, release: str | None = None,
        timers: bool = True) -> RunResult:
    """Run one schedule of ``scenario`` (as ``release``, if the scenario models releases);
    the result carries the model's views (``RunResult.views``)."""
    sc, values, chosen = prepare(scenario, params, quirks, release)
    steps = step_budget(sc, values, max_steps)
    spec = _strategy_spec(strategy, depth, timers)

    async def main() -> RunResult:
        full = await _complete_spec(spec, sc, values, chosen, steps, release)
        return await run_schedule(sc, values, chosen, make_strategy(full, seed), seed, steps,
                                  release, views=True, accesses=True)

    return trio.run(main)


def run_decisions(scenario: str | Scenario, decisions: list[tuple[int, str, str]], *,
                  seed: int, params: Mapping[str, Any] | None, quirks: Iterable[str],
                  strategy: dict[str, Any], max_steps: int,
                  release: str | None = None, detail: bool = False) -> RunResult:
    """Re-run a recorded decision list; the result reports the original strategy."""
    sc, values, chosen = prepare(scenario, params, quirks, release)

    async def main() -> RunResult:
        result = await run_schedule(sc, values, chosen, Replay(decisions), seed, max_steps,
                                    release, detail, views=True, accesses=True)
        if result.steps < len(decisions):
            raise ReplayDivergence(f"the schedule ended after {result.steps} steps, but the "
                                   f"replay file records {len(decisions)}")
        return attrs.evolve(result, strategy=strategy)

    return trio.run(main)


def detailed(result: RunResult) -> RunResult:
    """``result`` re-run from its decisions with ``detail`` on: the same trace (and hash),
    plus the model function of every step, for an explanation."""
    return run_decisions(result.scenario, result.decisions, seed=result.seed,
                         params=result.params, quirks=result.quirks, strategy=result.strategy,
                         max_steps=result.max_steps, release=result.release, detail=True)


def hunt(scenario: str | Scenario, *, schedules: int = 100, seed: int = 0,
         params: Mapping[str, Any] | None = None, quirks: Iterable[str] = (),
         strategy: str = "random", depth: int = 3, max_steps: int | None = None,
         check_determinism: bool = False, keep_going: bool = False,
         progress: Callable[[int, RunResult], None] | None = None,
         on_finding: Callable[[RunResult], None] | None = None,
         release: str | None = None, timers: bool = True, shrink: bool = True,
         workers: int = 1, cluster: str | None = None, coverage: bool = False,
         hashes: bool = False) -> HuntResult:
    """Run schedules with seeds ``seed, seed+1, ...`` until one finds a fatal violation.

    A schedule with only a warning (lockdep's *possible* deadlock) is remembered and the
    hunt goes on looking for a manifest failure; it is reported if none turns up.
    ``check_determinism`` runs every seed twice and counts the trace hashes that differ;
    it implies ``keep_going``, so every requested seed is checked.

    ``on_finding`` is called the moment a schedule finds something worth keeping (the first
    warning, every fatal violation the hunt reports; with ``keep_going`` every violating
    schedule), before the next schedule runs, so a caller can save it at once. A stop
    requested through ``INTERRUPT`` (SIGINT, SIGTERM) ends the hunt after the schedule in
    flight, which is dropped; the result says ``interrupted``. ``release`` runs the model as
    that release (its quirks added to ``quirks``). ``shrink``: ``HuntResult.shrunk`` is
    the schedule reported, shrunk (when first asked for). ``workers`` > 1 runs the schedules
    in that many processes, ``cluster`` on the Dask cluster at that address, with the same
    result (``parallel``: ``on_finding`` is then called the moment a finding reaches the
    parent; a clean schedule's result then carries its trace's summary, whose hash is
    kept only with ``hashes`` or ``check_determinism``). ``coverage`` collects what the
    schedules covered (``HuntResult.coverage``, ``sim.coverage``); it costs (every step's
    accesses are recorded), so it is off unless asked for, and it never changes a schedule.
    """
    if schedules < 1:
        raise EmuError(f"bad number of schedules {schedules} (at least 1)")
    check_workers(workers, strategy, cluster)
    sc, values, chosen = prepare(scenario, params, quirks, release)
    steps = step_budget(sc, values, max_steps)
    spec = _strategy_spec(strategy, depth, timers)
    keep_going = keep_going or check_determinism

    one = schedules_of(sc, values, chosen, steps, release, coverage=coverage)

    pool = None
    if workers > 1 or cluster is not None:
        job = Job.of(sc, values, chosen, steps, release, coverage=coverage)
        if cluster is not None:
            from .cluster import connect  # (Dask is optional, and slow to import)
            where: Workers = connect(cluster)
        else:
            where = fork_pool(workers, one, job.token)
        pool = Pool(where, job, seed, schedules, keep_going, on_finding,
                    hashes or check_determinism)
        on_finding = None  # the pool hands each finding over the moment it arrives

    async def main() -> HuntResult:
        full = spec
        fatal: RunResult | None = None
        warning: RunResult | None = None
        mismatches: list[tuple[int, str, str]] = []
        total = longest = actors = ran = violating = 0
        interrupted: int | None = None
        searching: Any = None
        covered = covering.HuntCoverage(sc.name, seed) if coverage else None
        start = time.perf_counter()
        try:
            full = await _complete_spec(spec, sc, values, chosen, steps, release)
            searching = make_search(full, seed) if pool is None else pool.search(full, seed)
            for i in range(schedules):
                s = seed + i
                result = await searching.run(one, s)
                if check_determinism:
                    again = await one(rebuilt(result), result.seed)
                    if again.trace_hash != result.trace_hash:
                        mismatches.append((s, result.trace_hash, again.trace_hash))
                ran += 1
                total += result.steps
                longest = max(longest, result.steps)
                actors = max(actors, len(result.trace.actors))
                if covered is not None and result.coverage is not None:
                    covered.add(s, result.coverage)
                if progress is not None:
                    progress(ran, result)
                violating += bool(result.violations)
                is_fatal = any(v.fatal for v in result.violations)
                if result.violations and on_finding is not None and (
                        keep_going or is_fatal or warning is None):
                    on_finding(result)
                if is_fatal:
                    fatal = fatal or result
                    if not keep_going:
                        break
                elif result.violations and warning is None:
                    warning = result
                INTERRUPT.check()
        except Interrupted as stop:
            interrupted = stop.signum
        elapsed = time.perf_counter() - start
        return HuntResult(sc.name, values, chosen, full, seed, ran, fatal or warning, violating,
                          mismatches, total, longest, actors, elapsed, interrupted, release,
                          shrink, searching.summary() if searching is not None else [],
                          covered)

    if pool is not None:
        with pool:
            return trio.run(main)
    with frozen_heap():  # what exists before the hunt outlives it
        return trio.run(main)
