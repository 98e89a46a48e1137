"""The pytest plugin (entry point ``pytest11``): race hunts as ordinary pytest tests, with a
regression database replayed first, as Hypothesis does with its example database.

A test states a hunt with the marker, or runs one through the ``emu_hunt`` fixture::

    @pytest.mark.emu("lost-update", schedules=100, seed=0)
    def test_no_lost_update():
        '''The hunt runs before the body; a violation fails the test.'''

    def test_create_race_is_caught(emu_hunt):
        h = emu_hunt("nested-boot", quirks=["create-race-fails"], schedules=50,
                     expect="return-code")
        assert "H_ENTER_NESTED" in h.found.violation.message

Options (marker keywords, fixture keywords; the fixture's override a marker's): ``params``,
``quirks``, ``schedules``, ``strategy``, ``seed``, ``depth``, ``max_steps``, ``release``,
``timers``, ``workers`` (as ``emu.hunt``), and ``expect``: False (the default) fails the
test on any finding (a lockdep warning too, as the CLI's exit status does); True expects
one (a test that a quirk IS caught) and ``"KIND"`` one of that violation kind, failing when
the hunt ends without it or finds another kind. A marked test that does not
request ``emu_hunt`` has its hunt run for it before its body; one that does calls
``emu_hunt()`` itself (the marker's options are the defaults).

What a hunt does, in order (a "finding" is one the test does not expect):

| step                 | when                                 | outcome                        |
|----------------------|--------------------------------------|--------------------------------|
| replay the regression| ``.emu/regressions/`` under the      | the finding again: the test    |
|                      | rootdir holds one for this test and  | fails at once, no hunt; clean: |
|                      | hunt (its nodeid and scenario,       | kept (a one-schedule proof the |
|                      | parameters, quirks and release)      | fix holds), then the hunt      |
| ... drifted          | its decisions no longer fit the model| replayed tolerantly (by label):|
|                      | (``ReplayDivergence``)               | recurs: fails, and the file is |
|                      |                                      | rewritten to the realigned run;|
|                      |                                      | does not: dropped (it tests    |
|                      |                                      | nothing now), with a warning   |
| ... unreadable       | corrupt, or another format version   | dropped, with a warning        |
| hunt                 | no regression, or it passed          | a finding is shrunk, saved as  |
|                      |                                      | the regression, and the test   |
|                      |                                      | fails with the violation, the  |
|                      |                                      | shrunk timeline, its preemption|
|                      |                                      | count and the replay commands  |

A finding the test expects is no regression (it is the point of the test). A regression
that passes is kept, unlike Hypothesis, which drops an example that stopped failing: there
is one file per test and hunt, so the database cannot grow, and replaying it costs one
schedule, while a hunt with other seeds (``--emu-seed``) might never meet the schedule
again. Command line: ``--emu-seed N`` (the first seed of every hunt), ``--emu-schedules N``,
``--emu-replay FILE`` (every hunt of the file's scenario, parameters, quirks and release
replays the file instead of hunting; any other hunt is skipped).
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import attrs
import pytest

from .errors import EmuError, ReplayDivergence
from .sim import replay as replay_file
from .sim.explain import explained
from .sim.files import check_dir
from .sim.replay import MAX_SEED
from .sim.runner import HuntResult, RunResult, hunt, prepare
from .sim.scenario import Scenario, builtin_scenarios

MARK = "emu"
REGRESSIONS = Path(".emu") / "regressions"
TIMELINE = 30
"""Steps of the interleaving a failure shows (the CLI's default)."""
HUNT_OPTIONS = ("params", "quirks", "schedules", "strategy", "seed", "depth", "max_steps",
                "release", "timers", "workers")
OPTIONS = (*HUNT_OPTIONS, "expect")


class EmuRegressionWarning(pytest.PytestWarning):
    """A regression file was dropped (unreadable, or its schedule no longer fits)."""


@attrs.frozen
class Settings:
    """The command line's say over every hunt of the session."""

    seed: int | None
    schedules: int | None
    replay: Path | None
    replay_data: dict[str, Any] | None
    regressions: Path
    shown_from: Path
    """Paths in messages are relative to where pytest was started, when under it."""


SETTINGS = pytest.StashKey[Settings]()


def _bounded(low: int, high: int | None, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"bad {what} {value} ({bound})")
        return value

    return parse


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("emu", "emu race hunts")
    group.addoption("--emu-seed", type=_bounded(0, MAX_SEED - 1, "seed"), default=None,
                    metavar="N", help="First seed of every emu hunt (default: the test's).")
    group.addoption("--emu-schedules", type=_bounded(1, None, "number of schedules"),
                    default=None, metavar="N",
                    help="Schedules of every emu hunt (default: the test's).")
    group.addoption("--emu-replay", default=None, metavar="FILE",
                    help="Replay this replay file instead of hunting, in the hunts of its "
                         "scenario, parameters, quirks and release; skip the other hunts.")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARK}(scenario, *, {', '.join(OPTIONS)}): a race hunt of an emu "
                   "scenario; a finding fails the test (see emu.pytest_plugin)")
    path = config.getoption("emu_replay")
    data = None
    if path is not None:
        try:
            data = replay_file.load(path)
        except EmuError as exc:
            raise pytest.UsageError(f"--emu-replay: {exc}") from None
    config.stash[SETTINGS] = Settings(
        config.getoption("emu_seed"), config.getoption("emu_schedules"),
        Path(path) if path is not None else None, data, config.rootpath / REGRESSIONS,
        config.invocation_params.dir)


def pytest_report_header(config: pytest.Config) -> str:
    s = config.stash[SETTINGS]
    saved = len(list(s.regressions.glob("*.replay.json"))) if s.regressions.is_dir() else 0
    return f"emu regression database: {s.regressions} ({saved} saved; replayed before hunting)"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    """A marked test that does not run its hunt itself has it run before its body."""
    marker = item.get_closest_marker(MARK)
    if marker is not None and "emu_hunt" not in getattr(item, "fixturenames", ()):
        _Hunt(item, _options(marker, (), {})).run()


@pytest.fixture
def emu_hunt(request: pytest.FixtureRequest) -> Callable[..., HuntResult]:
    """``emu_hunt(scenario, **options) -> HuntResult``: hunt as the marker does, with the
    test's ``emu`` marker (if any) giving the defaults; the result is the caller's to
    inspect (with ``expect``, its ``found`` is the finding expected)."""
    marker = request.node.get_closest_marker(MARK)
    hunts: list[HuntResult] = []

    def run(*args: Any, **options: Any) -> HuntResult:
        hunts.append(_Hunt(request.node, _options(marker, args, options)).run())
        return hunts[-1]

    def hunted() -> None:  # the marker says this test hunts: a test that never did proves nothing
        if not hunts:
            pytest.fail("emu: the test is marked @pytest.mark.emu and asks for emu_hunt, but "
                        "never called emu_hunt(): its marker hunted nothing", pytrace=False)

    if marker is not None:
        request.addfinalizer(hunted)
    return run


def _options(marker: pytest.Mark | None, args: tuple[Any, ...],
             given: dict[str, Any]) -> dict[str, Any]:
    """The marker's options overridden by the fixture call's, checked."""
    options = dict(marker.kwargs) if marker is not None else {}
    positional = args or (marker.args if marker is not None else ())
    options.update(given)
    for name in options:
        if name not in OPTIONS:
            close = difflib.get_close_matches(name, OPTIONS, n=1)
            hint = f"; did you mean {close[0]}?" if close else f" (known: {', '.join(OPTIONS)})"
            pytest.fail(f"emu: unknown hunt option {name!r}{hint}", pytrace=False)
    if len(positional) != 1:
        pytest.fail(f"emu: a hunt takes one scenario (a name, 'file.py:function' or a "
                    f"Scenario), not {len(positional)} positional arguments", pytrace=False)
    return {"scenario": positional[0], **options}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.")[:80] or "test"


def _identity(scenario: str, params: dict[str, Any], quirks: Any, release: str | None) -> str:
    """What a regression file is for: a replay file of another identity tests another
    model."""
    return json.dumps([scenario, params, sorted(quirks), release], sort_keys=True, default=str)


def _file_identity(data: dict[str, Any]) -> str:
    return _identity(data["scenario"], data["params"], data["quirks"], data.get("kernel"))


def _as_hunt(result: RunResult, data: dict[str, Any]) -> HuntResult:
    """A replayed schedule as the result of a hunt of that one schedule."""
    return HuntResult(scenario=result.scenario, params=result.params, quirks=result.quirks,
                      strategy=data["strategy"], seed=result.seed, schedules=1,
                      found=result if result.violations else None,
                      violating=int(bool(result.violations)), mismatches=[],
                      steps_total=result.steps, steps_max=result.steps,
                      actors=len(result.trace.actors), elapsed=0.0, release=result.release,
                      shrinking=False)


@attrs.frozen
class _Replayed:
    """A replay file's schedule re-run: as a hunt of that one schedule, and how it went."""

    hunt: HuntResult
    record: dict[str, Any]
    """The file's ``shrunk`` record (empty if it has none)."""
    drifted: bool
    """Its decisions no longer fit the model: it was realigned (tolerant replay)."""


class _Hunt:
    """One hunt of one test: replay first, hunt, judge, report."""

    def __init__(self, item: pytest.Item, options: dict[str, Any]) -> None:
        self.item = item
        self.settings = item.config.stash[SETTINGS]
        scenario: str | Scenario = options.pop("scenario")
        expect = options.pop("expect", None)
        if not (expect is None or isinstance(expect, (bool, str))):
            pytest.fail(f"emu: expect={expect!r}: expected True (any violation) or a "
                        "violation kind such as 'invariant'", pytrace=False)
        self.expect: str | bool = expect or False
        """False: nothing is expected; True: a violation; a string: one of that kind."""
        self.options = options
        if self.settings.seed is not None:
            options["seed"] = self.settings.seed
        if self.settings.schedules is not None:
            options["schedules"] = self.settings.schedules
        self.log: list[str] = []
        """What the plugin did, in order (the test's "emu" report section)."""
        try:
            sc, values, chosen = prepare(scenario, options.get("params"),
                                         options.get("quirks", ()), options.get("release"))
        except EmuError as exc:
            pytest.fail(f"emu: {exc}", pytrace=False)
        self.sc = sc
        self.identity = _identity(sc.name, values, chosen, options.get("release"))
        digest = hashlib.sha256(f"{item.nodeid}\0{self.identity}".encode()).hexdigest()
        self.regression = self.settings.regressions / \
            f"{_slug(item.nodeid)}-{digest[:12]}.replay.json"

    def run(self) -> HuntResult:
        try:
            result = self._run()  # (a failure's message carries the log)
        except EmuError as exc:  # a bad strategy or budget, a scenario that cannot build...
            pytest.fail("\n".join([f"emu: {exc}", *self.log]), pytrace=False)
        self.item.add_report_section("call", "emu", "\n".join(self.log))
        return result

    def _run(self) -> HuntResult:
        s = self.settings
        if s.replay is not None and s.replay_data is not None:
            if _file_identity(s.replay_data) != self.identity:
                pytest.skip(f"--emu-replay {self._shown(s.replay)}: its schedule is of "
                            f"{s.replay_data['scenario']} with other parameters, quirks or "
                            f"release than this hunt of {self.sc.name}")
            done = self._replay(s.replay, s.replay_data, "--emu-replay")
            return self._judge(done.hunt, "by --emu-replay (no hunt ran)", s.replay, done.record)
        if self.regression.is_file():
            done = self._replay_regression()
            if done is not None:
                return self._judge(done.hunt, "replaying the regression first (no hunt ran)",
                                   self.regression, done.record)
        h = hunt(self.sc, **self.options)  # (resolved once: looking a name up costs)
        last = h.seed + h.schedules - 1
        self.log.append(f"emu: hunted {h.scenario} ({h.strategy['name']}): {h.schedules} "
                        f"schedules, seeds {h.seed}..{last}: {_outcome(h.found)}")
        where = f"in seed {h.found.seed} of" if h.found is not None else "in"
        return self._judge(h, f"{where} a hunt of seeds {h.seed}..{last}", None, {})

    def _replay(self, path: Path, data: dict[str, Any], what: str) -> _Replayed:
        """Replay a file strictly; tolerantly (realigned by label) when the model changed
        under it. A regression that a tolerant replay shows failing is rewritten to the
        realigned schedule, which the next strict replay follows."""
        spec, note = replay_file.scenario_spec(data, path)
        if note:  # (the scenario's file changed since: a divergence may come from that)
            self.log.append(f"emu: {note}")
        record = data.get("shrunk") or {}
        try:
            rep = replay_file.replay(data, spec)
            self.log.append(f"emu: {what} {self._shown(path)}: {_outcome(rep.result)}")
            return _Replayed(_as_hunt(rep.result, data), record, False)
        except ReplayDivergence as exc:
            self.log.append(f"emu: {what} {self._shown(path)}: its decisions no longer fit "
                            f"the model ({exc}); replayed tolerantly")
        rep = replay_file.replay(data, spec, tolerant=True)
        assert rep.tolerant is not None
        self.log.append(f"emu: tolerant replay: {rep.tolerant.summary()}; "
                        f"{_outcome(rep.result)}")
        if path == self.regression and self._unexpected(rep.result):
            replay_file.save(path, rep.result)
            self.log.append(f"emu: {self._shown(path)} rewritten to the realigned schedule")
        return _Replayed(_as_hunt(rep.result, data), {}, True)

    def _replay_regression(self) -> _Replayed | None:
        """The regression replayed, if it still shows an unexpected finding; None (and the
        hunt goes on) if not."""
        try:
            data = replay_file.load(self.regression)
        except EmuError as exc:
            return self._drop(f"it is unreadable ({exc})")
        done = self._replay(self.regression, data, "replayed the regression")
        if self._unexpected(done.hunt.found):
            return done
        if done.drifted:
            return self._drop("its schedule no longer fits the model and, realigned, it "
                              "passes: it tests nothing precise any more")
        self.log.append(f"emu: the regression {self._shown(self.regression)} passes: the fix "
                        "holds (kept: it is replayed first on every run)")
        return None

    def _drop(self, why: str) -> None:
        self.regression.unlink(missing_ok=True)
        message = f"emu: dropped the regression {self._shown(self.regression)}: {why}"
        self.log.append(message)
        warnings.warn(EmuRegressionWarning(message), stacklevel=1)

    def _unexpected(self, found: RunResult | None) -> bool:
        v = found.violation if found is not None else None
        return v is not None and (not self.expect or (isinstance(self.expect, str) and
                                                      v.kind != self.expect))

    def _judge(self, h: HuntResult, how: str, saved: Path | None,
               record: dict[str, Any]) -> HuntResult:
        """``h``, or fail with the report: found unexpectedly, or expected and not found."""
        wanted = f"a {self.expect} violation" if isinstance(self.expect, str) else "a violation"
        if h.interrupted is not None and h.found is None:
            pytest.fail(f"emu: the hunt of {h.scenario} was interrupted after {h.schedules} "
                        "schedule(s): it proves nothing", pytrace=False)
        if self._unexpected(h.found):
            self._fail(h, how, saved, record,
                       f" (expected {wanted}: this is another)" if self.expect else "")
        if self.expect and h.found is None:
            pytest.fail(f"emu: expected {wanted} of {h.scenario} (quirks: "
                        f"{', '.join(h.quirks) or 'none'}), none {how}: {h.schedules} "
                        "schedule(s) ran", pytrace=False)
        return h

    def _fail(self, h: HuntResult, how: str, saved: Path | None, record: dict[str, Any],
              note: str) -> NoReturn:
        """Fail with the violation, the shrunk timeline, its preemptions and the commands
        that replay it; a hunt's unexpected finding is saved as the regression first."""
        found = h.found
        assert found is not None
        v = found.violation
        head = [f"emu: {h.scenario}: {'VIOLATION' if v.fatal else 'WARNING'} found {how}: "
                f"{v.kind}: {v.message}{note}"]
        shown, shrunk = found, None
        if saved is None:  # a hunt's finding: replays are already as small as they get
            shrunk = h.shrunk
            if shrunk is not None:
                head.append(shrunk.line())
                shown = shrunk.result
                record = shrunk.record() if not shrunk.note else {}
        preemptions = record.get("preemptions")
        head.append(f"preemptions: {preemptions[1]}" if preemptions else
                    "preemptions: not measured (the schedule is not a shrunk one)")
        if saved is None:
            try:  # (a directory that cannot be written must not cost the report)
                check_dir(self.regression.parent, "the regression directory")
                saved = replay_file.save(self.regression, shown, record or None)
                head.append(f"regression saved: {self._shown(saved)} (replayed first on the "
                            "next run; delete it to forget it)")
            except (EmuError, OSError) as exc:
                head.append(f"regression NOT saved: {exc}")
        lines = [head[0], *self.log, *head[1:], "", explained(shown, TIMELINE), ""]
        if saved is not None:
            lines += self._commands(saved)
        pytest.fail("\n".join(lines), pytrace=False)

    def _commands(self, path: Path) -> list[str]:
        shown = self._shown(path)
        replayable = self.sc.source is not None or self.sc.name in builtin_scenarios()
        cli = (f"replay with: emu replay {shown} --explain" if replayable else
               f"(scenario {self.sc.name} is defined in the test code, which 'emu replay' "
               "does not load)")
        return [cli, f"        or: pytest '{self.item.nodeid}' --emu-replay {shown}"]

    def _shown(self, path: Path) -> str:
        here = self.settings.shown_from.resolve()
        return os.path.relpath(path.resolve(), here) if path.resolve().is_relative_to(here) \
            else str(path)


def _outcome(found: RunResult | None) -> str:
    v = found.violation if found is not None else None
    return f"{v.kind}: {v.message}" if v is not None else "clean"
