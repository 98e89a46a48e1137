"""Physical CPUs: the hardware threads vCPUs run on.

Everything a vCPU does as a CPU executes on its pCPU, one request at a time: entering the
guest (the entry path of kvmppc_vcpu_run_hv), a guest load or store, an hcall or a ucall
together with the HV or Ultravisor code that serves it, a fault. So "the thread" the HV and
the UV see (whose lock is held, whose gfn_to_pfn reference, which UV request a nested
UV_PAGE_IN belongs to) is the pCPU. While its guest program waits for another vCPU, a vCPU
is off the CPU, as a guest that cedes.

The host scheduler places vCPU i on pCPU i mod ``pcpus``. vCPUs sharing a pCPU take turns
between operations; an operation in flight keeps its pCPU (a host that could deschedule a
vCPU thread sleeping in the HV would interleave more finely).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from operator import attrgetter
from typing import Any

import attrs

from ..sim import Machine
from ..sim.channel import Completion


@attrs.define(eq=False)
class CpuRequest:
    vcpu: str
    op: Callable[[], Awaitable[Any]]
    done: Completion
    result: Any = None
    error: Exception | None = None

    # the vCPU names the request in the trace; a property over C code, not a method: it is
    # read at every send and receive of a pCPU's mailbox
    trace_label = property(attrgetter("vcpu"))


class PCpu:
    def __init__(self, m: Machine, index: int) -> None:
        self.m = m
        self.index = index
        self.name = f"pcpu{index}"
        self.current: str | None = None
        """The vCPU running on this pCPU right now."""
        self._done = f"{self.name} done"
        self._requests: dict[str, CpuRequest] = {}
        """vCPU -> its request, reused: a vCPU has one in flight at a time."""
        self.queue = m.channel(self.name, capacity=8)
        m.spawn(self.name, self.run, group="pCPUs", daemon=True)

    async def run(self) -> None:
        while True:
            req: CpuRequest = await self.queue.receive()
            self.current = req.vcpu
            try:
                req.result = await req.op()
            except Exception as exc:  # the vCPU's program gets it back, as its own
                req.error = exc
            self.current = None
            req.done.complete()

    async def execute(self, vcpu: str, op: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``op`` on this pCPU for ``vcpu`` and return its result (called by the vCPU)."""
        req = self._requests.get(vcpu)
        if req is None:
            req = self._requests[vcpu] = CpuRequest(vcpu, op, self.m.completion(self._done))
        else:
            req.op, req.result, req.error = op, None, None
        await self.queue.send(req)
        await req.done.wait_for_completion()
        if req.error is not None:
            raise req.error
        return req.result
