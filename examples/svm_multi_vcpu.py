"""A scripted multi-vCPU secure VM: four vCPUs, virtio bounce buffers, and QEMU.

Run it:  python examples/svm_multi_vcpu.py

vCPU 0 boots the SVM (UV_ESM). Then every vCPU keeps a secret in a page of its own, shares
a bounce buffer with the HV and fills it, while QEMU reads each bounce buffer (virtio) and
also touches the secret pages, whose host faults page them out encrypted. Finally every
vCPU reads everything back (a first touch pages a secret back in). One schedule is shown
with its numbers; then 300 more are hunted for a violation. The scenario declares the return
codes it accepts (``accept=``: success from every call), so a call that fails, a share or
a load as much as QEMU's read, is a ``return-code`` violation.
"""

from __future__ import annotations

import emu
from emu.kvm.hvcall import H_SUCCESS, PAGE_SHIFT
from emu.machines.svm import SvmMachine

VCPUS = 4
stats: dict[str, int] = {}


@emu.scenario(params={"vcpus": emu.Param(VCPUS, "vCPUs", minimum=1)})
def virtio_svm(m: emu.Machine, vcpus: int) -> None:
    """Secrets and bounce buffers on every vCPU, QEMU reading both."""
    sm = SvmMachine(m, accept={"*": {H_SUCCESS}})  # anything else is a violation
    kvm = sm.vm(1, ((0, 64),))
    booted, filled = m.completion("booted"), m.completion("buffers filled")
    secret = {v: 16 + v for v in range(vcpus)}  # one page per vCPU
    bounce = {v: 32 + v for v in range(vcpus)}

    async def vcpu(g) -> None:
        if g.vcpu == 0:
            await g.write(0, 0xB007)  # the image
            assert await g.esm(0, 1) == H_SUCCESS
            booted.complete_all()
        await booted.wait_for_completion()
        await g.write(secret[g.vcpu] << PAGE_SHIFT, 0x5EC0 + g.vcpu)
        await g.share(bounce[g.vcpu])  # H_SUCCESS, or the schedule reports return-code
        await g.write(bounce[g.vcpu] << PAGE_SHIFT, 0xB0 + g.vcpu)
        filled.complete()
        await g.read(secret[g.vcpu] << PAGE_SHIFT)
        await g.read(bounce[g.vcpu] << PAGE_SHIFT)

    async def qemu(h) -> None:
        for _ in range(vcpus):
            await filled.wait_for_completion()
        for v in range(vcpus):
            assert await h.read(1, bounce[v]) == 0xB0 + v  # the shared data, in the clear
            await h.read(1, secret[v])  # a fault: paged out, encrypted

    def record() -> None:  # a final check that only takes the machine's numbers
        stats.update(copies=sm.memctl.copies, device_pages=sm.dev.in_use())

    for _ in range(vcpus):
        sm.vcpu(kvm, vcpu)
    sm.host(qemu)
    m.final("record statistics", record)


if __name__ == "__main__":
    one = emu.run(virtio_svm, seed=3)
    print(f"one schedule: {one.steps} steps, {one.virtual_time / 1000:.0f} us of virtual time, "
          f"{stats['copies']} page copies, {stats['device_pages']} device pages in use: "
          f"{'clean' if one.ok else one.violation.describe()}")
    print(one.trace.timeline(last=12))
    hunt = emu.hunt(virtio_svm, schedules=300, seed=0)
    print(f"\nhunt: {hunt.schedules} schedules, max {hunt.steps_max} steps: "
          f"{'no violation' if hunt.ok else hunt.found.violation.describe()}")
