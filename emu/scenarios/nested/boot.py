"""``nested-boot``: two L1 vCPUs create one L2 guest together and each runs a vCPU of it
(the case of two L1 vCPUs entering the same L2 lpid concurrently)."""

from __future__ import annotations

from ...actors.guest_code import Ld, Map, St
from ...actors.l1_hypervisor import L1Hypervisor
from ...sim import Machine, Param
from .common import EA, boot_guest, machine, nested_scenario, other_group

QUIRK_SCENARIO = {"create-race-fails": "nested-boot"}
QUIRK_PARAMS: dict[str, dict[str, object]] = {}


@nested_scenario("nested-boot", touch=Param(
    True, "the L2 vCPUs map, store and load a page (false: they enter and cede at once, the "
    "smallest nested schedule, e.g. for emu explore)"))
def nested_boot(m: Machine, topology: str, moves: int, touch: bool) -> None:
    """Two L1 vCPUs (in different TLB groups) each run one vCPU of L2 guest 1, which they
    create together: it maps a page of its own, stores and loads it back. Every fault is
    L1's first touch of the page."""
    mach = machine(m, topology, moves)
    booted = m.completion("L1 booted")

    async def l1(h: L1Hypervisor) -> None:
        if h.vcpu == 0:
            await boot_guest(h)
            booted.complete_all()
        await booted.wait_for_completion()
        ea, gpa = EA + (h.vcpu << 16), (h.vcpu + 1) << 16
        v = h.l2_vcpu(1, h.vcpu, [Map(ea, gpa), St(ea, 10 + h.vcpu), Ld(ea, 10 + h.vcpu)]
                      if touch else [])
        await h.run(v)  # anything but the program's last H_CEDE is a return-code finding

    mach.l1_vcpu(l1, 0)
    mach.l1_vcpu(l1, other_group(mach))
