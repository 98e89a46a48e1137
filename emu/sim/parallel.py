"""Hunting in worker processes or on a cluster (``hunt(..., workers=N)``, ``cluster=ADDRESS``).

**One code path, two executors.** The hunt hands chunks of consecutive seeds to a
``concurrent.futures.Executor`` and reads back their results: a ``ProcessPoolExecutor`` of N
forked processes (``--workers N``), or a Dask cluster's executor (``--cluster ADDRESS``,
``cluster``). A chunk (``run_chunk``) runs schedule ``s`` exactly as the serial hunt does,
``search(spec, first).run(one, s)``, so schedule ``s`` runs seed ``s`` wherever it runs.
What a worker needs to build ``one`` is a ``Job``: a forked worker inherits the parent's own
(forked before the hunt's ``trio.run``, whose state a child must not inherit), a cluster
worker rebuilds it from the scenario's name (or file) and the hunt's parameters, once per
job. The strategy's spec is completed by the parent first (PCT's k is measured once) and
travels with every chunk.

**Why the result equals the serial one.** The parent's loop *is* the serial hunt's loop:
this pool is its search, and ``run(one, s)`` returns schedule ``s``'s result, waiting for it
if no worker has sent it yet (results that arrive early wait in the parent). So the loop
sees the same results in the same seed order, counts the same schedules and stops at the
same seed: the first finding reported is the lowest-seed one even when a worker finds a later
seed first. A chunk ends early at a schedule that found something, so that the finding
reaches the parent at once; the rest of its seeds are handed out again. Once a fatal finding
(or an error) at seed f is known, without ``keep_going``, no seed beyond f is handed out and
chunks not yet started are cancelled; seeds below f still in flight are waited for.
``--check-determinism`` re-runs each seed in the parent: a check across processes.

**Findings** reach ``on_finding`` (the CLI writes them to disk) the moment they reach the
parent, if the serial hunt could report them given what is known: every one with
``keep_going``; else a fatal one below every known fatal one, a warning below every known
warning. That is every finding the serial hunt reports, plus at most a few real findings of
seeds beyond the reported one that arrived before it (they stay on disk).

**Stopping.** When the loop is done (a fatal finding, the last seed, an interrupt) the pool
takes in the chunks already finished (a finding that reached the parent is kept), cancels
the rest and, for local workers, kills them: they ignore SIGINT (a terminal's Ctrl-C reaches
only the parent), and die with the parent (``PR_SET_PDEATHSIG``). An interrupt
(``INTERRUPT``) ends the parent's wait within ``POLL`` seconds with ``Interrupted``, as the
serial hunt ends its schedule in flight; an exception raised by schedule ``s`` is raised
when the loop reaches ``s``, as it is serially. Strategies that learn across schedules
(guided, portfolio) are refused: their schedule ``s`` depends on every earlier one.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import heapq
import importlib.metadata
import multiprocessing
import pickle
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from types import TracebackType
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ..errors import EmuError
from .guided import Run
from .guided import search as make_search
from .interrupt import INTERRUPT

if TYPE_CHECKING:
    from .runner import RunResult
    from .scenario import Scenario

LEARNING = ("guided", "portfolio")
MAX_WORKERS = 256
"""Each worker is a whole process with its own copy of the model: far beyond this, a hunt
spends its memory and its time on workers, not schedules."""
CHUNK = 16
"""The most seeds a chunk holds for local workers (fewer near the end of the hunt)."""
AHEAD = 2
"""Chunks in flight per worker, so that a worker finds its next chunk waiting."""
POLL = 0.1
"""Seconds between the parent's looks at ``INTERRUPT`` while it waits for results."""
SIGNALS = {signal.SIGINT, signal.SIGTERM}
PR_SET_PDEATHSIG = 1


def check(workers: int, strategy: str, cluster: str | None = None) -> None:
    """EmuError if a hunt cannot run in ``workers`` processes (or on ``cluster``)."""
    if not 1 <= workers <= MAX_WORKERS:
        raise EmuError(f"bad number of workers {workers} (between 1 and {MAX_WORKERS})")
    if cluster is not None and workers != 1:
        raise EmuError("--workers and --cluster do not go together: a cluster hunt uses "
                       "every worker thread of the cluster")
    where = f"--cluster {cluster}" if cluster is not None else f"--workers {workers}"
    if workers == 1 and cluster is None:
        return
    if strategy in LEARNING:
        raise EmuError(f"--strategy {strategy} cannot run with {where}: it learns from every "
                       "earlier schedule, so its schedules cannot be split among processes "
                       "(run it without --workers or --cluster)")
    if cluster is None and not sys.platform.startswith("linux"):
        raise EmuError(f"--workers needs the fork start method, which emu uses on Linux only "
                       f"(this is {sys.platform}): use --workers 1")


def emu_version() -> str:
    try:
        return importlib.metadata.version("emu")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@attrs.frozen
class Job:
    """What a worker needs to run one hunt's schedules: its scenario, by registered name or
    by file (``path`` and ``digest``), and everything ``run_schedule`` takes but the
    strategy and seed. ``token`` names it in a worker's cache (a digest of the rest).
    A forked worker runs the parent's own ``one``; both come from ``runner.schedules_of``
    with the same values."""

    name: str
    path: str | None
    digest: str | None
    params: dict[str, Any]
    quirks: tuple[str, ...]
    max_steps: int
    release: str | None
    options: dict[str, Any]
    """``run_schedule``'s other keyword arguments (what a schedule collects)."""
    version: str
    token: str = ""

    @classmethod
    def of(cls, sc: Scenario, params: dict[str, Any], quirks: tuple[str, ...],
           max_steps: int, release: str | None, **options: Any) -> Job:
        path, digest = sc.source if sc.source is not None else (None, None)
        job = cls(sc.name, path, digest, params, quirks, max_steps, release, options,
                  emu_version())
        token = hashlib.sha256(repr(attrs.astuple(job)).encode()).hexdigest()[:16]
        return attrs.evolve(job, token=token)

    def build(self) -> Run:
        """``one`` for this job, the scenario looked up where this process runs."""
        from .runner import schedules_of  # (the runner hunts through this module)
        from .scenario import resolve
        if self.version != emu_version():
            raise EmuError(f"this worker runs emu {emu_version()}, the hunt emu "
                           f"{self.version}: install the same emu on every host")
        if self.path is None:
            sc = resolve(self.name)
        else:  # by its absolute path: the worker's working directory may be another one
            sc = attrs.evolve(resolve(f"{self.path}:{self.name.rpartition(':')[2]}"),
                              name=self.name)
            if sc.source is None or sc.source[1] != self.digest:
                raise EmuError(f"the scenario file {self.path} differs on this worker from "
                               "the hunt's: every host needs the same file at the same path")
        return schedules_of(sc, self.params, self.quirks, self.max_steps, self.release,
                            **self.options)


_RUNS: dict[str, Run] = {}
"""A worker's ``one`` for each job it has run (forked workers: the parent's own)."""
_KEEP = 8
"""Jobs a long-lived (cluster) worker remembers."""


def run_chunk(job: Job, spec: dict[str, Any], first: int, start: int, stop: int,
              hashes: bool) -> list[tuple[int, Any]]:
    """In a worker: schedules ``start..stop-1`` of the hunt from ``first``, up to and
    including the first that finds something or raises (its exception as the result). A
    clean schedule's trace comes back as its summary (``hashes``: with its hash): the
    parent only counts it, and a trace costs more to send than to run."""
    one = _RUNS.get(job.token)
    if one is None:
        while len(_RUNS) >= _KEEP:
            del _RUNS[next(iter(_RUNS))]
        one = _RUNS[job.token] = job.build()
    return trio.run(_chunk, one, spec, first, start, stop, hashes)


async def _chunk(one: Run, spec: dict[str, Any], first: int, start: int, stop: int,
                 hashes: bool) -> list[tuple[int, Any]]:
    searching = make_search(spec, first)
    batch: list[tuple[int, Any]] = []
    for seed in range(start, stop):
        try:
            result = await searching.run(one, seed)
        except Exception as exc:
            batch.append((seed, _portable(exc)))
            break  # the serial hunt stops at an error
        if result.violations:
            batch.append((seed, result))
            break  # a finding goes back at once; the rest of the chunk is handed out again
        batch.append((seed, attrs.evolve(result, trace=result.trace.summary(hashes))))
    return batch


class Arrivals:
    """The results that reached the parent, kept for the loop until it asks for them, and
    the findings among them handed to ``on_finding`` as they arrive (the module docstring)."""

    def __init__(self, end: int, keep_going: bool,
                 on_finding: Callable[[RunResult], None] | None) -> None:
        self.keep_going = keep_going
        self.on_finding = on_finding
        self.limit = end
        """Seeds from here on are not needed (the end, or past a known fatal finding)."""
        self.warned: int | None = None
        """The lowest seed with a warning (only) that has arrived."""
        self.results: dict[int, Any] = {}

    def arrive(self, seed: int, got: Any) -> None:
        """Keep schedule ``seed``'s result (or the exception it raised)."""
        if seed >= self.limit:
            return  # past a known fatal finding: the serial hunt never runs it
        self.results[seed] = got
        if isinstance(got, BaseException):
            self._stop_at(seed)  # the serial hunt raises it there
            return
        if not got.violations:
            return
        fatal = any(v.fatal for v in got.violations)
        if not self.keep_going and not fatal:
            if self.warned is not None and self.warned < seed:
                return  # a lower seed's warning is the one to report
            self.warned = seed
        if self.on_finding is not None:
            self.on_finding(got)
        if fatal and not self.keep_going:
            self._stop_at(seed)

    def take(self, seed: int) -> RunResult:
        """Schedule ``seed``'s result, once arrived (its exception raised)."""
        got = self.results.pop(seed)
        if isinstance(got, BaseException):
            raise got
        return got

    def _stop_at(self, seed: int) -> None:
        self.limit = seed + 1
        for s in [s for s in self.results if s > seed]:
            del self.results[s]


@attrs.frozen
class Workers:
    """Where chunks run: an executor running ``slots`` chunks at once, how to let it go,
    and what is known of a worker that died (for the error)."""

    executor: Executor
    slots: int
    close: Callable[[], None]
    died: Callable[[], str] = str
    chunk: int = CHUNK
    """The most seeds a chunk holds: more where handing one out costs more (a cluster)."""


class Pool:
    """The hunt's search when its schedules run elsewhere: chunks of seeds handed to
    ``workers``."""

    def __init__(self, workers: Workers, job: Job, first: int, schedules: int,
                 keep_going: bool, on_finding: Callable[[RunResult], None] | None,
                 hashes: bool = False) -> None:
        self.workers, self.job, self.hashes = workers, job, hashes
        self.arrivals = Arrivals(first + schedules, keep_going, on_finding)
        self.next = first
        """The next seed never handed out."""
        self.again: list[tuple[int, int]] = []
        """Seed ranges handed out again (the rest of a chunk that ended early), a heap."""
        self.pending: dict[Future, range] = {}
        self.spec: dict[str, Any] = {}
        self.first = first

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(drain=kind is None)

    def search(self, spec: dict[str, Any], seed: int) -> Pool:
        """Start the hunt with the completed ``spec`` (from ``seed``, the pool's first)."""
        self.spec = spec
        return self

    async def run(self, one: Run, seed: int) -> RunResult:
        """Schedule ``seed``'s result (``one`` is run by the workers, as ``job``)."""
        while seed not in self.arrivals.results:
            self._hand_out()
            if not self.pending:
                raise RuntimeError(f"seed {seed} was never handed out")
            done, _ = wait(list(self.pending), timeout=POLL, return_when=FIRST_COMPLETED)
            INTERRUPT.check()
            for future in sorted(done, key=lambda f: self.pending[f].start):
                self._receive(future)
        return self.arrivals.take(seed)

    def summary(self) -> list[str]:
        return []

    def _hand_out(self) -> None:
        limit = self.arrivals.limit
        while len(self.pending) < AHEAD * self.workers.slots:
            if self.again and self.again[0][0] < limit:
                start, stop = heapq.heappop(self.again)
                seeds = range(start, min(stop, limit))
            elif self.next < limit:
                share = (limit - self.next) // (2 * AHEAD * self.workers.slots)
                size = max(1, min(self.workers.chunk, share))
                seeds = range(self.next, min(limit, self.next + size))
                self.next = seeds.stop
            else:
                return
            future = self.workers.executor.submit(run_chunk, self.job, self.spec, self.first,
                                          seeds.start, seeds.stop, self.hashes)
            self.pending[future] = seeds

    def _receive(self, future: Future) -> None:
        seeds = self.pending.pop(future)
        try:
            batch = future.result()
        except Exception as exc:  # the model's own errors come back as results
            raise EmuError(f"a hunt worker failed running seeds {seeds.start}.."
                           f"{seeds.stop - 1}{self.workers.died()}: {type(exc).__name__}: "
                           f"{exc}") from None
        for seed, got in batch:
            self.arrivals.arrive(seed, got)
        rest = batch[-1][0] + 1 if batch else seeds.start
        if rest < min(seeds.stop, self.arrivals.limit):
            heapq.heappush(self.again, (rest, seeds.stop))
        for other, held in list(self.pending.items()):  # seeds from the limit on: dropped
            if held.start >= self.arrivals.limit and other.cancel():
                del self.pending[other]

    def close(self, drain: bool) -> None:
        """Cancel what has not run and release the executor; with ``drain``, take in the
        chunks already finished first (their findings reported)."""
        for future in sorted(self.pending, key=lambda f: self.pending[f].start):
            if drain and future.done() and not future.cancelled() and \
                    future.exception() is None:
                for seed, got in future.result():
                    self.arrivals.arrive(seed, got)
            future.cancel()
        self.pending.clear()
        self.workers.close()


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Inside, the collector leaves alone what exists on entry (``gc.freeze``): a hunt
    need not scan the long-lived heap at every collection (5-10% of its time), and a
    forked worker never copies the parent's pages by touching them. A heap its caller
    froze already stays as it was."""
    frozen = gc.get_freeze_count() == 0
    if frozen:
        gc.freeze()
    try:
        yield
    finally:
        if frozen:
            gc.unfreeze()


def fork_pool(workers: int, one: Run, token: str) -> Workers:
    """``workers`` processes forked now, each inheriting ``one`` as job ``token``. Call it
    outside ``trio.run`` (a child must not inherit a running loop)."""
    ctx = multiprocessing.get_context("fork")
    old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # until a worker sets its own
    executor = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_adopt,
                                   initargs=(token, one))
    try:
        with frozen_heap():  # the workers' collector never touches (so copies) the heap
            executor.submit(int).result()  # forks every worker (fork: all at the first)
    except BaseException:
        _kill(executor)
        raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    procs = list(executor._processes.values())

    def died() -> str:  # (a broken pool ends every worker: wait for their exit codes)
        for proc in procs:
            proc.join(1)
        gone = [f"pid {p.pid}, exit code {p.exitcode}" for p in procs if p.exitcode is not None]
        return f" (a worker died: {'; '.join(gone)})" if gone else ""

    return Workers(executor, workers, lambda: _kill(executor), died)


def _adopt(token: str, one: Run) -> None:
    """A forked worker's start: the parent decides when it stops, and its death is ours."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    INTERRUPT.signum = None
    INTERRUPT.detach()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    _RUNS[token] = one


def _kill(executor: ProcessPoolExecutor) -> None:
    """Stop the workers now, chunks in flight included (``shutdown`` would wait for them)."""
    processes = list((executor._processes or {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        proc.terminate()
    for proc in processes:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()
    executor.shutdown(wait=True)


def _portable(exc: Exception) -> Exception:
    """``exc`` as it can cross to the parent, a model bug carrying the worker's traceback."""
    if not isinstance(exc, EmuError):
        exc.add_note("in a hunt worker:\n" + "".join(traceback.format_exception(exc)))
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        plain = RuntimeError(f"{type(exc).__name__}: {exc}")
        plain.__notes__ = getattr(exc, "__notes__", [])
        return plain
    return exc
