"""What every step reads and writes: the access relation that partial-order reduction,
shrinking and explanations work on.

An *access* is ``(name, is_write)``: ``name`` is a stable name of a piece of shared state
("s2:0x8000:3", "tlb:cpu1:lpid2", "gfn:1:0x5", a lock's name), the same in every run of the
same schedule (never an ``id()`` or an object's repr). A *step* is what the chosen actor does
from the decision that picked it to its next scheduling point; its accesses are the set of
objects it read and the set it wrote (``StepAccesses``). Two steps are *dependent* when they
touch a common object and at least one of them writes it: only then can swapping them
change the outcome.

Who reports what:

| source                   | read                   | write                               |
|--------------------------|------------------------|-------------------------------------|
| Mutex / SpinLock         |                        | lock, unlock                        |
| RWSem                    | down_read, up_read     | down_write (and its queueing),      |
|                          |                        | up_write, downgrade_write           |
| SRCU                     | read_lock, read_unlock | synchronize (both of its waits)     |
| Channel                  |                        | send, receive                       |
| Completion               | wait (complete_all     | complete, complete_all, reinit,     |
|                          | done: takes nothing)   | wait (otherwise)                    |
| SharedVar                | read                   | write                               |
| KObject                  | use                    | free                                |
| virtual time (``clock``) | the step after a sleep | a sleep's timer, a timer step       |
| model, hardware state    | ``touch(name)``        | ``touch(name, True)``               |

Recording costs a set insertion per access, and nothing but a flag test when off: the
controller records only when asked (``Controller(record=True)``, or a strategy whose
``wants_accesses`` is true). Code that has the controller reports through ``ctl.touch`` /
``Machine.touch``; hardware and hypervisor state, which has no controller at hand, reports
through ``current``, the recorder of the schedule running now (schedules run one after
another, never two at once), testing ``current.on`` before it builds a name.
"""

from __future__ import annotations

from typing import NamedTuple

Access = tuple[str, bool]
"""(stable object name, is_write)."""

CHECK = "check:"
"""The prefix of the checks' own bookkeeping (which calls overlapped, what a guest believes
of its memory): dependent like any state, since a verdict can hang on the order, but no
race of the model's; conflict-guided search does not aim at it."""


class StepAccesses(NamedTuple):
    """The objects one step read and the objects it wrote (an object both read and
    written is in both). Frozensets of strings: compare them, never iterate them to
    decide anything (their order varies between processes); ``accesses`` is sorted."""

    reads: frozenset[str]
    writes: frozenset[str]

    def accesses(self) -> list[Access]:
        """Every access, sorted by name, a write before a read of the same name."""
        return sorted([(n, True) for n in self.writes] + [(n, False) for n in self.reads],
                      key=lambda a: (a[0], not a[1]))


NONE = StepAccesses(frozenset(), frozenset())
"""A step that touched nothing shared."""


def dependent(a: StepAccesses, b: StepAccesses) -> bool:
    """Do the two steps conflict: a common object, written by at least one of them?"""
    return not (a.writes.isdisjoint(b.writes) and a.writes.isdisjoint(b.reads)
                and a.reads.isdisjoint(b.writes))


def conflicts(a: StepAccesses, b: StepAccesses) -> list[str]:
    """The objects on which the two steps conflict, sorted (empty: independent)."""
    return sorted((a.writes & (b.writes | b.reads)) | (a.reads & b.writes))


class Recorder:
    """Collects the accesses of the step in progress and closes each step at the next
    decision. ``on`` false: ``touch`` records nothing and ``steps`` stays empty."""

    __slots__ = ("on", "reads", "steps", "writes")

    def __init__(self, on: bool = False) -> None:
        self.on = on
        self.reads: set[str] = set()
        self.writes: set[str] = set()
        self.steps: list[StepAccesses] = []
        """Step ``i`` (1-based) is ``steps[i - 1]``: every step closed so far."""

    def touch(self, name: str, write: bool = False) -> None:
        """The step in progress reads (or writes) the object ``name``."""
        if self.on:
            (self.writes if write else self.reads).add(name)

    def close(self, step: int) -> None:
        """A decision: the accesses made since the last one belong to step ``step`` (the
        last step taken; 0: none yet, what was touched while building is dropped). Closing
        a step twice adds nothing."""
        if len(self.steps) < step:
            self.steps.append(StepAccesses(frozenset(self.reads), frozenset(self.writes))
                              if self.reads or self.writes else NONE)
        if self.reads:
            self.reads.clear()
        if self.writes:
            self.writes.clear()


OFF = Recorder()
"""The recorder in force between recorded schedules: never on."""

current: Recorder = OFF
"""The recorder of the schedule running now (the controller sets it for the duration of
its run). Hardware and hypervisor state reports through it:
``if accesses.current.on: accesses.current.touch(f"tlb:cpu{cpu}:lpid{lpid}", True)``."""
