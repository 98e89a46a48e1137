"""``guest-share-storm``: guests sharing the same host pages while the host takes them back."""

from __future__ import annotations

from ...actors.pkvm_cpu import GuestVcpu, HostCpu
from ...pkvm.errno_base import ENOENT
from ...pkvm.mem_protect import _guest_levels
from ...sim import Machine, Param
from .common import machine, pkvm_scenario

QUIRK_SCENARIO: dict[str, str] = {}
QUIRK_PARAMS: dict[str, dict[str, object]] = {}
FRAMES = 2
EVERY_GUEST = "window: every guest shares frame 0's page"


@pkvm_scenario("guest-share-storm",
               guests=Param(2, "non-protected guests (one vCPU each)", minimum=1, maximum=4),
               rounds=Param(2, "rounds of every actor", minimum=1, maximum=4))
def guest_share_storm(m: Machine, guests: int, rounds: int) -> None:
    """Every guest backs its frames 0 and 1 with the same two host pages, so each guest
    access faults and the host shares the page with that guest too
    (host_share_guest_count counts the guests). Host CPU0 keeps touching both pages (the
    host still owns them: SHARED_OWNED), and host CPU1 takes frame 0 back from every guest
    (__pkvm_host_unshare_guest: -ENOENT while that guest has not faulted it in yet), which
    the guest then faults in again."""
    mach = machine(m, host_cpus=2, vms=guests,
                   accept={"__pkvm_host_unshare_guest": {0, -ENOENT}})
    mach.require("has_guest_share", "__pkvm_host_share_guest (non-protected guests)")
    shared = [mach.page(i) >> 12 for i in range(FRAMES)]
    tables = _guest_levels() - 1

    async def guest(vcpu: GuestVcpu) -> None:
        for _ in range(rounds):
            for gfn in range(FRAMES):
                await vcpu.access(gfn, write=True)
                if mach.hyp.hyp_vmemmap.host_share_guest_count[shared[0]] == guests:
                    m.note(EVERY_GUEST)

    async def toucher(cpu: HostCpu) -> None:
        for _ in range(rounds):
            for pfn in shared:
                await cpu.access(pfn << 12)

    async def reclaimer(cpu: HostCpu) -> None:
        for _ in range(rounds):
            for vm in mach.hyp.vms:
                await cpu.hcall("__pkvm_host_unshare_guest", vm.handle, 0, 1)

    mach.host(0, toucher)
    mach.host(1, reclaimer)
    for vm in range(guests):
        memcache = [mach.page(FRAMES + vm * tables + i) >> 12 for i in range(tables)]
        mach.guest(vm, 0, guest, dict(enumerate(shared)), memcache)
