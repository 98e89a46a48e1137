"""Engine demos: three small races every concurrency tool should find, and their fixes.

- ``lost-update``: non-atomic increments of a shared counter (fixed by ``-p locked=true``);
- ``abba``: two mutexes taken in opposite orders (fixed by ``-p ordered=true``);
- ``srcu-uaf``: an SRCU-protected object freed under a reader (quirk ``no-synchronize``);
- ``trylock-livelock``: two CPUs take two locks in opposite orders with a trylock and back
  off on failure, live under a fair schedule; quirk ``no-backoff`` keeps the first lock
  while spinning on the second, a livelock reported with its repeating cycle.
"""

from __future__ import annotations

from ..sim import Machine, Param, scenario
from ..sim.locks import Mutex

MAX_ACTORS = 2048
"""Each decision looks at every live actor, so a schedule's time grows with the square of
their number: a few thousand take minutes."""

SUITE = "the engine demos"
"""What ``emu list`` says of the suite (entry point in pyproject.toml)."""


def _trace_memory(steps: int, actors: int) -> int:
    """40 MB for emu itself, 13 KB an actor, 300 bytes a step of trace."""
    return 40 * 2**20 + 13 * 2**10 * actors + 300 * steps


def _lost_update_steps(p: dict) -> int:
    return p["actors"] * (1 + 4 * p["increments"])


@scenario("lost-update", max_steps=lambda p: 10_000 + 4 * _lost_update_steps(p),
          memory=lambda p: _trace_memory(_lost_update_steps(p), p["actors"]), params={
    "actors": Param(3, "workers incrementing the counter", minimum=1, maximum=MAX_ACTORS),
    "increments": Param(1, "increments per worker", minimum=1),
    "locked": Param(False, "protect each read-modify-write with a mutex"),
})
def lost_update(m: Machine, actors: int, increments: int, locked: bool) -> None:
    """Workers do non-atomic increments of a shared counter; the final value must equal the
    number of increments."""
    counter = m.shared("counter", 0)
    lock = m.mutex("counter_lock")

    async def worker() -> None:
        for _ in range(increments):
            if locked:
                await lock.lock()
            value = await counter.read()
            await counter.write(value + 1)
            m.counter("counter", value + 1)
            if locked:
                lock.unlock()

    for i in range(actors):
        m.spawn(f"worker{i}", worker)
    expected = actors * increments
    m.final("counter", lambda: None if counter.value == expected else
            f"counter is {counter.value} after {expected} increments: an update was lost")


@scenario("abba", params={
    "ordered": Param(False, "both CPUs take lock_a before lock_b (the fix)"),
})
def abba(m: Machine, ordered: bool) -> None:
    """Two CPUs take two mutexes in opposite orders: lockdep reports the inversion in any
    schedule where both orders occur, and some schedules deadlock outright."""
    a, b = m.mutex("lock_a"), m.mutex("lock_b")

    async def taker(first: Mutex, second: Mutex) -> None:
        await first.lock()
        await second.lock()
        second.unlock()
        first.unlock()

    m.spawn("cpu0", taker, a, b)
    m.spawn("cpu1", taker, *((a, b) if ordered else (b, a)))


@scenario("srcu-uaf", max_steps=lambda p: 10_000 + 20 * p["readers"],
          memory=lambda p: _trace_memory(5 * p["readers"], p["readers"]), params={
    "readers": Param(2, "reader actors", minimum=1, maximum=MAX_ACTORS),
}, quirks={
    "no-synchronize": "the updater frees the old object without synchronize_srcu(), so a "
                      "reader still inside its read-side section dereferences freed memory "
                      "(caught as use-after-free; the pattern of B7's unprotected memslot reads)",
})
def srcu_uaf(m: Machine, readers: int) -> None:
    """Readers dereference an SRCU-protected object while an updater publishes a new one and
    frees the old."""
    srcu = m.srcu("kvm->srcu")
    old, new = m.kobject("memslots#1"), m.kobject("memslots#2")
    published = m.shared("kvm->memslots", old)

    async def reader() -> None:
        idx = await srcu.read_lock()
        slots = await published.read()
        await slots.use("dereference")
        srcu.read_unlock(idx)

    async def updater() -> None:
        stale = await published.read()
        await published.write(new)
        if not m.quirk("no-synchronize"):
            await srcu.synchronize()
        stale.free()

    for i in range(readers):
        m.spawn(f"reader{i}", reader)
    m.spawn("updater", updater)


class _BitLock:
    """A lock taken only by trylock (``test_and_set_bit_lock``): a CPU that wants it spins
    on the trylock itself, so it is never blocked and no deadlock can be seen, only a
    livelock."""

    def __init__(self, m: Machine, name: str) -> None:
        self.m, self.name = m, name
        self.owner: str | None = None

    async def trylock(self, who: str) -> bool:
        await self.m.point(f"spin_trylock {self.name}")
        self.m.touch(self.name, self.owner is None)
        if self.owner is not None:
            return False
        self.owner = who
        return True

    async def lock(self, who: str) -> None:
        while not await self.trylock(who):
            await self.m.yield_point(f"cpu_relax ({self.name} busy)")

    def unlock(self) -> None:
        self.m.touch(self.name, True)
        self.owner = None


@scenario("trylock-livelock", max_steps=2_000, params={
    "rounds": Param(1, "times each CPU takes both locks", minimum=1, maximum=64),
}, quirks={
    "no-backoff": "a CPU whose spin_trylock of its second lock fails spins on it still "
                  "holding its first, instead of dropping the first and retrying (the "
                  "trylock-and-back-off pattern): once each CPU holds its first lock, both "
                  "spin for ever, each on the lock the other holds (a livelock: both keep "
                  "running, so no deadlock is seen), reported with its repeating cycle",
})
def trylock_livelock(m: Machine, rounds: int) -> None:
    """Two CPUs take lock_a and lock_b in opposite orders, the second with a trylock; on
    failure a CPU backs off (drops its first lock) and retries. In lock-step (both take
    their first lock, both fail the trylock, both back off...) they retry for ever, as
    long as the schedule keeps them in step; any fair schedule lets one of them through. A
    monitor is hot from each attempt to its unlock: a CPU that never gets both is named."""
    a, b = _BitLock(m, "lock_a"), _BitLock(m, "lock_b")
    sections = 0  # critical sections done (the state fingerprint's progress)
    backoff = not m.quirk("no-backoff")

    async def cpu(me: str, first: _BitLock, second: _BitLock) -> None:
        nonlocal sections
        for _ in range(rounds):
            m.hot("lock pair", me, f"{first.name} then {second.name}")
            while True:
                await first.lock(me)
                if await second.trylock(me):
                    break
                if backoff:  # (a step of its own: the CPUs can back off in lock-step)
                    await m.yield_point(f"back off: spin_unlock {first.name}")
                    first.unlock()
                    continue
                await second.lock(me)
                break
            sections += 1
            second.unlock()
            first.unlock()
            m.cold("lock pair", me)

    m.spawn("cpu0", cpu, "cpu0", a, b)
    m.spawn("cpu1", cpu, "cpu1", b, a)
    m.state_fingerprint(lambda: (a.owner, b.owner, sections))
