"""The ``emu`` command: list, run, hunt, explore, replay, study, worker.

Exit status: 0 clean, 1 violation found, 2 usage or input error (one line, no traceback),
3 a clean hunt under --require-coverage that never reached a declared goal,
128 + the signal's number when interrupted (130 for Ctrl-C, 143 for SIGTERM); a hunt's
findings are on disk before they are announced, so an interrupt loses none of them.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import click
from loguru import logger
from tqdm import tqdm

from . import __version__
from .errors import EmuError, Unsupported
from .kvm.nested_releases import matrix as nested_matrix
from .kvm.releases import matrix
from .pkvm.releases import matrix as pkvm_matrix
from .sim import replay as replay_file
from .sim.cluster import worker_command
from .sim.coverage import Report
from .sim.eventlog import HuntEvents, close_log, open_log
from .sim.explain import explained
from .sim.explore import ExploreResult, explore
from .sim.files import check_dir, check_file
from .sim.findings import FindingLog
from .sim.interrupt import Interrupted, handle_signals
from .sim.parallel import MAX_WORKERS
from .sim.parallel import check as check_workers
from .sim.perfetto import write_perfetto
from .sim.replay import MAX_SEED
from .sim.runner import MAX_DEPTH, HuntResult, RunResult, detailed, hunt, prepare, run
from .sim.scenario import builtin_scenarios, file_scenarios, suites
from .sim.strategies import pct_bound
from .sim.why import COUNTER, RUNS, why
from .study import SIZES_GB, STUDIES, esm_scaling, plot, releases_study, releases_table, table

CLEAN, VIOLATION, USAGE = 0, 1, 2
VERBOSE = {"on": False}


def _params(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise EmuError(f"bad -p {pair!r}: expected NAME=VALUE")
        out[name.strip()] = value.strip()
    return out


def _verdict(result: RunResult) -> str:
    v = result.violation
    if v is None:
        return "clean"
    return ("VIOLATION" if v.fatal else "WARNING") + f": {v.kind}: {v.message}"


def _show_found(result: RunResult, last: int) -> None:
    """Explain ``result``; its interleaving in kernel terms (``explain.explained``)."""
    click.echo(explained(result, last))


def _pct_line(strategy: dict[str, Any], n: int) -> str:
    d, k = strategy["depth"], strategy["k"]
    return (f"PCT depth {d}: per-run probability bound 1/(n*k^(d-1)) = 1/({n}*{k}^{d - 1}) "
            f"= {pct_bound(n, k, d)} (n={n} actors, k={k}: the calibration schedule's steps)")


DEFAULT_SCENARIO = "svm"
COVERAGE = 3
"""Exit status of a clean hunt (or search) under --require-coverage that left a declared goal
unreached."""


@attrs.frozen
class CoverageAsk:
    """What ``emu hunt`` was asked about coverage (``--coverage`` and the options that
    imply it)."""

    table: bool
    json: str | None
    plot: str | None
    require: bool

    @property
    def on(self) -> bool:
        return self.table or self.require or self.json is not None or self.plot is not None

    def check(self) -> None:
        """The output files can be written (before the first schedule runs)."""
        for path, what in ((self.json, "--coverage-json"), (self.plot, "--coverage-plot")):
            if path is not None:
                check_file(path, what)

    def report(self, done: list[HuntResult] | list[ExploreResult], status: int) -> int:
        """Print, save and judge the coverage of the hunts (or the search) ``done``; the
        exit status."""
        hunts = [h.coverage for h in done if h.coverage is not None]
        if not self.on or not hunts:
            return status
        report = Report(hunts)
        click.echo(report.table())
        if self.json is not None:
            click.echo(f"coverage JSON: {report.save_json(self.json)}")
        if self.plot is not None:
            click.echo(f"coverage plot: {report.plot(self.plot)}")
        unmet = report.unmet()
        if self.require and not any(h.goals for h in hunts):
            click.echo("--require-coverage: no scenario of this hunt declares a goal")
        if not self.require or not unmet:
            return status
        click.echo(f"coverage goals not reached ({len(unmet)}): " + "; ".join(
            f"{scenario}: {goal}" for scenario, goal in unmet)
            + " (--require-coverage: exit status 3 unless a violation was found)")
        return status if status != CLEAN else COVERAGE


def coverage_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The coverage options, handed to the command as one ``coverage`` (``CoverageAsk``)."""

    @functools.wraps(fn)
    def wrapped(*args: Any, coverage_table: bool, coverage_json: str | None,
                coverage_plot: str | None, require_coverage: bool, **kwargs: Any) -> Any:
        ask = CoverageAsk(coverage_table, coverage_json, coverage_plot, require_coverage)
        return fn(*args, coverage=ask, **kwargs)

    for option in reversed([
        click.option("--coverage", "coverage_table", is_flag=True,
                     help="Collect coverage (seed-000 table cells, return codes, nested and "
                          "pKVM transitions, conflicting access pairs, the scenarios' goals) "
                          "and print its table after the hunt; costs (accesses are recorded)."),
        click.option("--coverage-json", type=click.Path(dir_okay=False), default=None,
                     metavar="FILE", help="Save the coverage as JSON (implies --coverage)."),
        click.option("--coverage-plot", type=click.Path(dir_okay=False), default=None,
                     metavar="FILE.png", help="Draw the items covered over the schedules "
                                              "(implies --coverage)."),
        click.option("--require-coverage", is_flag=True,
                     help="Exit 3 if a goal a scenario declares was never reached (each "
                          "reported with its best partial progress); implies --coverage."),
    ]):
        wrapped = option(wrapped)
    return wrapped

scenario_options: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
    click.argument("scenario", default=DEFAULT_SCENARIO),
    click.option("-p", "params", multiple=True, metavar="NAME=VALUE",
                 help="Scenario parameter (repeatable)."),
    click.option("--quirk", "quirks", multiple=True, metavar="Q",
                 help="Switch a historic bug back on (repeatable)."),
    click.option("--kernel", "kernel", default=None, metavar="RELEASE",
                 help="Run the model as this kernel release: its historic bugs on (plus any "
                      "--quirk) and its release-keyed behaviour ('emu list' shows the "
                      "matrix). Default: the fixed model."),
    click.option("--strategy", default="random", show_default=True,
                 help="random, pct, guided (conflict-guided: reverses one observed conflicting "
                      "pair per schedule, the rest by PCT at --depth) or portfolio (random, "
                      "PCT d2, PCT d3, guided and bounded search at 0, 1, 2... preemptions "
                      "round robin; says which found what)."),
    click.option("--timer-choices/--no-timer-choices", "timers", default=True,
                 show_default=True,
                 help="Firing a pending timer (a copy finishing) is one of the strategy's "
                      "choices; --no-timer-choices advances virtual time only when no actor "
                      "can run, which prunes interleavings (kept to compare with)."),
    click.option("--depth", default=3, show_default=True, type=click.IntRange(1, MAX_DEPTH),
                 help="PCT bug depth d."),
    click.option("--seed", default=0, show_default=True, type=click.IntRange(0, MAX_SEED - 1),
                 help="Seed (first seed of a hunt)."),
    click.option("--max-steps", type=click.IntRange(min=1), default=None,
                 help="Step budget per schedule (default: the scenario's, which grows with "
                      "its parameters)."),
]
timeline_option = click.option("--timeline", default=30, show_default=True,
                               type=click.IntRange(min=0),
                               help="Steps of the interleaving shown (0: none).")
view_option = click.option("--view", "views", multiple=True, metavar="NAME",
                           help="Show the model's view NAME of its state at the end of the "
                                "run (repeatable; nested scenarios: radix, rmap).")


def _show_views(result: RunResult, names: tuple[str, ...]) -> None:
    """Print the views ``names`` of ``result`` (after its verdict, so a bad name never hides
    the run's result); without names, say which views there are."""
    if not names:
        if result.views:
            click.echo(f"views: {', '.join(result.views)} (--view NAME shows one)")
        return
    for name in [n for n in names if n in result.views]:
        click.echo(click.style(f"view {name}:", bold=True))
        click.echo(result.views[name], nl=False)
    for name in names:
        result.view(name)  # an unknown name: EmuError naming the views offered


def with_scenario_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(scenario_options):
        fn = option(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="emu")
@click.option("-v", "--verbose", is_flag=True, help="Log every schedule.")
def cli(verbose: bool) -> None:
    """emu: hunt races in hypervisor memory management."""
    VERBOSE["on"] = verbose
    logger.remove()
    logger.add(sys.stderr, level="DEBUG" if verbose else "WARNING",
               format="<level>{level: <7}</level> {message}")


@cli.command("list")
@click.argument("path", required=False, metavar="[FILE.py]")
def list_cmd(path: str | None) -> int:
    """List the suites, scenarios (parameters, quirks) and what each quirk is; with FILE.py,
    the scenarios that file defines (run them as FILE.py:function)."""
    described: dict[str, str] = {}
    if path is None:
        for suite, (text, names) in suites().items():
            click.echo(click.style(f"suite {suite}", bold=True) + f": {text}: {', '.join(names)}")
        listed = builtin_scenarios()
    else:
        if not path.endswith(".py"):
            raise EmuError(f"emu list takes a scenario file ending in .py, not {path!r}")
        listed = file_scenarios(Path(path))
        if not listed:
            raise EmuError(f"{path} defines no scenario (a @scenario object, or a function "
                           "whose first parameter is the machine m)")
    for name, sc in listed.items():
        summary = " ".join(sc.description.split("\n\n")[0].split())
        click.echo(("" if path else "\n") + click.style(name, bold=True) + f": {summary}")
        for pname, p in sc.params.items():
            default = str(p.default).lower() if isinstance(p.default, bool) else p.default
            choices = f" (one of: {', '.join(map(str, p.choices))})" if p.choices else ""
            if p.maximum is not None:
                choices = f" [{p.minimum if p.minimum is not None else ''}..{p.maximum}]"
            click.echo(f"    {'-p ' + pname + '=' + str(default):<28} {p.help}{choices}")
        if sc.quirks:
            click.echo(f"    --quirk {', '.join(sc.quirks)}")
            described.update(sc.quirks)
    if path is not None:
        for qname, text in described.items():
            click.echo(f"  quirk {qname}: {text}")
        return CLEAN
    click.echo("\n" + click.style("quirks", bold=True))
    for qname, text in described.items():
        click.echo(f"  {qname}: {text}")
    for suite, release_matrix in (("svm", matrix), ("nested", nested_matrix),
                                  ("pkvm", pkvm_matrix)):
        click.echo("\n" + click.style(f"kernel releases (--kernel RELEASE; {suite} scenarios)",
                                      bold=True))
        click.echo(release_matrix())
    return CLEAN


@cli.command("run")
@with_scenario_options
@click.option("--trace", "trace_path", type=click.Path(dir_okay=False),
              help="Write the Perfetto trace JSON here.")
@timeline_option
@view_option
def run_cmd(scenario: str, params: tuple[str, ...], quirks: tuple[str, ...], kernel: str | None,
            strategy: str, timers: bool, depth: int, seed: int, max_steps: int | None,
            trace_path: str | None, timeline: int, views: tuple[str, ...]) -> int:
    """Run one schedule of SCENARIO and explain what it found; --view shows the model's
    state at the end (the nested scenarios' debugfs radix file, for one)."""
    if scenario in suites():
        raise EmuError(f"{scenario!r} is a suite: 'emu run' takes one scenario "
                       f"({', '.join(suites()[scenario][1])})")
    if trace_path is not None:
        check_file(trace_path, "--trace")
    result = run(scenario, seed=seed, params=_params(params), quirks=quirks, strategy=strategy,
                 depth=depth, max_steps=max_steps, release=kernel, timers=timers)
    if kernel is not None:
        click.echo(f"kernel {kernel}: quirks {', '.join(result.quirks) or 'none'}")
    click.echo(f"{result.scenario} seed {seed} ({result.strategy['name']}): {result.steps} "
               f"steps, trace hash {result.trace_hash}: {_verdict(result)}")
    if result.strategy["name"] == "pct":
        click.echo(_pct_line(result.strategy, len(result.trace.actors)))
    if trace_path is not None:
        click.echo(f"trace: {write_perfetto(result.trace, trace_path, result.scenario)}")
    if not result.ok:
        _show_found(result, timeline)
    _show_views(result, views)
    return VIOLATION if result.violations else CLEAN


@cli.command("hunt")
@with_scenario_options
@click.option("--schedules", default=1000, show_default=True, type=click.IntRange(min=1),
              help="How many schedules.")
@click.option("--out", default="emu-out", show_default=True, type=click.Path(file_okay=False),
              help="Where findings go: replay files, traces and the findings.jsonl index.")
@click.option("--check-determinism", is_flag=True,
              help="Run every seed twice and compare trace hashes (implies --keep-going).")
@click.option("--keep-going", is_flag=True,
              help="Do not stop at the first violation: save and print each one as found.")
@click.option("--shrink/--no-shrink", "shrink", default=True, show_default=True,
              help="Shrink the violation reported (fewest preemptions, then steps, then "
                   "actors) and save it as shrunk/*.shrunk.replay.json in --out.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, MAX_WORKERS),
              help="Run the schedules in N processes (Linux): the same schedules and "
                   "result as one worker; not with guided or portfolio, which learn across "
                   "schedules.")
@click.option("--cluster", default=None, metavar="ADDRESS",
              help="Run the schedules on the Dask cluster whose scheduler is at ADDRESS "
                   "(tcp://host:8786; workers join with 'emu worker ADDRESS'): the same "
                   "schedules and result as one worker. Needs emu[cluster].")
@click.option("--log-json", "log_json", type=click.Path(dir_okay=False), default=None,
              metavar="FILE", help="Append a JSON event log: a line every 100 schedules "
                                   "(done, findings, rate) and one per finding.")
@coverage_options
@timeline_option
def hunt_cmd(scenario: str, params: tuple[str, ...], quirks: tuple[str, ...],
             kernel: str | None, strategy: str, timers: bool, depth: int, seed: int,
             max_steps: int | None, schedules: int, out: str, check_determinism: bool,
             keep_going: bool, shrink: bool, workers: int, cluster: str | None,
             log_json: str | None, coverage: CoverageAsk,
             timeline: int) -> int:
    """Run up to N schedules of SCENARIO, stopping at the first violation. SCENARIO may be
    a suite (svm, engine: each of its scenarios in turn); the default is the svm suite.
    Every finding is written to --out the moment it is found. Ctrl-C or SIGTERM stops the
    hunt after the schedule in flight (exit 130 or 143); a second one stops it at once."""
    names = suites().get(scenario, ("", [scenario]))[1]
    for name in names:  # every scenario's options are checked before the first one runs
        prepare(name, _params(params), quirks, kernel)
    check_workers(workers, strategy, cluster)
    log = FindingLog(out)
    coverage.check()
    json_log = open_log(check_file(log_json, "--log-json")) if log_json is not None else None
    status = CLEAN
    done: list[HuntResult] = []
    try:
        for name in names:
            try:
                found = _hunt_one(name, log, params=_params(params), quirks=quirks,
                                  strategy=strategy, depth=depth, seed=seed,
                                  max_steps=max_steps, schedules=schedules,
                                  check_determinism=check_determinism, keep_going=keep_going,
                                  release=kernel, timers=timers, shrink=shrink, workers=workers,
                                  cluster=cluster, coverage=coverage.on,
                                  hashes=VERBOSE["on"])
            except Unsupported as why:
                if len(names) == 1:
                    raise
                click.echo(f"skipped {name}: {why}")
                continue
            done.append(found)
            _hunt_report(found, log, timeline, check_determinism)
            if found.mismatches or found.found is not None:
                status = VIOLATION
            if found.interrupted is not None:
                return _interrupted(found.interrupted, done, log)
    except KeyboardInterrupt:  # a second signal: stop at once
        return _interrupted(signal.SIGINT, done, log)
    finally:
        if json_log is not None:
            close_log(json_log)
    return coverage.report(done, status)


def _hunt_one(name: str, log: FindingLog, *, schedules: int, **options: Any) -> HuntResult:
    events = HuntEvents(name)
    with tqdm(total=schedules, unit="sched", file=sys.stderr, disable=None, leave=False,
              desc=name) as bar:
        def progress(done: int, result: RunResult) -> None:
            bar.update(1)
            events.schedule(done)
            logger.opt(lazy=True).debug(  # (lazy: hashing every trace costs the parent)
                "seed {}: {} steps, hash {}, {}", lambda: result.seed, lambda: result.steps,
                lambda: result.trace_hash, lambda: _verdict(result))

        def on_finding(result: RunResult) -> None:
            saved = log.save(result)  # on disk before it is announced
            events.finding(result, saved)
            tqdm.write(f"finding: {result.scenario} seed {result.seed}: {_verdict(result)} "
                       f"(saved {saved.replay})", file=sys.stdout)

        found = hunt(name, schedules=schedules, progress=progress, on_finding=on_finding,
                     **options)
    events.batch(found.schedules, final=True)
    return found


def _interrupted(signum: int, done: list[HuntResult], log: FindingLog) -> int:
    ran = sum(h.schedules for h in done)
    what = (f"of {done[0].scenario}" if len(done) == 1 else f"across {len(done)} scenarios")
    where = (f"all saved in {log.out}/ (index {log.index})" if log.saved
             else "nothing was found")
    resume = ""
    if done and done[-1].interrupted is not None:
        h = done[-1]
        resume = (f" To go on where it stopped: emu hunt {h.scenario} --seed "
                  f"{h.seed + h.schedules} (plus the same options).")
    click.echo(f"interrupted by {signal.Signals(signum).name}: {ran} schedules {what} ran, "
               f"{len(log.saved)} finding(s), {where}.{resume}")
    return 128 + signum


def _hunt_report(h: HuntResult, log: FindingLog, timeline: int, checked: bool) -> None:
    last = h.seed + h.schedules - 1
    as_release = f", kernel {h.release}" if h.release is not None else ""
    click.echo(f"hunt {h.scenario} ({h.strategy['name']}{as_release}): {h.schedules} "
               f"schedules, seeds {h.seed}..{last}; steps max {h.steps_max}, total "
               f"{h.steps_total}; "
               f"{h.decisions_per_second:,.0f} decisions/s")
    if h.strategy["name"] == "pct" and "k" in h.strategy:
        click.echo(_pct_line(h.strategy, h.actors))
    for line in h.search:
        click.echo(line)
    if checked:
        click.echo(f"determinism: every seed run twice, {len(h.mismatches)} mismatches")
        for s, a, b in h.mismatches:
            click.echo(f"  seed {s}: trace hash {a} then {b}")
    if h.found is None:
        click.echo("no violation found")
        return
    if h.violating > 1:
        which = "the first fatal one" if h.found.violation.fatal else "the first"
        click.echo(f"violations in {h.violating} of {h.schedules} schedules; {which}:")
    r = h.found
    saved = log.get(r) or log.save(r)
    click.echo(f"FOUND in seed {r.seed}:")
    _show_found(r, timeline)
    click.echo(f"replay file: {saved.replay}\ntrace:       {saved.trace} (open in "
               f"ui.perfetto.dev)\nall findings: {log.index}\n"
               f"replay with: emu replay {saved.replay} --explain")
    shrunk = h.shrunk
    if shrunk is not None:
        click.echo(shrunk.line())
    if shrunk is not None and not shrunk.note:
        # a directory of its own: out/*.replay.json stay the originals, one per finding
        name = saved.replay.name.replace(".replay.json", ".shrunk.replay.json")
        (saved.replay.parent / "shrunk").mkdir(exist_ok=True)
        path = replay_file.save(saved.replay.parent / "shrunk" / name, shrunk.result,
                                shrunk.record())
        click.echo(f"shrunk replay file: {path}")


@cli.command("explore")
@click.argument("scenario")
@click.option("--preemptions", "bound", required=True, type=click.IntRange(min=0), metavar="K",
              help="Explore every schedule with at most K preemptions.")
@click.option("-p", "params", multiple=True, metavar="NAME=VALUE",
              help="Scenario parameter (repeatable).")
@click.option("--quirk", "quirks", multiple=True, metavar="Q",
              help="Switch a historic bug back on (repeatable).")
@click.option("--kernel", default=None, metavar="RELEASE",
              help="Run the model as this kernel release (see 'emu list').")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, MAX_SEED - 1),
              help="Seed of the scenario's own data choices (the same in every schedule).")
@click.option("--max-steps", type=click.IntRange(min=1), default=None,
              help="Step budget per schedule (default: the scenario's).")
@click.option("--prune/--no-prune", default=True, show_default=True,
              help="Partial-order reduction (source-DPOR and sleep sets): skip schedules "
                   "that only reorder independent steps.")
@click.option("--max-schedules", type=click.IntRange(min=1), default=None,
              help="Stop after N runs (those cut short as redundant included); no verdict.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Resume from this file if it exists; keep it up to date (every 2,000 "
                   "runs, and when the search stops early).")
@click.option("--out", default="emu-out", show_default=True, type=click.Path(file_okay=False),
              help="Where a finding goes: its replay file, trace and findings.jsonl.")
@coverage_options
@timeline_option
def explore_cmd(scenario: str, bound: int, params: tuple[str, ...], quirks: tuple[str, ...],
                kernel: str | None, seed: int, max_steps: int | None, prune: bool,
                max_schedules: int | None, checkpoint: str | None, out: str,
                coverage: CoverageAsk, timeline: int) -> int:
    """Explore every schedule of SCENARIO with at most K preemptions (a preemption switches
    away from an actor that could go on; blocking, finishing and yielding switches are
    free; firing a timer is a choice like an actor's step), depth first, until a violation
    or the end of the space: only then is it "clean within K preemptions". Ctrl-C stops it
    (with --checkpoint, resumable)."""
    if checkpoint is not None:
        check_file(checkpoint, "--checkpoint")
    coverage.check()
    log = FindingLog(out)
    with tqdm(unit="sched", file=sys.stderr, disable=None, leave=False, desc=scenario) as bar:
        def estimated(n: int, actors: int, size: int) -> None:
            tqdm.write(_space_line(n, actors, bound, size), file=sys.stdout)

        def on_finding(result: RunResult) -> None:
            saved = log.save(result)  # on disk before it is announced
            tqdm.write(f"finding: {_verdict(result)} (saved {saved.replay})", file=sys.stdout)

        e = explore(scenario, preemptions=bound, params=_params(params), quirks=quirks,
                    release=kernel, max_steps=max_steps, prune=prune, seed=seed,
                    max_schedules=max_schedules, checkpoint=checkpoint,
                    on_estimate=estimated, on_finding=on_finding,
                    progress=lambda done, cut: bar.update(1), coverage=coverage.on)
    return coverage.report([e], _explore_report(e, log, timeline, checkpoint))


def _space_line(n: int, actors: int, bound: int, size: int) -> str:
    return (f"space: the first schedule takes {n} decisions among {actors} candidates: at "
            f"most ~{size:,} schedules within {bound} preemption(s) (Musuvathi-Qadeer bound; "
            "exceeded when other schedules are longer or actors yield)")


def _explore_report(e: ExploreResult, log: FindingLog, timeline: int,
                    checkpoint: str | None) -> int:
    resumed = ""
    if e.resumed:
        click.echo(_space_line(e.first_decisions, e.candidates, e.preemptions, e.estimate))
        resumed = f", {e.resumed:,} of those runs before resuming"
    click.echo(f"explore {e.scenario} (at most {e.preemptions} preemption(s), "
               f"{'DPOR' if e.prune else 'no reduction'}): {e.schedules:,} schedules explored, "
               f"{e.pruned:,} cut short as redundant{resumed}; {e.elapsed:.2f} s")
    for text in e.earlier:
        click.echo(f"found before resuming: {text}")
    if e.found is not None:
        r = e.found
        saved = log.get(r) or log.save(r)
        click.echo(f"FOUND with {e.found_preemptions} preemption(s):")
        _show_found(r, timeline)
        click.echo(f"replay file: {saved.replay}\nreplay with: emu replay {saved.replay} "
                   "--explain")
    if e.exhausted:
        click.echo(f"clean within {e.preemptions} preemption(s): the space is exhausted"
                   if e.clean else "the space is exhausted")
    else:
        why = (f"interrupted by {signal.Signals(e.interrupted).name}" if e.interrupted
               else "stopped at the first violation" if e.found is not None and
               e.found.violation.fatal else "stopped at --max-schedules")
        resume = (f"; resume with --checkpoint {checkpoint}" if checkpoint
                  else "; --checkpoint FILE makes a search resumable")
        click.echo(f"not exhausted ({why}): no verdict on the rest of the space{resume}")
    if e.interrupted is not None:
        return 128 + e.interrupted
    return VIOLATION if e.found is not None or e.earlier else CLEAN


@cli.command("replay")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--trace", "trace_path", type=click.Path(dir_okay=False),
              help="Write the Perfetto trace JSON here.")
@click.option("--explain", "show", is_flag=True, help="Explain the violation step by step.")
@click.option("--why", "why_", is_flag=True,
              help="Explain, then: the chance the violation still happens after each prefix "
                   "of the schedule (random continuations), the step it becomes inevitable, "
                   "and the nearest passing schedule (one conflicting pair reversed); the "
                   "curve is a counter track of --trace.")
@click.option("--why-runs", default=RUNS, show_default=True, type=click.IntRange(min=1),
              help="--why: random continuations per prefix.")
@click.option("--accept-edits", is_flag=True,
              help="Replay a file that was edited after emu wrote it, as it now reads.")
@click.option("--strict/--tolerant", "strict", default=True, show_default=True,
              help="--strict stops at the first decision that no longer fits (naming it and "
                   "what could run instead); --tolerant realigns the decisions by (actor, "
                   "operation, occurrence) after a model change, then goes on with a random "
                   "walk seeded by the file's seed, and says whether the violation recurs.")
@timeline_option
@view_option
def replay_cmd(file: str, trace_path: str | None, show: bool, why_: bool, why_runs: int,
               accept_edits: bool, strict: bool, timeline: int, views: tuple[str, ...]) -> int:
    """Re-run a replay FILE and check that the trace hash matches (--tolerant: that the
    violation recurs)."""
    if trace_path is not None:
        check_file(trace_path, "--trace")
    data = replay_file.load(file, accept_edits=accept_edits)
    spec, note = replay_file.scenario_spec(data, file)
    if note:
        click.echo(note)
    show = show or why_
    rep = replay_file.replay(data, spec, detail=show and timeline > 0, tolerant=not strict)
    r = rep.result
    click.echo(f"replay {r.scenario} seed {r.seed} ({r.strategy['name']}): {r.steps} steps: "
               f"{_verdict(r)}")
    if rep.tolerant is not None:
        recurs = "the violation recurs" if rep.reproduced else "the violation does NOT recur"
        click.echo(f"tolerant: {rep.tolerant.summary()}; {recurs}")
    if show:
        _show_found(r, timeline)
    counters = None
    if why_:
        answer = why(r if r.accesses is not None else detailed(r), runs=why_runs)
        click.echo("\n" + answer.report())
        counters = {COUNTER: answer.counter()}
    if trace_path is not None:
        click.echo(f"trace: {write_perfetto(r.trace, trace_path, r.scenario, counters)}")
    if rep.matched:
        click.echo(f"trace hash {r.trace_hash}: matched")
    elif rep.tolerant is not None:
        click.echo(f"trace hash {r.trace_hash} (the file records {rep.expected_hash})")
    else:
        click.echo(f"trace hash {r.trace_hash}: MISMATCH (the file records {rep.expected_hash})")
    _show_views(r, views)
    return VIOLATION if r.violations or not (rep.matched or not strict) else CLEAN


@cli.command("study")
@click.argument("name")
@click.option("--sizes", default=",".join(map(str, SIZES_GB)), show_default=True,
              help="VM sizes in GB, comma-separated.")
@click.option("--max-full-gb", default=8.0, show_default=True,
              help="Largest size simulated page by page when the UV pages in every GFN.")
@click.option("--out", default="emu-out", show_default=True, type=click.Path(file_okay=False),
              help="Where the plot goes.")
@click.option("--schedules", default=200, show_default=True, type=click.IntRange(min=1),
              help="releases: schedules per scenario and release.")
def study_cmd(name: str, sizes: str, max_full_gb: float, out: str, schedules: int) -> int:
    """Run a scripted measurement: esm-scaling (seed 004's curve) or releases (which kernel
    releases fail which secure-VM scenario)."""
    if name not in STUDIES:
        raise EmuError(f"unknown study {name!r} (known: {', '.join(STUDIES)})")
    if name == "releases":
        click.echo(f"{name}: {STUDIES[name]}")
        cells = releases_study(schedules, progress=lambda line: click.echo("  " + line))
        click.echo(releases_table(cells, schedules))
        return CLEAN
    try:
        gbs = tuple(float(x) for x in sizes.split(","))
    except ValueError:
        raise EmuError(f"bad --sizes {sizes!r}: expected numbers separated by commas") from None
    if not gbs or min(gbs) <= 0:
        raise EmuError(f"bad --sizes {sizes!r}: sizes must be positive")
    out_dir = check_dir(out, "--out")
    click.echo(f"{name}: {STUDIES[name]}")
    points = esm_scaling(gbs, max_full_gb, progress=lambda line: click.echo("  " + line))
    click.echo(table(points))
    click.echo(f"plot: {plot(points, out_dir / f'{name}.png')}")
    return CLEAN


@cli.command("worker")
@click.argument("address")
@click.option("--processes", default=1, show_default=True, type=click.IntRange(1, MAX_WORKERS),
              help="Worker processes to start on this host, one thread each (one per core).")
def worker_cmd(address: str, processes: int) -> None:
    """Join this host to the Dask cluster whose scheduler is at ADDRESS (started with
    'dask scheduler' on one host), for 'emu hunt --cluster ADDRESS'. Every host needs the
    same emu (and the same scenario files at the same paths). Runs until Ctrl-C."""
    argv, env = worker_command(address, processes)
    click.echo(f"joining {address} with {processes} one-thread worker process(es)")
    sys.stdout.flush()
    os.execve(argv[0], argv, env)


USAGE_TEXT = """usage: emu COMMAND [ARGS]...    hunt races in hypervisor memory management
commands: list, run, hunt, explore, replay, study, worker (emu COMMAND --help); emu --help
for more"""


def _one_line(message: str) -> str:
    """The first line of ``message``; the rest is shown only with ``emu -v``."""
    first, *rest = message.strip().splitlines() or [""]
    if not rest:
        return first
    if VERBOSE["on"]:
        return "\n".join([first, *rest])
    return f"{first} [{len(rest)} more line(s): emu -v shows them]"


def _error(message: str) -> None:
    click.echo(f"emu: error: {_one_line(message)}", err=True)
    sys.exit(USAGE)


def _is_interrupt(exc: BaseException) -> bool:
    """A KeyboardInterrupt, alone or inside what Trio wraps it in."""
    while exc is not None:
        if isinstance(exc, KeyboardInterrupt | click.Abort):
            return True
        if isinstance(exc, BaseExceptionGroup) and exc.split(KeyboardInterrupt)[0] is not None:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def main(argv: list[str] | None = None) -> None:
    """Entry point: every user error is one line and exit status 2."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        click.echo(USAGE_TEXT, err=True)
        sys.exit(USAGE)
    VERBOSE["on"] = False
    logger.remove()
    try:
        with handle_signals():
            status = cli.main(args=args, prog_name="emu", standalone_mode=False)
    except click.UsageError as exc:
        hint = f" (see 'emu {exc.ctx.info_name} --help')" if exc.ctx and exc.ctx.parent else ""
        _error(f"{_one_line(exc.format_message())}{hint}")
    except click.ClickException as exc:
        _error(exc.format_message())
    except Interrupted as exc:
        click.echo(f"emu: {exc}", err=True)
        sys.exit(128 + exc.signum)
    except EmuError as exc:
        _error(str(exc))
    except BaseException as exc:
        if not _is_interrupt(exc):
            raise
        click.echo("emu: interrupted", err=True)
        sys.exit(128 + signal.SIGINT)
    sys.exit(status if isinstance(status, int) else CLEAN)


if __name__ == "__main__":
    main()
