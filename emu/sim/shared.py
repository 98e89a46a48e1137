"""Plain shared memory and object lifetimes, with every access traced.

A ``SharedVar`` is a word of memory that actors read and write without a lock of their
own: each access is a scheduling point and is recorded (actor, read/write, value), which is
what ``explain`` uses to name the conflicting pair; each is also an access of the step
(``accesses``): a read or a write of the variable. A ``KObject`` is an allocation with a
lifetime: using it after ``free`` is a use-after-free, freeing it twice a double free;
a use reads it, a free writes it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .trace import label

if TYPE_CHECKING:
    from .controller import Controller


class SharedVar:
    def __init__(self, ctl: Controller, name: str, value: Any = None) -> None:
        self._ctl = ctl
        self.name = name
        self.value = value

    def trace_label(self) -> str:
        return self.name

    async def read(self) -> Any:
        ctl = self._ctl
        await ctl.point(f"read {self.name}")
        if ctl.recorder.on:
            ctl.recorder.touch(self.name)
        ctl.trace.add(ctl.step, ctl.current.index, "access", "read", [self.name, label(self.value)])
        return self.value

    async def write(self, value: Any) -> None:
        ctl = self._ctl
        await ctl.point(f"write {self.name}")
        self.value = value
        if ctl.recorder.on:
            ctl.recorder.touch(self.name, True)
        ctl.trace.add(ctl.step, ctl.current.index, "access", "write", [self.name, label(value)])


class KObject:
    """A kmalloc'd object: ``use`` after ``free`` is a use-after-free."""

    def __init__(self, ctl: Controller, name: str) -> None:
        self._ctl = ctl
        self.name = name
        self.freed_by: str | None = None
        self.freed_at = 0

    def trace_label(self) -> str:
        return self.name

    async def use(self, what: str = "dereference") -> None:
        ctl = self._ctl
        await ctl.point(f"{what} {self.name}")
        if ctl.recorder.on:
            ctl.recorder.touch(self.name)
        if self.freed_by is not None:
            ctl.fail("use-after-free", f"{ctl.current.name}: {what} of {self.name}, freed by "
                     f"{self.freed_by} at step {self.freed_at}")
        ctl.trace.add(ctl.step, ctl.current.index, "access", "read", [self.name, "live"])

    def free(self) -> None:
        ctl = self._ctl
        if ctl.stopped:
            return
        who = ctl.current.name
        if self.freed_by is not None:
            ctl.fail("double-free", f"{who} frees {self.name}, already freed by {self.freed_by} "
                     f"at step {self.freed_at}")
        self.freed_by, self.freed_at = who, ctl.step
        if ctl.recorder.on:
            ctl.recorder.touch(self.name, True)
        ctl.trace.add(ctl.step, ctl.current.index, "access", "write", [self.name, "freed"])
