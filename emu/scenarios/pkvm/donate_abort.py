"""``donate-vs-abort``: a page donated to EL2 while host CPUs fault and probe beside it."""

from __future__ import annotations

from ...actors.pkvm_cpu import HostCpu
from ...pkvm.mem_protect import __pkvm_host_donate_hyp, __pkvm_hyp_donate_host
from ...sim import Machine
from .common import machine, pkvm_scenario

QUIRK_SCENARIO = {"set-owner-no-tlbi": "donate-vs-abort"}
QUIRK_PARAMS: dict[str, dict[str, object]] = {}
REFUSED = "window: a probe after the donation was refused"


@pkvm_scenario("donate-vs-abort")
def donate_vs_abort(m: Machine) -> None:
    """CPU0 writes page Q (its TLB now holds Q's translation), then, as a host that means
    harm, probes Q twice during the donation and twice after it. Once CPU0 has written it,
    CPU1 donates Q to the hypervisor and takes it back. CPU2 touches Q's neighbour P
    throughout, so its aborts idmap beside the donation's break-before-make. A probe may
    reach Q only while the host owns it: the donation's annotation must take CPU0's TLB
    entry with it."""
    mach = machine(m, host_cpus=3)
    mach.require("has_host_donation", "__pkvm_host_donate_hyp (host-to-hyp donation)")
    p, q = mach.page(0), mach.page(1)
    touched, donated = m.completion("Q written"), m.completion("Q donated")

    async def probes(cpu: HostCpu) -> None:
        for _ in range(2):
            if not await cpu.probe(q):
                m.note(REFUSED)

    async def prober(cpu: HostCpu) -> None:
        await cpu.access(q, write=True)
        touched.complete_all()
        await probes(cpu)
        await donated.wait_for_completion()
        await probes(cpu)

    async def donor(cpu: HostCpu) -> None:
        await touched.wait_for_completion()
        await cpu.el2(__pkvm_host_donate_hyp, q >> 12, 1)
        donated.complete_all()
        await cpu.el2(__pkvm_hyp_donate_host, q >> 12, 1)

    async def neighbour(cpu: HostCpu) -> None:
        for _ in range(2):
            await cpu.access(p, write=True)

    mach.host(0, prober)
    mach.host(1, donor)
    mach.host(2, neighbour)
