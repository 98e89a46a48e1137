"""The deterministic concurrency engine. It knows nothing of hypervisors.

``controller`` owns the decisions, ``locks``/``channel``/``shared`` are the model primitives,
``lockdep`` checks lock order, ``strategies`` choose, ``trace``/``perfetto``/``explain``
show what happened, ``scenario``/``runner``/``replay`` are what users drive.
"""

from .controller import Actor, Controller
from .machine import Machine
from .runner import HuntResult, RunResult, hunt, run
from .scenario import Param, Scenario, resolve, scenario
from .violations import Violation

__all__ = ["Actor", "Controller", "HuntResult", "Machine", "Param", "RunResult", "Scenario",
           "Violation", "hunt", "resolve", "run", "scenario"]
