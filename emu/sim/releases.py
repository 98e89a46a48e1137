"""A modelled system's versions and the history of each quirk across them.

A quirk (a historic bug the model can switch on) is on in a version R exactly when
``introduced_in <= R < fixed_in``; versions are dotted numbers ("v5.14", "v6.16"). The
model supplies the histories; ``scenario.Releases`` keys ``--kernel`` on them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs


def version(name: str) -> tuple[int, ...]:
    return tuple(int(x) for x in name.lstrip("v").split("."))


@attrs.frozen
class QuirkHistory:
    bug: str
    introduced: str | None
    """The introducing commit (None: unknown or never merged)."""
    introduced_in: str | None
    """The first release with the bug (None: in no release)."""
    fixed: str | None
    fixed_in: str | None
    """The first release without it (None: still upstream)."""
    source: str
    """Where the facts come from, and what is unconfirmed."""

    def in_release(self, name: str) -> bool:
        if self.introduced_in is None:
            return False
        v = version(name)
        return version(self.introduced_in) <= v and (
            self.fixed_in is None or v < version(self.fixed_in))


def quirk_matrix(history: Mapping[str, QuirkHistory], names: Sequence[str], width: int,
                 col: int = 7) -> list[str]:
    """A release x quirk table's head and one row per quirk of ``history`` ("x": the
    release has it), each row labelled with the bug id and quirk in ``width`` characters,
    a release ``col`` wide, and a last column for the default model, which has none."""
    lines = [f"{'':<{width}}" + "".join(f"{n:>{col}}" for n in names) + "  default"]
    for q, h in history.items():
        cells = "".join(f"{'x' if h.in_release(n) else '.':>{col}}" for n in names)
        lines.append(f"{h.bug + ' ' + q:<{width}}{cells}{'.':>9}")
    return lines


def release_bugs(history: Mapping[str, QuirkHistory], release: str | None) -> tuple[str, ...]:
    """The quirks of ``history`` that ``release`` has, sorted (none for None: the default
    model, which has every fix)."""
    if release is None:
        return ()
    return tuple(sorted(q for q, h in history.items() if h.in_release(release)))
