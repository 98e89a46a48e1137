"""Errors that are the user's mistake, not a finding.

The CLI prints them as one line and exits with status 2; the Python API raises them.
"""


class EmuError(Exception):
    """A usage or input error: unknown scenario, bad parameter, corrupt replay file..."""


class ScenarioError(EmuError):
    """The scenario itself is broken (for example an actor blocked on a raw Trio primitive)."""


class ReplayDivergence(EmuError):
    """A replayed decision list no longer fits the scenario it is replayed against."""


class Unsupported(EmuError):
    """The scenario cannot be built as asked (it needs what the chosen release lacks): a
    suite hunt skips it and says why; a hunt of that scenario alone stops with the reason."""
