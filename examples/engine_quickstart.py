"""A scripted multi-actor example on the engine alone: two vCPUs share a counter.

Run it:            python examples/engine_quickstart.py
Or hunt it:        emu hunt examples/engine_quickstart.py:racy_counter --quirk no-lock
"""

from __future__ import annotations

import emu


@emu.scenario(params={"vcpus": emu.Param(2, "vCPUs incrementing", minimum=1)},
              quirks={"no-lock": "increment without taking stats_lock (the bug)"})
def racy_counter(m: emu.Machine, vcpus: int) -> None:
    """vCPUs increment a shared statistics counter, under stats_lock unless the quirk is on."""
    counter, lock = m.shared("stat", 0), m.mutex("stats_lock")
    locked = not m.quirk("no-lock")

    async def vcpu() -> None:
        if locked:
            await lock.lock()
        value = await counter.read()
        await counter.write(value + 1)
        if locked:
            lock.unlock()

    for i in range(vcpus):
        m.spawn(f"vcpu{i}", vcpu)
    m.final("stat", lambda: None if counter.value == vcpus else
            f"stat is {counter.value}, expected {vcpus}")


if __name__ == "__main__":
    clean = emu.hunt(racy_counter, schedules=500)
    print(f"with stats_lock: {clean.schedules} schedules, "
          f"{'clean' if clean.ok else 'VIOLATION'}")
    found = emu.hunt(racy_counter, schedules=500, quirks=["no-lock"]).found
    print(f"without it: found in seed {found.seed}: {found.violation.message}")
    print(found.trace.timeline())
