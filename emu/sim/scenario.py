"""Scenarios: the registry, the ``@scenario`` decorator, parameters, quirks, and loading a
scenario from ``path/to/file.py:function``."""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
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
        return value


@attrs.frozen
class Scenario:
    name: str
    build: Callable[..., None]
    description: str = ""
    params: Mapping[str, Param] = attrs.field(factory=dict)
    quirks: Mapping[str, str] = attrs.field(factory=dict)
    """quirk name -> what it puts back (commit, symptom, the invariant that catches it)."""
    max_steps: int = 10_000

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


REGISTRY: dict[str, Scenario] = {}


def scenario(name: str | None = None, *, params: Mapping[str, Any] | None = None,
             quirks: Mapping[str, str] | None = None, max_steps: int = 10_000,
             description: str | None = None) -> Callable[[Callable[..., None]], Scenario]:
    """Declare a scenario: ``build(machine, **params)`` spawns actors and adds invariants.

    ``params`` maps a name to a ``Param`` or to a bare default value.
    """

    def decorate(build: Callable[..., None]) -> Scenario:
        declared = {k: v if isinstance(v, Param) else Param(v) for k, v in (params or {}).items()}
        doc = description if description is not None else (inspect.getdoc(build) or "")
        sc = Scenario(name or build.__name__.replace("_", "-"), build, doc, declared,
                      dict(quirks or {}), max_steps)
        old = REGISTRY.get(sc.name)
        if old is not None and old.build.__qualname__ != build.__qualname__:
            raise ValueError(f"two scenarios named {sc.name!r}")
        REGISTRY[sc.name] = sc
        return sc

    return decorate


def builtin_scenarios() -> dict[str, Scenario]:
    """The scenarios that ship with emu (what ``emu list`` shows)."""
    importlib.import_module("emu.scenarios")
    return {name: sc for name, sc in sorted(REGISTRY.items())
            if sc.build.__module__.startswith("emu.scenarios")}


def suites() -> dict[str, tuple[str, list[str]]]:
    """Suite name -> (what it is, its scenarios' names)."""
    module = importlib.import_module("emu.scenarios")
    known = builtin_scenarios()
    return {name: (text, [n for n, sc in known.items() if sc.build.__module__ == mod.__name__])
            for name, (mod, text) in module.SUITES.items()}


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


def _from_file(path: Path, func: str, spec: str) -> Scenario:
    if not path.is_file():
        raise EmuError(f"no scenario file {str(path)!r}")
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    module_name = f"emu_user_{path.stem}_{digest}"
    module = sys.modules.get(module_name)
    if module is None:
        loader = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loader)
        try:
            loader.loader.exec_module(module)
        except Exception as exc:
            raise EmuError(f"cannot load {path}: {type(exc).__name__}: {exc}") from None
        sys.modules[module_name] = module
    obj = getattr(module, func, None)
    if isinstance(obj, Scenario):
        return attrs.evolve(obj, name=spec)
    if callable(obj):
        sig = inspect.signature(obj)
        params = {n: Param(p.default) for n, p in list(sig.parameters.items())[1:]
                  if p.default is not inspect.Parameter.empty}
        return Scenario(spec, obj, inspect.getdoc(obj) or "", params)
    raise EmuError(f"{path} has no scenario function {func!r}")
