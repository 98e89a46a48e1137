"""The ``emu`` command: list, run, hunt, replay.

Exit status: 0 clean, 1 violation found, 2 usage or input error (one line, no traceback).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from loguru import logger
from tqdm import tqdm

from . import __version__
from .errors import EmuError
from .sim import replay as replay_file
from .sim.explain import explain
from .sim.perfetto import write_perfetto
from .sim.runner import HuntResult, RunResult, hunt, run
from .sim.scenario import builtin_scenarios, suites
from .sim.strategies import pct_bound
from .study import SIZES_GB, STUDIES, esm_scaling, plot, table

CLEAN, VIOLATION, USAGE = 0, 1, 2


def _params(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise EmuError(f"bad -p {pair!r}: expected NAME=VALUE")
        out[name.strip()] = value.strip()
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def _verdict(result: RunResult) -> str:
    v = result.violation
    if v is None:
        return "clean"
    return ("VIOLATION" if v.fatal else "WARNING") + f": {v.kind}: {v.message}"


def _show_found(result: RunResult, last: int) -> None:
    click.echo(explain(result, last))


def _pct_line(strategy: dict[str, Any], n: int, k: int) -> str:
    d = strategy["depth"]
    bound = pct_bound(n, k, d)
    return (f"PCT depth {d}: per-run probability bound 1/(n*k^(d-1)) = 1/({n}*{k}^{d - 1}) "
            f"= {bound:.3g} (n={n} actors, k={k} steps measured)")


DEFAULT_SCENARIO = "svm"

scenario_options: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
    click.argument("scenario", default=DEFAULT_SCENARIO),
    click.option("-p", "params", multiple=True, metavar="NAME=VALUE",
                 help="Scenario parameter (repeatable)."),
    click.option("--quirk", "quirks", multiple=True, metavar="Q",
                 help="Switch a historic bug back on (repeatable)."),
    click.option("--strategy", default="random", show_default=True, help="random or pct."),
    click.option("--depth", default=3, show_default=True, help="PCT bug depth d."),
    click.option("--seed", default=0, show_default=True, help="Seed (first seed of a hunt)."),
    click.option("--max-steps", type=int, default=None,
                 help="Step budget per schedule (default: the scenario's)."),
]


def with_scenario_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(scenario_options):
        fn = option(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="emu")
@click.option("-v", "--verbose", is_flag=True, help="Log every schedule.")
def cli(verbose: bool) -> None:
    """emu: hunt races in hypervisor memory management."""
    logger.remove()
    logger.add(sys.stderr, level="DEBUG" if verbose else "WARNING",
               format="<level>{level: <7}</level> {message}")


@cli.command("list")
def list_cmd() -> int:
    """List the suites, scenarios (parameters, quirks) and what each quirk is."""
    described: dict[str, str] = {}
    for suite, (text, names) in suites().items():
        click.echo(click.style(f"suite {suite}", bold=True) + f": {text}: {', '.join(names)}")
    for name, sc in builtin_scenarios().items():
        summary = " ".join(sc.description.split("\n\n")[0].split())
        click.echo("\n" + click.style(name, bold=True) + f": {summary}")
        for pname, p in sc.params.items():
            default = str(p.default).lower() if isinstance(p.default, bool) else p.default
            choices = f" (one of: {', '.join(map(str, p.choices))})" if p.choices else ""
            click.echo(f"    {'-p ' + pname + '=' + str(default):<28} {p.help}{choices}")
        if sc.quirks:
            click.echo(f"    --quirk {', '.join(sc.quirks)}")
            described.update(sc.quirks)
    click.echo("\n" + click.style("quirks", bold=True))
    for qname, text in described.items():
        click.echo(f"  {qname}: {text}")
    return CLEAN


@cli.command("run")
@with_scenario_options
@click.option("--trace", "trace_path", type=click.Path(dir_okay=False),
              help="Write the Perfetto trace JSON here.")
@click.option("--timeline", default=30, show_default=True, help="Steps shown on a violation.")
def run_cmd(scenario: str, params: tuple[str, ...], quirks: tuple[str, ...], strategy: str,
            depth: int, seed: int, max_steps: int | None, trace_path: str | None,
            timeline: int) -> int:
    if scenario in suites():
        raise EmuError(f"{scenario!r} is a suite: 'emu run' takes one scenario "
                       f"({', '.join(suites()[scenario][1])})")
    """Run one schedule of SCENARIO."""
    result = run(scenario, seed=seed, params=_params(params), quirks=quirks, strategy=strategy,
                 depth=depth, max_steps=max_steps)
    click.echo(f"{result.scenario} seed {seed} ({result.strategy['name']}): {result.steps} "
               f"steps, trace hash {result.trace_hash}: {_verdict(result)}")
    if result.strategy["name"] == "pct":
        click.echo(_pct_line(result.strategy, len(result.trace.actors), result.steps))
    if not result.ok:
        _show_found(result, timeline)
    if trace_path:
        click.echo(f"trace: {write_perfetto(result.trace, trace_path, result.scenario)}")
    return VIOLATION if result.violations else CLEAN


@cli.command("hunt")
@with_scenario_options
@click.option("--schedules", default=1000, show_default=True, help="How many schedules.")
@click.option("--out", default="emu-out", show_default=True, type=click.Path(file_okay=False),
              help="Where the replay file and trace of a finding go.")
@click.option("--check-determinism", is_flag=True,
              help="Run every seed twice and compare trace hashes (implies --keep-going).")
@click.option("--keep-going", is_flag=True, help="Do not stop at the first violation.")
@click.option("--timeline", default=30, show_default=True, help="Steps shown on a violation.")
def hunt_cmd(scenario: str, params: tuple[str, ...], quirks: tuple[str, ...], strategy: str,
             depth: int, seed: int, max_steps: int | None, schedules: int, out: str,
             check_determinism: bool, keep_going: bool, timeline: int) -> int:
    """Run up to N schedules of SCENARIO, stopping at the first violation. SCENARIO may be
    a suite (svm, engine: each of its scenarios in turn); the default is the svm suite."""
    names = suites().get(scenario, ("", [scenario]))[1]
    status = CLEAN
    for name in names:
        with tqdm(total=schedules, unit="sched", file=sys.stderr, disable=None, leave=False,
                  desc=name) as bar:
            def progress(done: int, result: RunResult) -> None:
                bar.update(1)
                logger.debug("seed {}: {} steps, hash {}, {}", result.seed, result.steps,
                             result.trace_hash, _verdict(result))

            found = hunt(name, schedules=schedules, seed=seed, params=_params(params),
                         quirks=quirks, strategy=strategy, depth=depth, max_steps=max_steps,
                         check_determinism=check_determinism, keep_going=keep_going,
                         progress=progress)
        _hunt_report(found, out, timeline, check_determinism)
        if found.mismatches or found.found is not None:
            status = VIOLATION
    return status


def _hunt_report(h: HuntResult, out: str, timeline: int, checked: bool) -> None:
    last = h.seed + h.schedules - 1
    click.echo(f"hunt {h.scenario} ({h.strategy['name']}): {h.schedules} schedules, seeds "
               f"{h.seed}..{last}; steps max {h.steps_max}, total {h.steps_total}; "
               f"{h.decisions_per_second:,.0f} decisions/s")
    if h.strategy["name"] == "pct":
        click.echo(_pct_line(h.strategy, h.actors, h.steps_max))
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
    click.echo(f"FOUND in seed {r.seed}:")
    _show_found(r, timeline)
    stem = Path(out) / f"{_slug(r.scenario)}-seed{r.seed}"
    rfile = replay_file.save(stem.with_suffix(".replay.json"), r)
    tfile = write_perfetto(r.trace, stem.with_suffix(".trace.json"), r.scenario)
    click.echo(f"replay file: {rfile}\ntrace:       {tfile} (open in ui.perfetto.dev)\n"
               f"replay with: emu replay {rfile} --explain")


@cli.command("replay")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--trace", "trace_path", type=click.Path(dir_okay=False),
              help="Write the Perfetto trace JSON here.")
@click.option("--explain", "show", is_flag=True, help="Explain the violation step by step.")
@click.option("--timeline", default=40, show_default=True, help="Steps shown by --explain.")
def replay_cmd(file: str, trace_path: str | None, show: bool, timeline: int) -> int:
    """Re-run a replay FILE and check that the trace hash matches."""
    data = replay_file.load(file)
    rep = replay_file.replay(data)
    r = rep.result
    click.echo(f"replay {r.scenario} seed {r.seed} ({r.strategy['name']}): {r.steps} steps: "
               f"{_verdict(r)}")
    if show:
        _show_found(r, timeline)
    if trace_path:
        click.echo(f"trace: {write_perfetto(r.trace, trace_path, r.scenario)}")
    if rep.matched:
        click.echo(f"trace hash {r.trace_hash}: matched")
    else:
        click.echo(f"trace hash {r.trace_hash}: MISMATCH (the file records {rep.expected_hash})")
    return VIOLATION if r.violations or not rep.matched else CLEAN


@cli.command("study")
@click.argument("name")
@click.option("--sizes", default=",".join(map(str, SIZES_GB)), show_default=True,
              help="VM sizes in GB, comma-separated.")
@click.option("--max-full-gb", default=8.0, show_default=True,
              help="Largest size simulated page by page when the UV pages in every GFN.")
@click.option("--out", default="emu-out", show_default=True, type=click.Path(file_okay=False),
              help="Where the plot goes.")
def study_cmd(name: str, sizes: str, max_full_gb: float, out: str) -> int:
    """Run a scripted measurement: esm-scaling."""
    if name not in STUDIES:
        raise EmuError(f"unknown study {name!r} (known: {', '.join(STUDIES)})")
    try:
        gbs = tuple(float(x) for x in sizes.split(","))
    except ValueError:
        raise EmuError(f"bad --sizes {sizes!r}: expected numbers separated by commas") from None
    if not gbs or min(gbs) <= 0:
        raise EmuError(f"bad --sizes {sizes!r}: sizes must be positive")
    click.echo(f"{name}: {STUDIES[name]}")
    points = esm_scaling(gbs, max_full_gb, progress=lambda line: click.echo("  " + line))
    click.echo(table(points))
    click.echo(f"plot: {plot(points, Path(out) / f'{name}.png')}")
    return CLEAN


def main(argv: list[str] | None = None) -> None:
    """Entry point: every user error is one line and exit status 2."""
    try:
        status = cli.main(args=argv, prog_name="emu", standalone_mode=False)
    except click.UsageError as exc:
        hint = f" (see 'emu {exc.ctx.info_name} --help')" if exc.ctx and exc.ctx.parent else ""
        click.echo(f"emu: error: {exc.format_message()}{hint}", err=True)
        sys.exit(USAGE)
    except click.ClickException as exc:
        click.echo(f"emu: error: {exc.format_message()}", err=True)
        sys.exit(USAGE)
    except EmuError as exc:
        click.echo(f"emu: error: {exc}", err=True)
        sys.exit(USAGE)
    except click.Abort:
        click.echo("emu: interrupted", err=True)
        sys.exit(130)
    sys.exit(status if isinstance(status, int) else CLEAN)


if __name__ == "__main__":
    main()
