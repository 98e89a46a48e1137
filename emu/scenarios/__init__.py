"""The built-in scenarios; importing this package registers them by name.

Suites group them: ``emu hunt svm`` hunts every POWER secure-VM scenario in turn.
"""

from . import engine_demos, svm

SUITES = {
    "svm": (svm, "POWER secure VMs: every scenario of seeds 000, 001 and 004"),
    "engine": (engine_demos, "the engine demos"),
}
