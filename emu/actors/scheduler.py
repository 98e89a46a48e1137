"""The host scheduler: it moves vCPU threads between pCPUs while they run.

A vCPU thread is a host task; the scheduler may put it on another pCPU whenever it is
preemptible. A thread that is in the guest is asked to leave (``need_resched`` on its pCPU,
the tick's job): the guest exits at its next instruction, the thread sees it must yield,
and its next entry happens on the new pCPU. That is the move seed 002 is about: the entry
on the new pCPU is where kvmppc_prepare_radix_vcpu compares it with ``prev_cpu``.

Each move is one step at a point the schedule chooses; where to is drawn from the machine's
seeded random source, so a schedule stays a function of its seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..sim import Machine
    from .nested_cpu import Interrupts
    from .pcpu import PCpu
    from .vcpu import VCpu


class HostScheduler:
    def __init__(self, m: Machine, pcpus: Sequence[PCpu], irqs: Sequence[Interrupts],
                 vcpus: Sequence[VCpu], moves: int) -> None:
        self.m = m
        self.pcpus = pcpus
        self.irqs = irqs
        self.vcpus = vcpus
        self.moves = moves
        m.spawn("scheduler", self.run, group="host", daemon=True)

    async def run(self) -> None:
        rnd = self.m.random
        for _ in range(self.moves):
            await self.m.point("schedule")
            live = [v for v in self.vcpus if not v.exited]
            if not live:
                return
            vcpu = live[rnd.randrange(len(live))]
            target = self.pcpus[rnd.randrange(len(self.pcpus))]
            migrate(self.m, self.irqs, vcpu, target)


def migrate(m: Machine, irqs: Sequence[Interrupts], vcpu: VCpu, target: PCpu) -> None:
    """Move ``vcpu``'s thread to ``target`` (preempting it if it is in the guest)."""
    if vcpu.pcpu is target:
        return
    if vcpu.pcpu.current == vcpu.name:
        irqs[vcpu.pcpu.index].need_resched = True
    m.note(f"scheduler: {vcpu.name} pcpu{vcpu.pcpu.index} -> pcpu{target.index}")
    vcpu.pcpu = target
