"""Two L2 guests under one L1 hypervisor on four pCPUs, and the shadow page tables L0 built
for them.

Run it:  python examples/nested_two_l2.py

One POWER9 SMT4 core: four threads sharing one TLB. The L1 hypervisor has four vCPUs, one
per pCPU. vCPU 0 tells L0 where L1's partition table is (H_SET_PARTITION_TABLE) and creates
two L2 guests (L1 lpids 1 and 2); then every L1 vCPU runs one L2 vCPU with H_ENTER_NESTED:
L2 guest g's vCPU t maps a page of its own (its own process-scoped table: EA + t * 64K ->
L2 real page), stores to it and loads it back. Every first touch is a nested fault: L0
reflects it to L1, which maps the L2 page in its L2->L1 table, and on the retry L0 builds
the shadow PTE (L2 real address -> host) with its nested rmap entry on the L1 page.

When the schedule has ended the example prints what debugfs would show (the ``radix`` view:
L1's partition-scoped table in L0, then each nested guest's shadow table), the nested rmap
(the ``rmap`` view), and each shadow PTE decoded. Then 200 schedules in which the host
scheduler also moves the vCPU threads between the four pCPUs are hunted for a violation.
"""

from __future__ import annotations

import emu
from emu.actors.guest_code import Ld, Map, St
from emu.hw.memory import PAGE_SHIFT
from emu.hw.radix import (
    PAGE_ACCESSED,
    PAGE_DIRTY,
    PAGE_EXEC,
    PAGE_READ,
    PAGE_WRITE,
    PTE_RPN_MASK,
)
from emu.kvm.hvcall import H_SUCCESS
from emu.kvm.nested_rmap import n_rmap_gpa, n_rmap_lpid
from emu.machines.nested import NestedMachine
from emu.scenarios.nested.common import EA, ENTER

GUESTS = (1, 2)
VCPUS = 2
seen: dict[str, object] = {}


def program(lpid: int, token: int) -> list:
    """L2 guest ``lpid``'s vCPU ``token``: its own page, L2 real page 1 + token."""
    ea, value = EA + (token << 16), lpid * 0x100 + token
    return [Map(ea, (1 + token) << 16), St(ea, value), Ld(ea, value)]


@emu.scenario(params={"moves": emu.Param(0, "thread migrations by the host scheduler",
                                          minimum=0, maximum=16)})
def two_l2(m: emu.Machine, moves: int) -> None:
    """Two L2 guests with two vCPUs each, under one L1 with four vCPUs on one SMT4 core."""
    mach = NestedMachine(m, topology="smt4", cores=1, quirks=m.quirks, moves=moves,
                         accept={"*": {H_SUCCESS}, "H_ENTER_NESTED": ENTER})
    seen["machine"] = mach
    booted = m.completion("L1 booted")

    async def l1(h) -> None:
        if h.vcpu == 0:
            await h.boot()
            for lpid in GUESTS:
                h.create_guest(lpid)
            booted.complete_all()
        await booted.wait_for_completion()
        lpid, token = GUESTS[h.vcpu // VCPUS], h.vcpu % VCPUS
        await h.run(h.l2_vcpu(lpid, token, program(lpid, token)))

    for cpu in range(len(GUESTS) * VCPUS):
        mach.l1_vcpu(l1, cpu)


def show(program: list) -> str:
    """An L2 program in the notation of emu/actors/guest_code.py, EAs relative to EA."""
    def one(i) -> str:
        if isinstance(i, Map):
            return f"Map(EA+{i.ea - EA:#x} -> {i.gpa:#x})"
        arg = i.value if isinstance(i, St) else i.expect
        return f"{type(i).__name__}(EA+{i.ea - EA:#x}, {arg:#x})"
    return ", ".join(map(one, program))


def bits(pte: int) -> str:
    names = ((PAGE_READ, "R"), (PAGE_WRITE, "W"), (PAGE_EXEC, "X"), (PAGE_ACCESSED, "A"),
             (PAGE_DIRTY, "D"))
    return " ".join(name if pte & bit else "-" for bit, name in names)


def decode(mach: NestedMachine) -> list[str]:
    """Each shadow PTE: the L2 real address, the L1 page behind it, the host page, the size
    and bits, and whether that L1 page's rmap word holds the entry naming it."""
    rmap = {slot.base_gfn + off: word.entries() for slot, words in mach.mmu.rmap.items()
            for off, word in words.items()}
    lines = [f"  {'L2 gpa':>9}    {'L1 gpa':>9}    {'host':>9}  size  bits       "
             "rmap of the L1 page"]
    for lpid, gp in sorted(mach.l1.idr.items()):
        lines.append(f"nested LPID {lpid} (shadow LPID {gp.shadow_lpid}):")
        for leaf in gp.shadow_pgtable.leaves():
            l1_gpa = mach.kernel.backing(lpid, leaf.gpa)
            gfn = l1_gpa >> PAGE_SHIFT
            held = any((n_rmap_lpid(e), n_rmap_gpa(e)) == (lpid, leaf.gpa)
                       for e in rmap.get(gfn, ()))
            lines.append(f"  {leaf.gpa:#9x} -> {l1_gpa:#9x} -> {leaf.pte & PTE_RPN_MASK:#9x}  "
                         f"{(1 << leaf.shift) >> 10:>3}K  {bits(leaf.pte)}  gfn {gfn:#x}: "
                         f"{'has the entry' if held else 'NO ENTRY'}")
    return lines


if __name__ == "__main__":
    one = emu.run(two_l2, seed=0)
    mach = seen["machine"]
    print(f"one schedule on {mach.topology.nr_cpus} pCPUs (one SMT4 core, one TLB): "
          f"{one.steps} steps: {'clean' if one.ok else one.violation.describe()}")
    for cpu in range(len(GUESTS) * VCPUS):
        lpid, token = GUESTS[cpu // VCPUS], cpu % VCPUS
        print(f"  L1 vCPU {cpu} on pCPU {cpu} ran L2 {lpid}.{token}: {show(program(lpid, token))}")
    print("\ndebugfs radix file (view radix): L1's table in L0, then each shadow table")
    print(one.views["radix"], end="")
    print("\nnested rmap (view rmap): per L1 page, the shadow PTEs made of it")
    print(one.views["rmap"], end="")
    print("\nthe shadow PTEs decoded (L2 real address -> L1 page -> host page):")
    print("\n".join(decode(mach)))
    print(f"host LPIDs in use: {', '.join(map(str, sorted(mach.l1.lpids.used)))} (0: the host, "
          "1: L1); a gap is one an L1 vCPU took to create a guest that another vCPU created "
          "first (kvmhv_get_nested's losing duplicate, released)")
    hunt = emu.hunt(two_l2, schedules=200, seed=0, params={"moves": 4})
    print(f"\nhunt: {hunt.schedules} schedules with thread migrations, max {hunt.steps_max} "
          f"steps: {'no violation' if hunt.ok else hunt.found.violation.describe()}")
