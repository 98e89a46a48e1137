"""Hunting in worker processes (``hunt(..., workers=N)``, ``emu hunt --workers N``).

**How seeds are handed out.** Before its own ``trio.run`` the hunt forks N workers (the fork
start method: the scenario, even one loaded from a file, and the hunt's ``one`` are
inherited, never pickled). Once the parent has completed the strategy's spec (PCT's k is
measured once, by the parent) it sends it to every worker, then hands each idle worker the
next chunk of consecutive seeds. A worker runs schedule ``s`` exactly as the serial hunt
does, ``search(spec, seed).run(one, s)``, so schedule ``s`` runs seed ``s`` whichever
process runs it. A worker sends its results back at the end of its chunk, and at once after
a schedule that found something.

**Why the result equals the serial one.** The parent's loop *is* the serial hunt's loop:
this pool is its search, and ``run(one, s)`` returns schedule ``s``'s result, waiting for it
if no worker has sent it yet (results that arrive early wait in the parent). So the loop
sees the same results in the same seed order, counts the same schedules and stops at the
same seed: the first finding reported is the lowest-seed one even when a worker finds a later
seed first. Once a fatal finding (or an error) at seed f is known, without ``keep_going``,
no seed beyond f is handed out and workers drop those they hold; the seeds below f still in
flight are waited for. ``--check-determinism`` re-runs each seed in the parent: a check
across processes.

**Findings** reach ``on_finding`` (the CLI writes them to disk) the moment they reach the
parent, if the serial hunt could report them given what is known: every one with
``keep_going``; else a fatal one below every known fatal one, a warning below every known
warning. That is every finding the serial hunt reports, plus at most a few real findings of
seeds beyond the reported one that arrived before it (they stay on disk).

**Stopping.** When the loop is done (a fatal finding, the last seed, an interrupt) the pool
kills its workers, which ignore SIGINT (a terminal's Ctrl-C reaches only the parent), and
reads what they had already sent, so a finding that reached the pipe is kept. An interrupt
(``INTERRUPT``) ends the parent's wait within ``POLL`` seconds with ``Interrupted``, as the
serial hunt ends its schedule in flight; an exception raised by schedule ``s`` is raised
when the loop reaches ``s``, as it is serially. Strategies that learn across schedules
(guided, portfolio) are refused: their schedule ``s`` depends on every earlier one.
"""

from __future__ import annotations

import gc
import multiprocessing
import pickle
import signal
import sys
import traceback
from multiprocessing.connection import Connection, wait
from types import TracebackType
from typing import TYPE_CHECKING, Any

import trio

from ..errors import EmuError
from .guided import Run
from .guided import search as make_search
from .interrupt import INTERRUPT

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.process import BaseProcess

    from .runner import RunResult

LEARNING = ("guided", "portfolio")
MAX_WORKERS = 256
"""Each worker is a whole process with its own copy of the model: far beyond this, a hunt
spends its memory and its time on workers, not schedules."""
CHUNK = 16
"""The most seeds a worker is handed at once (fewer near the end of the hunt)."""
POLL = 0.1
"""Seconds between the parent's looks at ``INTERRUPT`` while it waits for results."""
SIGNALS = {signal.SIGINT, signal.SIGTERM}


def check(workers: int, strategy: str) -> None:
    """EmuError if a hunt cannot run in ``workers`` processes."""
    if not 1 <= workers <= MAX_WORKERS:
        raise EmuError(f"bad number of workers {workers} (between 1 and {MAX_WORKERS})")
    if workers == 1:
        return
    if strategy in LEARNING:
        raise EmuError(f"--strategy {strategy} cannot run with --workers {workers}: it learns "
                       "from every earlier schedule, so its schedules cannot be split among "
                       "processes (use --workers 1)")
    if not sys.platform.startswith("linux"):
        raise EmuError(f"--workers needs the fork start method, which emu uses on Linux only "
                       f"(this is {sys.platform}): use --workers 1")


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

    def arrive(self, seed: int, got: Any) -> bool:
        """Keep schedule ``seed``'s result (or the exception it raised); whether the limit
        dropped: the serial hunt stops at ``seed``."""
        if seed >= self.limit:
            return False  # past a known fatal finding: the serial hunt never runs it
        self.results[seed] = got
        if isinstance(got, BaseException):
            return self._stop_at(seed)  # the serial hunt raises it there
        if not got.violations:
            return False
        fatal = any(v.fatal for v in got.violations)
        if not self.keep_going and not fatal:
            if self.warned is not None and self.warned < seed:
                return False  # a lower seed's warning is the one to report
            self.warned = seed
        if self.on_finding is not None:
            self.on_finding(got)
        return fatal and not self.keep_going and self._stop_at(seed)

    def take(self, seed: int) -> RunResult:
        """Schedule ``seed``'s result, once arrived (its exception raised)."""
        got = self.results.pop(seed)
        if isinstance(got, BaseException):
            raise got
        return got

    def _stop_at(self, seed: int) -> bool:
        self.limit = seed + 1
        for s in [s for s in self.results if s > seed]:
            del self.results[s]
        return True


class Pool:
    """N worker processes running the schedules of one hunt; the hunt's search."""

    def __init__(self, workers: int, one: Run, first: int, schedules: int, keep_going: bool,
                 on_finding: Callable[[RunResult], None] | None) -> None:
        self.arrivals = Arrivals(first + schedules, keep_going, on_finding)
        self.next = first
        """The next seed to hand out."""
        self.busy: dict[Connection, range] = {}
        self.conns: list[Connection] = []
        self.procs: list[BaseProcess] = []
        ctx = multiprocessing.get_context("fork")
        old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # until a worker sets its own
        gc.freeze()  # the workers' collector then never touches (so copies) the parent's heap
        try:
            for _ in range(workers):
                mine, theirs = ctx.Pipe()
                proc = ctx.Process(target=_serve, args=(theirs, [*self.conns, mine], one,
                                                        keep_going), daemon=True)
                proc.start()
                theirs.close()
                self.conns.append(mine)
                self.procs.append(proc)
        except BaseException:
            self.close(drain=False)
            raise
        finally:
            gc.unfreeze()
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(drain=kind is None)

    def search(self, spec: dict[str, Any], seed: int) -> Pool:
        """Start the workers on the completed ``spec`` of a hunt from ``seed``."""
        for conn in self.conns:
            conn.send((spec, seed))
        return self

    async def run(self, one: Run, seed: int) -> RunResult:
        """Schedule ``seed``'s result (``one`` is the workers' inherited copy)."""
        while seed not in self.arrivals.results:
            self._hand_out()
            if not self.busy:
                raise RuntimeError(f"seed {seed} was never handed out")
            ready = wait(list(self.busy), timeout=POLL)
            INTERRUPT.check()
            for conn in ready:
                self._receive(conn)
        return self.arrivals.take(seed)

    def summary(self) -> list[str]:
        return []

    def _hand_out(self) -> None:
        limit = self.arrivals.limit
        share = (limit - self.next) // (4 * len(self.conns))
        for conn in self.conns:
            if conn in self.busy or self.next >= limit:
                continue
            seeds = range(self.next, min(limit, self.next + max(1, min(CHUNK, share))))
            conn.send(("run", seeds.start, seeds.stop))
            self.busy[conn] = seeds
            self.next = seeds.stop

    def _receive(self, conn: Connection) -> None:
        try:
            results, done = conn.recv()
        except (EOFError, OSError):
            seeds = self.busy[conn]
            proc = self.procs[self.conns.index(conn)]
            proc.join(1)
            raise EmuError(f"a hunt worker (pid {proc.pid}) died running seeds {seeds.start}.."
                           f"{seeds.stop - 1} (exit code {proc.exitcode})") from None
        for seed, got in results:
            if self.arrivals.arrive(seed, got):
                for other in self.busy:  # seeds from the limit on are dropped
                    other.send(("limit", self.arrivals.limit))
        if done:
            del self.busy[conn]

    def close(self, drain: bool) -> None:
        """Kill the workers; with ``drain``, take in what they had sent (findings reported)."""
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self.busy.clear()
        for conn in self.conns:
            while drain and conn.poll():
                try:
                    results, _ = conn.recv()
                except (EOFError, OSError):
                    break
                for seed, got in results:
                    self.arrivals.arrive(seed, got)
            conn.close()


def _serve(conn: Connection, parents: list[Connection], one: Run, keep_going: bool) -> None:
    """A worker process: run the chunks of seeds the parent hands out until it goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    INTERRUPT.signum = None
    INTERRUPT.detach()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    for other in parents:  # the parent's ends: a worker must see EOF when the parent dies
        other.close()
    try:
        trio.run(_work, conn, one, keep_going)
    except (EOFError, OSError):
        pass  # the parent went away


async def _work(conn: Connection, one: Run, keep_going: bool) -> None:
    spec, first = conn.recv()
    searching = make_search(spec, first)
    limit: int | None = None
    while True:
        message = conn.recv()
        if message[0] == "limit":
            limit = message[1]
            continue
        _, start, stop = message
        batch: list[tuple[int, Any]] = []
        for seed in range(start, stop):
            while conn.poll():  # only a limit arrives while a chunk runs
                limit = conn.recv()[1]
            if limit is not None and seed >= limit:
                break
            try:
                result = await searching.run(one, seed)
            except Exception as exc:
                batch.append((seed, _portable(exc)))
                break  # the serial hunt stops at an error
            batch.append((seed, result))
            if result.violations:  # a finding goes at once
                conn.send((batch, False))
                batch = []
                if not keep_going and any(v.fatal for v in result.violations):
                    break
        conn.send((batch, True))


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
