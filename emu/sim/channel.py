"""Bounded channels (actor mailboxes) and completions.

``send`` is disabled while the channel is full, ``receive`` while it is empty; both may
sleep, unless told ``sleeps=False``: a hardware hand-off such as a ucall, where the calling
CPU spins in firmware rather than sleeping, and which is therefore legal under a spinlock.
Every message gets a flow id, so the Perfetto trace draws an arrow from the send to
the receive. A completion is the kernel's ``struct completion``: ``complete`` adds one
"done", ``complete_all`` makes every present and future wait pass, and
``wait_for_completion`` consumes one "done". Sending and receiving write the channel;
completing and waiting write the completion (``accesses``).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from .controller import Sleepers
from .trace import label

if TYPE_CHECKING:
    from .controller import Actor, Controller


class Channel(Sleepers):
    __slots__ = ("_queue", "_recv_op", "_send_op", "capacity", "name")

    def __init__(self, ctl: Controller, name: str, capacity: int = 1) -> None:
        if capacity < 1:
            raise ValueError(f"channel {name!r}: capacity must be at least 1")
        super().__init__(ctl)
        self.name = name
        self.capacity = capacity
        self._queue: deque[tuple[int, Any]] = deque()
        self._send_op, self._recv_op = f"send {name}", f"recv {name}"

    def trace_label(self) -> str:
        return self.name

    def __len__(self) -> int:
        return len(self._queue)

    def holders(self) -> list[Actor]:
        return []

    def _has_room(self) -> bool:
        return len(self._queue) < self.capacity

    def _has_message(self) -> bool:
        return bool(self._queue)

    async def send(self, message: Any, *, sleeps: bool = True) -> None:
        ctl = self._ctl
        if sleeps and (ctl.stopped or ctl.current.held):
            ctl.might_sleep("send", self.name)
        await ctl.point(self._send_op, self._has_room, self)
        flow = ctl.next_flow()
        self._queue.append((flow, message))
        if self.sleepers:
            self.changed()
        if ctl.recorder.on:
            ctl.recorder.touch(self.name, True)
        ctl.trace.add(ctl.step, ctl.current.index, "send", self.name, [flow, label(message)])

    async def receive(self) -> Any:
        ctl = self._ctl
        if ctl.stopped or ctl.current.held:
            ctl.might_sleep("receive", self.name)
        await ctl.point(self._recv_op, self._has_message, self)
        flow, message = self._queue.popleft()
        if self.sleepers:
            self.changed()
        if ctl.recorder.on:
            ctl.recorder.touch(self.name, True)
        ctl.trace.add(ctl.step, ctl.current.index, "recv", self.name, [flow, label(message)])
        return message


class Completion(Sleepers):
    __slots__ = ("_completed", "_wait_op", "done", "name")
    _ALL = float("inf")

    def __init__(self, ctl: Controller, name: str) -> None:
        super().__init__(ctl)
        self.name = name
        self.done: float = 0
        self._wait_op, self._completed = f"wait_for_completion {name}", f"complete({name})"

    def trace_label(self) -> str:
        return self.name

    def holders(self) -> list[Actor]:
        return []

    def complete(self) -> None:
        if self._ctl.stopped:
            return
        self.done += 1
        if self.sleepers:
            self.changed()
        if self._ctl.recorder.on:
            self._ctl.recorder.touch(self.name, True)
        self._ctl.annotate("note", self._completed)

    def complete_all(self) -> None:
        if self._ctl.stopped:
            return
        self.done = self._ALL
        self.changed()
        if self._ctl.recorder.on:
            self._ctl.recorder.touch(self.name, True)
        self._ctl.annotate("note", f"complete_all({self.name})")

    def reinit(self) -> None:
        self.done = 0
        self.changed()
        if self._ctl.recorder.on:
            self._ctl.recorder.touch(self.name, True)

    def _is_done(self) -> bool:
        return self.done > 0

    async def wait_for_completion(self, *, sleeps: bool = True) -> None:
        ctl = self._ctl
        if sleeps and (ctl.stopped or ctl.current.held):
            ctl.might_sleep("wait_for_completion", self.name)
        await ctl.point(self._wait_op, self._is_done, self)
        self.done -= 1
        if self.sleepers:
            self.changed()
        if ctl.recorder.on:  # after complete_all, waiting takes nothing: waiters commute
            ctl.recorder.touch(self.name, self.done != self._ALL)
