"""``concurrent-aborts``: host CPUs fault on the same pages while one moves a VA away."""

from __future__ import annotations

from ...actors.pkvm_cpu import HostCpu
from ...pkvm.errno_base import EFAULT
from ...sim import Machine, Param
from .common import machine, pkvm_scenario

QUIRK_SCENARIO = {"abort-bug-on": "concurrent-aborts"}
QUIRK_PARAMS: dict[str, dict[str, object]] = {}
PAGES = 4


@pkvm_scenario("concurrent-aborts", cpus=Param(3, "host CPUs", minimum=2, maximum=6))
def concurrent_aborts(m: Machine, cpus: int) -> None:
    """Every host CPU touches the same four pages for the first time, each starting at
    its own page, so their stage-2 faults race inside EL2 (the first idmaps, the others find
    the entry valid: -EAGAIN, and retry). The last CPU also unmaps page 1's VA from its own
    stage-1 and maps it back (a vunmap and a remap), under the other CPUs' aborts: the AT
    walk that resolves a fault's address can then fail, which must send the host back to
    retry, not BUG (B12). An access that finds the VA unmapped is the host kernel's own
    fault (-EFAULT), which it handles itself."""
    mach = machine(m, host_cpus=cpus, accept={"access": {-EFAULT}})
    pages = [mach.page(i) for i in range(PAGES)]

    async def toucher(cpu: HostCpu) -> None:
        for i in range(PAGES):
            await cpu.access(pages[(cpu.index + i) % PAGES])

    async def remapper(cpu: HostCpu) -> None:
        await cpu.remap(pages[1], None)
        await cpu.remap(pages[1], pages[1])
        await toucher(cpu)

    for i in range(cpus - 1):
        mach.host(i, toucher)
    mach.host(cpus - 1, remapper)
