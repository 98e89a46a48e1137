"""``pkvm-boot``: the host's first touches of its memory while pages go to EL2 and back."""

from __future__ import annotations

from ...actors.pkvm_cpu import HostCpu
from ...pkvm.mem_protect import __pkvm_host_donate_hyp, __pkvm_hyp_donate_host
from ...sim import Machine, Param
from .common import machine, pkvm_scenario

QUIRK_SCENARIO = {"pgd-refcount": "pkvm-boot"}
QUIRK_PARAMS: dict[str, dict[str, object]] = {}
DONATED = 12
"""The first of the two pages the last CPU donates (beyond every toucher's pages)."""


@pkvm_scenario("pkvm-boot",
               cpus=Param(3, "host CPUs (the last one donates)", minimum=2, maximum=6),
               rounds=Param(2, "donate-and-reclaim rounds", minimum=1, maximum=8))
def pkvm_boot(m: Machine, cpus: int, rounds: int) -> None:
    """Every host CPU but the last touches four pages of memory for the first time, its
    window overlapping its neighbour's (the same faults race inside EL2: one CPU idmaps,
    the other finds the entry valid, -EAGAIN, and retries). The last CPU donates two pages
    to the hypervisor and takes them back, as a VM's creation and teardown do, ``rounds``
    times, touching the pages between rounds (each reclaim clears the annotation, so the
    next touch faults them in again). A trusted host never touches a page it gave away."""
    mach = machine(m, host_cpus=cpus)
    mach.require("has_host_donation", "__pkvm_host_donate_hyp (host-to-hyp donation)")
    first = mach.page(DONATED) >> 12

    async def toucher(cpu: HostCpu) -> None:
        for n in range(2 * cpu.index, 2 * cpu.index + 4):
            await cpu.access(mach.page(n), write=bool(n & 1))

    async def donor(cpu: HostCpu) -> None:
        for _ in range(rounds):
            await cpu.el2(__pkvm_host_donate_hyp, first, 2)
            await cpu.el2(__pkvm_hyp_donate_host, first, 2)
            await cpu.access(mach.page(DONATED + 1), write=True)

    for i in range(cpus - 1):
        mach.host(i, toucher)
    mach.host(cpus - 1, donor)
