"""arm64 pKVM scenarios (seed 003): host CPUs whose stage-2 EL2 idmaps on demand, pages
shared, donated and pinned between the host and the hypervisor, and non-protected guests
sharing host pages, on the ownership model of v6.16 (``--kernel`` for older releases).

One module per scenario; ``common`` holds what they share. Each module says which quirks
its scenario finds (``QUIRK_SCENARIO``); this package merges them, so every quirk has
exactly one scenario that hunts it down.
"""

from __future__ import annotations

from ...sim.scenario import quirk_claims
from . import aborts, boot, donate_abort, guest_storm, share_pin
from .common import QUIRKS

SUITE = "arm64 pKVM: seed 003 (host stage-2 ownership, share/donate/pin, guests)"
"""What ``emu list`` says of the suite (entry point in pyproject.toml)."""

_MODULES = (boot, donate_abort, share_pin, aborts, guest_storm)
QUIRK_SCENARIO, QUIRK_PARAMS = quirk_claims(_MODULES)

SMALLEST = ("donate-vs-abort", {}, "set-owner-no-tlbi")
"""The suite's smallest schedule (scenario, parameters, the quirk it claims): what
``emu explore`` exhausts within 2 preemptions in the README's table."""

__all__ = ["QUIRKS", "QUIRK_PARAMS", "QUIRK_SCENARIO", "SMALLEST", "SUITE"]
