"""The memory controller: performs page copies, at a virtual-time cost per page.

Content is encrypted when it leaves secure memory and decrypted when it enters it. A copy
in flight is a real window: the requester waits on a completion while other actors run. The
copy itself (the memory controller's step when its time is up) reads the source frame and
writes the destination, as the access relation's ``frame:<kind>:<pfn>`` names the requester
gives (``copy(names=...)``).
"""

from __future__ import annotations

import attrs

from ..hw.memory import Frame
from ..sim import Machine, accesses
from ..sim.channel import Completion


@attrs.define(eq=False)
class CopyRequest:
    src: Frame
    dst: Frame
    into_secure: bool
    done: Completion
    names: tuple[str, str] = ("", "")
    """The frames' names in the access relation (source, destination; "": none)."""

    def trace_label(self) -> str:
        return "page-in copy" if self.into_secure else "page-out copy"


class MemoryController:
    def __init__(self, m: Machine, copy_ns: int) -> None:
        self.m = m
        self.copy_ns = copy_ns
        self.requests = m.channel("memctl", capacity=8)
        self._mine: dict[str, CopyRequest] = {}
        """Requesting actor -> its request, reused: an actor waits for its copy."""
        self.copies = 0
        m.spawn("memctl", self.run, group="hardware", daemon=True)

    async def run(self) -> None:
        while True:
            req: CopyRequest = await self.requests.receive()
            await self.m.sleep(self.copy_ns)
            if accesses.current.on:
                src, dst = req.names
                if src:
                    accesses.current.touch(src)
                if dst:
                    accesses.current.touch(dst, True)
            req.dst.copy_from(req.src, encrypt=not req.into_secure)
            self.copies += 1
            req.done.complete()

    async def copy(self, src: Frame, dst: Frame, *, into_secure: bool,
                   names: tuple[str, str] = ("", "")) -> None:
        """Copy one page and wait for it (called by the requesting actor); ``names``: the
        frames' names in the access relation (source, destination)."""
        actor = self.m.ctl.running().name
        req = self._mine.get(actor)
        if req is None:
            req = self._mine[actor] = CopyRequest(src, dst, into_secure,
                                                  self.m.completion("copy done"), names)
        else:
            req.src, req.dst, req.into_secure, req.names = src, dst, into_secure, names
        await self.requests.send(req)
        await req.done.wait_for_completion()
