"""Sleeping mutexes, spinlocks and SRCU, as model primitives.

Acquisitions (``lock``, ``read_lock``, ``synchronize``) are scheduling points: the actor
announces the operation and is disabled until it can be performed. Releases (``unlock``,
``read_unlock``) cannot block and are immediate; every interleaving after a release is still
explored, at the releasing actor's next scheduling point. This keeps the step count, and so
PCT's k, small.

Every acquisition and release is a write of the lock (``accesses``); an RWSem's read
side and an SRCU reader's lock and unlock are reads, a grace period is a write.

Each acquisition goes through lockdep first (the kernel calls lock_acquire before it
blocks), and a sleeping acquisition while a spinlock is held is reported as the kernel's
"sleeping function called from invalid context".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .lockdep import Held

if TYPE_CHECKING:
    from .controller import Actor, Controller


def _release(actor: Actor, lock: Any, tag: Any = None) -> bool:
    """Drop the most recent held-lock entry for ``lock`` (and ``tag``); False if none."""
    for i in range(len(actor.held) - 1, -1, -1):
        held = actor.held[i]
        if held.lock is lock and (tag is None or held.tag == tag):
            del actor.held[i]
            return True
    return False


class Mutex:
    """A sleeping lock (``struct mutex``): ``mutex_lock`` may sleep, so not under a spinlock."""

    atomic = False
    acquire_op = "mutex_lock"
    release_op = "mutex_unlock"

    def __init__(self, ctl: Controller, name: str, lock_class: str | None = None) -> None:
        self._ctl = ctl
        self.name = name
        self.lock_class = lock_class or name
        self.owner: Actor | None = None
        self._acquire = f"{self.acquire_op} {name}"

    def trace_label(self) -> str:
        return self.name

    def holders(self) -> list[Actor]:
        return [self.owner] if self.owner is not None else []

    def is_locked(self) -> bool:
        return self.owner is not None

    def _free(self) -> bool:
        return self.owner is None

    async def lock(self) -> None:
        ctl = self._ctl
        actor = ctl.running()
        if not self.atomic:
            ctl.might_sleep(self.acquire_op, self.name)
        ctl.lockdep.acquire(actor, self)
        await ctl.point(self._acquire, self._free, self)
        self.owner = actor
        actor.held.append(Held(self, False, ctl.step))
        if ctl.recorder.on:
            ctl.recorder.touch(self.name, True)

    def unlock(self) -> None:
        ctl = self._ctl
        if ctl.stopped:
            return
        actor = ctl.current
        if self.owner is not actor:
            holder = self.owner.name if self.owner is not None else "nobody"
            ctl.fail("bad-unlock", f"{actor.name} calls {self.release_op}({self.name}), "
                     f"which is held by {holder}")
        self.owner = None
        _release(actor, self)
        if ctl.recorder.on:
            ctl.recorder.touch(self.name, True)

    async def __aenter__(self) -> None:
        await self.lock()

    async def __aexit__(self, *exc: object) -> None:
        self.unlock()


class SpinLock(Mutex):
    """A spinlock (``spinlock_t``): waiters spin; sleeping while holding it is a bug."""

    atomic = True
    acquire_op = "spin_lock"
    release_op = "spin_unlock"


class _Readers:
    """What a synchronize waits for: the grace period already in progress, and the readers
    of one SRCU index (``None``: the index that is inactive when asked)."""

    def __init__(self, srcu: SRCU, waiter: Actor, idx: int | None) -> None:
        self.srcu, self.waiter, self.idx = srcu, waiter, idx

    def holders(self) -> list[Actor]:
        srcu = self.srcu
        idx = srcu.idx ^ 1 if self.idx is None else self.idx
        gp = [srcu.gp_holder] if srcu.gp_holder not in (None, self.waiter) else []
        return gp + [a for a in srcu._ctl.live
                     if a is not self.waiter and any(h.lock is srcu and h.tag == idx
                                                     for h in a.held)]


class SRCU:
    """Sleepable RCU (``struct srcu_struct``).

    ``read_lock`` returns the index of the counter it incremented; ``read_unlock(idx)`` must
    be given it back. ``synchronize`` waits for every reader that began before it, as the
    kernel does: wait for the inactive index to drain, flip, wait for the old one. Grace
    periods are serialised.
    """

    atomic = False

    def __init__(self, ctl: Controller, name: str, lock_class: str | None = None) -> None:
        self._ctl = ctl
        self.name = name
        self.lock_class = lock_class or name
        self.idx = 0
        self.readers = [0, 0]
        self.gp_holder: Actor | None = None
        self._read_op = f"srcu_read_lock {name}"

    def trace_label(self) -> str:
        return self.name

    def held_by(self, actor: Actor) -> bool:
        """Is ``actor`` inside a read-side critical section of this SRCU?"""
        return any(h.lock is self for h in actor.held)

    async def read_lock(self) -> int:
        ctl = self._ctl
        actor = ctl.running()
        ctl.lockdep.acquire(actor, self, read=True)
        await ctl.point(self._read_op)
        idx = self.idx
        self.readers[idx] += 1
        actor.held.append(Held(self, True, ctl.step, idx))
        if ctl.recorder.on:
            ctl.recorder.touch(self.name)
        return idx

    def read_unlock(self, idx: int) -> None:
        ctl = self._ctl
        if ctl.stopped:
            return
        if not _release(ctl.current, self, idx):
            ctl.fail("srcu", f"{ctl.current.name} calls srcu_read_unlock({self.name}, {idx}) "
                     "without a matching srcu_read_lock")
        self.readers[idx] -= 1
        if ctl.recorder.on:
            ctl.recorder.touch(self.name)

    async def synchronize(self) -> None:
        ctl = self._ctl
        actor = ctl.running()
        ctl.might_sleep("synchronize_srcu", self.name)
        if self.held_by(actor):
            ctl.fail("deadlock", f"{actor.name} calls synchronize_srcu({self.name}) inside its "
                     "own read-side critical section")
        ctl.lockdep.acquire(actor, self)
        await ctl.point(f"synchronize_srcu {self.name}",
                        lambda: self.gp_holder is None and self.readers[self.idx ^ 1] == 0,
                        _Readers(self, actor, None))
        self.gp_holder = actor
        old = self.idx
        self.idx ^= 1
        if ctl.recorder.on:
            ctl.recorder.touch(self.name, True)
        await ctl.point(f"synchronize_srcu {self.name}: wait for readers of index {old}",
                        lambda: self.readers[old] == 0, _Readers(self, actor, old))
        self.gp_holder = None
        if ctl.recorder.on:
            ctl.recorder.touch(self.name, True)


class _ReadWait:
    """Whom a blocked reader waits for: the writer holding the semaphore, or the writers
    queued ahead of it."""

    def __init__(self, sem: RWSem) -> None:
        self.sem = sem

    @property
    def name(self) -> str:
        """The semaphore's name (what the wait reads, for the access relation)."""
        return self.sem.name

    def holders(self) -> list[Actor]:
        sem = self.sem
        return [sem.writer] if sem.writer is not None else list(sem.waiting_writers)


class RWSem:
    """A reader/writer semaphore (``struct rw_semaphore``, e.g. ``mmap_lock``).

    Readers share it, a writer excludes everyone. As in the kernel, a waiting writer blocks
    new readers (no writer starvation), so a reader that takes it twice while a writer queues
    can deadlock; lockdep therefore treats read acquisitions as ordinary (non-recursive) ones.
    """

    atomic = False

    def __init__(self, ctl: Controller, name: str, lock_class: str | None = None) -> None:
        self._ctl = ctl
        self.name = name
        self.lock_class = lock_class or name
        self.writer: Actor | None = None
        self.readers: list[Actor] = []
        self.waiting_writers: list[Actor] = []
        self._read_op, self._write_op = f"down_read {name}", f"down_write {name}"
        self._read_wait = _ReadWait(self)

    def trace_label(self) -> str:
        return self.name

    def holders(self) -> list[Actor]:
        """Whom a blocked writer waits for."""
        return ([self.writer] if self.writer is not None else []) + self.readers

    def _can_read(self) -> bool:
        return self.writer is None and not self.waiting_writers

    def _can_write(self) -> bool:
        return self.writer is None and not self.readers

    async def down_read(self) -> None:
        ctl = self._ctl
        actor = ctl.running()
        ctl.might_sleep("down_read", self.name)
        ctl.lockdep.acquire(actor, self)
        await ctl.point(self._read_op, self._can_read, self._read_wait)
        self.readers.append(actor)
        actor.held.append(Held(self, True, ctl.step))
        if ctl.recorder.on:
            ctl.recorder.touch(self.name)

    def up_read(self) -> None:
        ctl = self._ctl
        if ctl.stopped:
            return
        actor = ctl.current
        if actor not in self.readers:
            ctl.fail("bad-unlock", f"{actor.name} calls up_read({self.name}) without holding it")
        self.readers.remove(actor)
        _release(actor, self)
        if ctl.recorder.on:
            ctl.recorder.touch(self.name)

    async def down_write(self) -> None:
        ctl = self._ctl
        actor = ctl.running()
        ctl.might_sleep("down_write", self.name)
        ctl.lockdep.acquire(actor, self)
        self.waiting_writers.append(actor)
        if ctl.recorder.on:  # a queued writer holds new readers off
            ctl.recorder.touch(self.name, True)
        try:
            await ctl.point(self._write_op, self._can_write, self)
        finally:
            self.waiting_writers.remove(actor)
        self.writer = actor
        actor.held.append(Held(self, False, ctl.step))
        if ctl.recorder.on:
            ctl.recorder.touch(self.name, True)

    def up_write(self) -> None:
        ctl = self._ctl
        if ctl.stopped:
            return
        actor = ctl.current
        if self.writer is not actor:
            ctl.fail("bad-unlock", f"{actor.name} calls up_write({self.name}) without holding it")
        self.writer = None
        _release(actor, self)
        if ctl.recorder.on:
            ctl.recorder.touch(self.name, True)

    def downgrade_write(self) -> None:
        """Turn the caller's write hold into a read hold without letting a writer in."""
        ctl = self._ctl
        actor = ctl.current
        if self.writer is not actor:
            ctl.fail("bad-unlock", f"{actor.name} calls downgrade_write({self.name}) without "
                     "holding it for write")
        self.writer = None
        self.readers.append(actor)
        _release(actor, self)
        actor.held.append(Held(self, True, ctl.step))
        if ctl.recorder.on:
            ctl.recorder.touch(self.name, True)

    # the mm names
    mmap_read_lock = down_read
    mmap_read_unlock = up_read
    mmap_write_lock = down_write
    mmap_write_unlock = up_write
