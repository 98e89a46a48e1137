"""emu: an actor-based concurrent emulator of hypervisor memory management, built to find races.

    import emu

    @emu.scenario(params={"workers": 2})
    def my_race(m: emu.Machine, workers: int) -> None:
        ...

    result = emu.hunt(my_race, schedules=500, seed=1)
"""

__version__ = "0.1.0"

from .errors import EmuError
from .sim import (
    HuntResult,
    Machine,
    Param,
    RunResult,
    Scenario,
    Violation,
    hunt,
    run,
    scenario,
)

__all__ = ["EmuError", "HuntResult", "Machine", "Param", "RunResult", "Scenario", "Violation",
           "__version__", "hunt", "run", "scenario"]
