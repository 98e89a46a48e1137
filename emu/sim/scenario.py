"""Scenarios: the registry, the ``@scenario`` decorator, parameters, quirks, and loading a
scenario from ``path/to/file.py:function``."""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from ..errors import EmuError

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@attrs.frozen
class Param:
    """A scenario parameter: its default fixes its type."""

    default: Any
    help: str = ""
    choices: tuple = ()
    minimum: int | None = None
    maximum: int | None = None
    """The largest value the model honours (a kernel limit, or what fits in memory)."""

    def parse(self, name: str, text: str) -> Any:
        kind = type(self.default)
        try:
            if kind is bool:
                low = text.lower()
                if low not in _TRUE + _FALSE:
                    raise ValueError("expected true or false")
                value: Any = low in _TRUE
            elif kind is int:
                value = int(text, 0)
            elif kind is float:
                value = float(text)
            else:
                value = text
        except ValueError as exc:
            reason = str(exc) if kind is bool else f"expected {kind.__name__}"
            raise EmuError(f"bad value for parameter {name}: {text!r} ({reason})") from None
        return self.check(name, value)

    def check(self, name: str, value: Any) -> Any:
        kind = type(self.default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not kind:
            raise EmuError(f"bad value for parameter {name}: {value!r} (expected {kind.__name__})")
        if self.choices and value not in self.choices:
            raise EmuError(f"bad value for parameter {name}: {value!r} "
                           f"(one of: {', '.join(map(str, self.choices))})")
        if self.minimum is not None and value < self.minimum:
            raise EmuError(f"bad value for parameter {name}: {value} (at least {self.minimum})")
        if self.maximum is not None and value > self.maximum:
            raise EmuError(f"bad value for parameter {name}: {value} (at most {self.maximum})")
        return value


@attrs.frozen
class Scenario:
    name: str
    build: Callable[..., None]
    description: str = ""
    params: Mapping[str, Param] = attrs.field(factory=dict)
    quirks: Mapping[str, str] = attrs.field(factory=dict)
    """quirk name -> what it puts back (commit, symptom, the invariant that catches it)."""
    max_steps: int | Callable[[dict[str, Any]], int] = 10_000
    """The step budget, or a function of the parameter values giving it: a schedule that
    takes more steps is a livelock, so the budget must grow with the scenario's size."""
    limits: Callable[[dict[str, Any]], str | None] | None = None
    """Why these parameter values cannot be honoured together (None: they can)."""
    memory: Callable[[dict[str, Any]], int] | None = None
    """Estimated peak memory in bytes of one schedule with these parameter values."""
    source: tuple[str, str] | None = None
    """For a scenario loaded from a file: (its absolute path, the SHA-256 of its content)."""

    def step_budget(self, values: dict[str, Any]) -> int:
        return self.max_steps(values) if callable(self.max_steps) else self.max_steps

    def check_size(self, values: dict[str, Any]) -> None:
        """Refuse, up front, values the model cannot honour or that cannot fit in memory."""
        problem = self.limits(values) if self.limits is not None else None
        if problem:
            raise EmuError(f"bad parameters for scenario {self.name}: {problem}")
        need = self.memory(values) if self.memory is not None else 0
        have = available_memory()
        if need > have:
            raise EmuError(f"scenario {self.name} with these parameters needs about "
                           f"{need / 2**30:.1f} GiB of memory; {have / 2**30:.1f} GiB "
                           "is available")

    def resolve_params(self, given: Mapping[str, Any] | None) -> dict[str, Any]:
        """Defaults overridden by ``given`` (strings from the CLI are parsed)."""
        values = {name: p.default for name, p in self.params.items()}
        for name, value in (given or {}).items():
            if name not in self.params:
                known = ", ".join(self.params) or "none"
                raise EmuError(f"unknown parameter {name!r} for scenario {self.name} "
                               f"(known: {known})")
            p = self.params[name]
            values[name] = p.parse(name, value) if isinstance(value, str) and \
                not isinstance(p.default, str) else p.check(name, value)
        return values

    def resolve_quirks(self, given: Iterable[str]) -> tuple[str, ...]:
        chosen: list[str] = []
        for q in given:
            if q not in self.quirks:
                known = ", ".join(self.quirks) or "none"
                raise EmuError(f"unknown quirk {q!r} for scenario {self.name} (known: {known})")
            if q not in chosen:
                chosen.append(q)
        return tuple(sorted(chosen))



def quirk_claims(modules: Iterable[Any]) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """A suite package's quirk claims merged: each module's ``QUIRK_SCENARIO`` (quirk -> the
    scenario that hunts it) and ``QUIRK_PARAMS`` (quirk -> the parameters it needs), so
    that every quirk has exactly one scenario; ValueError if two modules claim one."""
    claims: dict[str, str] = {}
    params: dict[str, dict[str, Any]] = {}
    for mod in modules:
        if claims.keys() & mod.QUIRK_SCENARIO.keys():
            raise ValueError(f"{mod.__name__} claims a quirk another scenario claims")
        claims.update(mod.QUIRK_SCENARIO)
        params.update(mod.QUIRK_PARAMS)
    return claims, params

REGISTRY: dict[str, Scenario] = {}


@attrs.frozen
class Releases:
    """Named versions of a modelled system (for a kernel: its releases), each the set of
    quirks (historic bugs) it had. The engine only keys on names: what else a version
    changes is the model's business (it reads ``Machine.release``). A table applies to every
    scenario that declares all of its ``quirks``; the model registers it at import."""

    what: str
    """What a version is called in messages ("kernel release")."""
    option: str
    """The command-line option that selects one ("--kernel")."""
    quirks: frozenset[str]
    """Every quirk the table knows."""
    bugs: Mapping[str, tuple[str, ...]]
    """Version name -> the quirks it has, oldest version first."""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.bugs)


RELEASE_TABLES: list[Releases] = []


def register_releases(table: Releases) -> None:
    if table not in RELEASE_TABLES:
        RELEASE_TABLES.append(table)


def releases_of(sc: Scenario) -> Releases | None:
    """The release table that applies to ``sc`` (None if none does)."""
    declared = set(sc.quirks)
    return next((t for t in RELEASE_TABLES if t.quirks <= declared), None)


def resolve_release(sc: Scenario, release: str | None) -> tuple[str, ...]:
    """The quirks ``release`` switches on for ``sc`` (none for None); EmuError if ``sc``
    models no releases or does not know this one."""
    if release is None:
        return ()
    table = releases_of(sc)
    if table is None:
        raise EmuError(f"scenario {sc.name} models no releases, so it cannot run as "
                       f"{release!r} ('emu list' shows which scenarios do)")
    if release not in table.bugs:
        raise EmuError(f"unknown {table.what} {release!r} (known: {', '.join(table.names)})")
    return table.bugs[release]


def available_memory() -> int:
    """Bytes this process may still use: MemAvailable, else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def scenario(name: str | None = None, *, params: Mapping[str, Any] | None = None,
             quirks: Mapping[str, str] | None = None,
             max_steps: int | Callable[[dict[str, Any]], int] = 10_000,
             limits: Callable[[dict[str, Any]], str | None] | None = None,
             memory: Callable[[dict[str, Any]], int] | None = None,
             description: str | None = None) -> Callable[[Callable[..., None]], Scenario]:
    """Declare a scenario: ``build(machine, **params)`` spawns actors and adds invariants.

    ``params`` maps a name to a ``Param`` or to a bare default value. ``max_steps`` is the
    step budget, a number or a function of the parameter values; ``limits`` says why values
    cannot be honoured together; ``memory`` estimates a schedule's peak bytes (see
    ``Scenario``).
    """

    def decorate(build: Callable[..., None]) -> Scenario:
        declared = {k: v if isinstance(v, Param) else Param(v) for k, v in (params or {}).items()}
        doc = description if description is not None else (inspect.getdoc(build) or "")
        sc = Scenario(name or build.__name__.replace("_", "-"), build, doc, declared,
                      dict(quirks or {}), max_steps, limits, memory)
        old = REGISTRY.get(sc.name)
        if old is not None and old.build.__qualname__ != build.__qualname__:
            raise ValueError(f"two scenarios named {sc.name!r}")
        REGISTRY[sc.name] = sc
        return sc

    return decorate


ENTRY_POINTS = "emu.scenarios"
"""The entry-point group of scenario suites: name = suite, value = the module whose import
registers the suite's scenarios (a package's scenarios may live in its submodules); the
module's ``SUITE`` describes it."""


def _suite_modules() -> dict[str, Any]:
    """Suite name -> its module, every installed package's, imported (sorted by name)."""
    eps = sorted(importlib.metadata.entry_points(group=ENTRY_POINTS), key=lambda ep: ep.name)
    if not eps:
        raise EmuError(f"no scenario suites are installed (entry-point group {ENTRY_POINTS!r}): "
                       "install emu with pip, e.g. pip install -e .")
    modules = {}
    for ep in eps:
        try:
            modules[ep.name] = ep.load()
        except Exception as exc:  # a broken third-party suite must not hide the others
            raise EmuError(f"cannot load scenario suite {ep.name!r} ({ep.value}): "
                           f"{type(exc).__name__}: {exc}") from None
    return modules


def _in_suite(sc: Scenario, module: str) -> bool:
    """Whether ``sc`` belongs to the suite ``module``: defined in it or, when the suite is a
    package, in one of its submodules."""
    return sc.build.__module__ == module or sc.build.__module__.startswith(module + ".")


def _installed(modules: Iterable[Any]) -> dict[str, Scenario]:
    names = [m.__name__ for m in modules]
    return {name: sc for name, sc in sorted(REGISTRY.items())
            if any(_in_suite(sc, n) for n in names)}


def builtin_scenarios() -> dict[str, Scenario]:
    """The scenarios of every installed suite (what ``emu list`` shows), by name."""
    return _installed(_suite_modules().values())


def suites() -> dict[str, tuple[str, list[str]]]:
    """Suite name -> (what it is, its scenarios' names)."""
    modules = _suite_modules()
    known = _installed(modules.values())
    return {name: (getattr(mod, "SUITE", name),
                   [n for n, sc in known.items() if _in_suite(sc, mod.__name__)])
            for name, mod in modules.items()}


def resolve(spec: str) -> Scenario:
    """A scenario by registered name, or from ``path/to/file.py:function``."""
    path, sep, func = spec.rpartition(":")
    if sep and path.endswith(".py"):
        return _from_file(Path(path), func, spec)
    builtin_scenarios()
    if spec in REGISTRY:
        return REGISTRY[spec]
    close = difflib.get_close_matches(spec, list(REGISTRY), n=1)
    hint = f"; did you mean {close[0]}?" if close else "; 'emu list' shows them"
    raise EmuError(f"unknown scenario {spec!r}{hint}")


def _load(path: Path):
    """Import a scenario file once per path and content: (module, source)."""
    if not path.is_file():
        raise EmuError(f"no scenario file {str(path)!r}")
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise EmuError(f"cannot read {path}: {exc.strerror or exc}") from None
    source = (str(path.resolve()), hashlib.sha256(content).hexdigest())
    where = hashlib.sha256(source[0].encode()).hexdigest()[:8]
    module_name = f"emu_user_{path.stem}_{where}_{source[1][:8]}"
    module = sys.modules.get(module_name)
    if module is None:
        loader = importlib.util.spec_from_file_location(module_name, path)
        if loader is None or loader.loader is None:
            raise EmuError(f"cannot load {path}: not a Python file")
        module = importlib.util.module_from_spec(loader)
        try:
            loader.loader.exec_module(module)
        except KeyboardInterrupt:
            raise
        except SystemExit as exc:  # a scenario file must not end emu
            raise EmuError(f"cannot load {path}: it called sys.exit({exc.code!r}) at import") \
                from None
        except BaseException as exc:
            raise EmuError(f"cannot load {path}: {type(exc).__name__}: {exc}") from None
        sys.modules[module_name] = module
    return module, source


def _as_scenario(obj: Any, spec: str, source: tuple[str, str]) -> Scenario | None:
    """A file's scenario: a ``@scenario`` object, or a plain function whose parameters after
    the machine have defaults (they become its parameters); None for anything else."""
    if isinstance(obj, Scenario):
        return attrs.evolve(obj, name=spec, source=source)
    if callable(obj):
        sig = inspect.signature(obj)
        params = {n: Param(p.default) for n, p in list(sig.parameters.items())[1:]
                  if p.default is not inspect.Parameter.empty}
        return Scenario(spec, obj, inspect.getdoc(obj) or "", params, source=source)
    return None


def _from_file(path: Path, func: str, spec: str) -> Scenario:
    module, source = _load(path)
    sc = _as_scenario(getattr(module, func, None), spec, source)
    if sc is None:
        raise EmuError(f"{path} has no scenario function {func!r}")
    return sc


def file_scenarios(path: Path) -> dict[str, Scenario]:
    """The scenarios a file defines, by the spec that runs them (``path:function``): its
    ``@scenario`` objects and its own functions whose first parameter is the machine (named
    ``m`` or annotated ``Machine``)."""
    module, source = _load(path)
    found = {}
    for func, obj in vars(module).items():
        if func.startswith("_"):
            continue
        if not isinstance(obj, Scenario):
            if not inspect.isfunction(obj) or obj.__module__ != module.__name__:
                continue
            first = next(iter(inspect.signature(obj).parameters.values()), None)
            if first is None or (first.name != "m" and "Machine" not in str(first.annotation)):
                continue
        spec = f"{path}:{func}"
        found[spec] = _as_scenario(obj, spec, source)
    return found
