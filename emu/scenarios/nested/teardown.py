"""``nested-teardown-vs-enter``: an L1 tears a nested guest down while its other vCPUs still
run it, flush every LPID and create another guest, and the host reads the debugfs radix file.

The teardown is L1's ``kvmhv_release_nested``: clear the PATE, then H_TLB_INVALIDATE RIC=2
IS=2, in which L0 frees the shadow tables, re-reads the PATE, finds it clear and removes the
guest from its IDR (``kvmhv_remove_nested``); the guest is freed at the last reference. What
each other actor meets (kernel v6.x, book3s_hv_nested.c):

| actor (what it does)              | if the teardown lands meanwhile               | quirk |
|-----------------------------------|-----------------------------------------------|-------|
| runner: H_ENTER_NESTED of L2 1.1  | its reference keeps the guest; the L2's next  |       |
| (loads of pages L1 mapped,        | shadow miss finds no PATE: RESUME_HOST, the   |       |
| yielding to L1 between rounds)    | HDSI goes to L1. Entered after the removal,   |       |
|                                   | kvmhv_get_nested(create) makes lpid 1 anew    |       |
|                                   | (it never reads the PATE) with no PATE: the   |       |
|                                   | same HDSI. Never H_PARAMETER                  |       |
| creator: first entry of L2 2.0    | idr_alloc of lpid 2 outside mmu_lock against  | C1    |
|                                   | idr_remove of lpid 1 under it                 |       |
| flusher: H_TLB_INVALIDATE IS=3    | the IDR walk drops mmu_lock around lpid 1     | C2    |
| RIC=0, again until the teardown   | holding no reference: freed under it          |       |
| is done                           |                                               |       |
| debugfs reader (host), from boot  | the walk of lpid 1's shadow table reads table | C3    |
| until the teardown is done        | pages the RIC=2 frees, with no mmu_lock       |       |

The runner accepts an HDSI only when L1 has cleared the PATE, at the L2 address of the load
at nip, with DSISR_NOHPTE; then it stops running that vCPU (its guest is gone). Each actor
notes (``WINDOW``) when lpid 1 left L0's IDR during its call, so tests count the schedules
that reach each window.

``run_until_torn`` is the runner's loop for any teardown (``memslot_delete`` uses it too).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ...actors.guest_code import H_CEDE, Hcall, Instruction, Ld, Map, St
from ...actors.l1_hypervisor import L1Hypervisor, L2Vcpu
from ...actors.nested_cpu import BOOK3S_INTERRUPT_SYSCALL
from ...kvm.hv_guest_state import PT_NIP
from ...kvm.hvcall import H_TLB_INVALIDATE, rc_name
from ...kvm.nested import NESTED, PUT_LAST, REMOVE_VS_ENTER, REMOVED
from ...kvm.radix_mmu import BOOK3S_INTERRUPT_H_DATA_STORAGE, DSISR_NOHPTE
from ...kvm.tlbie_operands import IS_ALL, RIC_FLUSH_TLB, encode_tlbie
from ...sim import Machine
from ...sim.coverage import RACE
from .common import EA, H_YIELD, boot_guest, machine, nested_scenario, other_group

NAME = "nested-teardown-vs-enter"
QUIRK_SCENARIO = {"idr-alloc-unlocked": NAME, "tlbie-all-lpid-no-ref": NAME,
                  "radix-dump-lockless": NAME}
QUIRK_PARAMS: dict[str, dict[str, object]] = {}

WINDOW = "window: the teardown landed inside "
"""The note an actor makes when the teardown landed during one of its calls."""
GONE = "torn down under L2 "
"""The note an L1 vCPU makes when H_ENTER_NESTED told it, rightly, that its L2 is gone."""
PAGES = ((EA, 1 << 16, 1), (EA + (1 << 16), 2 << 16, 2))
"""Guest 1's pages: (effective address, L2 real address, the value L2 vCPU 1.0 stores)."""
ROUNDS = 3
"""How often a runner's L2 loads the pages, yielding to L1 (a new H_ENTER_NESTED) between."""

Snapshot = Callable[[], object]
"""The object the teardown takes away (the guest in L0's IDR, the memslot), read now."""
Verdict = Callable[[L2Vcpu, tuple[int, ...]], str | None]
"""(the L2 vCPU as L1 read it back, the registers L1 handed over) -> None if the return code
is exactly what the kernel gives for this teardown, else what is wrong."""


def store_pages() -> list[Instruction]:
    """L2 vCPU 1.0's program: map each page and store its value (L1 maps them on the
    faults)."""
    return [i for ea, gpa, value in PAGES for i in (Map(ea, gpa), St(ea, value))]


def load_pages() -> list[Instruction]:
    """Load each page, checking its value."""
    return [Ld(ea, value) for ea, _, value in PAGES]


def load_rounds() -> list[Instruction]:
    """A runner's program: map the pages, then ``ROUNDS`` rounds of ``load_pages`` with an
    H_YIELD between (no L1 fault: L2 vCPU 1.0 made L1 map them, R and C set)."""
    return [*(Map(ea, gpa) for ea, gpa, _ in PAGES),
            *[i for _ in range(ROUNDS) for i in (*load_pages(), Hcall(H_YIELD))][:-1]]


def landed(m: Machine, teardown: Snapshot, before: object, who: str, call: str) -> None:
    """Note the window if what ``teardown`` read as ``before`` (not None) changed since."""
    if before is not None and teardown() is not before:
        m.note(f"{WINDOW}{call} of {who}")


async def run_until_torn(h: L1Hypervisor, m: Machine, v: L2Vcpu, teardown: Snapshot,
                         ends: Mapping[int, Verdict]) -> None:
    """Enter ``v`` until its program ends, or until a code of ``ends`` says its teardown
    (checked by its verdict; any other code but the L2's hcall is a machine finding)."""
    who = f"L1 vCPU {h.vcpu}"
    while True:
        before, sent = teardown(), tuple(v.regs)
        rc = await h.enter(v, accept={BOOK3S_INTERRUPT_SYSCALL, *ends})
        landed(m, teardown, before, who, "H_ENTER_NESTED")
        if rc in ends:
            problem = ends[rc](v, sent)
            name = "HDSI" if rc == BOOK3S_INTERRUPT_H_DATA_STORAGE else rc_name(rc)
            if problem:
                m.fail("return-code", f"{who}: H_ENTER_NESTED of L2 {v.lpid}.{v.token} "
                       f"returned {name}, but {problem}")
            m.note(f"{GONE}{v.lpid}.{v.token}: {name}")
            return
        if rc != BOOK3S_INTERRUPT_SYSCALL or v.regs[3] == H_CEDE:
            return


def shadow_miss_reflected(h: L1Hypervisor) -> Verdict:
    """The HDSI of a guest whose PATE L1 cleared: the L2's shadow miss of the load at nip
    (DSISR_NOHPTE, ASDR its L2 address), which L0, finding no PATE, reflects."""
    def verdict(v: L2Vcpu, sent: tuple[int, ...]) -> str | None:
        if v.lpid in h.kernel.guests:
            return "its PATE is present and L1 maps every page it loads"
        insn = h.kernel.code.fetch(v.regs[PT_NIP])
        gpa = next((g for ea, g, _ in PAGES if isinstance(insn, Ld) and insn.ea == ea), None)
        if v.hv.asdr != gpa or not v.hv.hdsisr & DSISR_NOHPTE:
            return (f"the L2 stopped at {insn}, ASDR {v.hv.asdr:#x}, HDSISR "
                    f"{v.hv.hdsisr:#x}")
        return None
    return verdict


@nested_scenario(NAME)
def teardown_vs_enter(m: Machine, topology: str, moves: int) -> None:
    """L1 vCPU 0 runs L2 1.0, which stores to two pages, then tears guest 1 down. Meanwhile
    L1 vCPU 1 (another TLB group) runs L2 1.1, which loads them (yielding twice), vCPU 2
    creates guest 2 and runs L2 2.0, vCPU 3 flushes every LPID until the teardown is done,
    and the host reads the debugfs radix file from boot until then."""
    mach = machine(m, topology, moves)
    m.goal("freed-by-last-holder", "a nested guest removed while in use, freed by its last user",
           ("L1's RIC=2 removes guest 1 from L0's IDR", (NESTED, REMOVED)),
           ("while another vCPU runs it (H_ENTER_NESTED)", (RACE, REMOVE_VS_ENTER)),
           ("a holder's kvmhv_put_nested drops the last reference", (NESTED, PUT_LAST)))
    mapped, done = m.completion("guest 1 mapped"), m.completion("guest 1 torn down")
    runner_l2: list[L2Vcpu] = []
    """L2 vCPU 1.1, which L1 creates with its guest (before it can tear the guest down)."""

    def guest_1() -> object:
        return mach.l1.idr.get(1)

    async def owner(h: L1Hypervisor) -> None:
        await boot_guest(h)
        runner_l2.append(h.l2_vcpu(1, 1, load_rounds()))
        await h.run(h.l2_vcpu(1, 0, store_pages()))
        mapped.complete_all()
        await h.destroy(1)
        done.complete_all()

    async def runner(h: L1Hypervisor) -> None:
        await mapped.wait_for_completion()
        await run_until_torn(h, m, runner_l2[0], guest_1,
                             {BOOK3S_INTERRUPT_H_DATA_STORAGE: shadow_miss_reflected(h)})

    async def creator(h: L1Hypervisor) -> None:
        await mapped.wait_for_completion()
        h.create_guest(2)
        before = guest_1()
        await h.run(h.l2_vcpu(2, 0, [Map(EA, 1 << 16), St(EA, 3), Ld(EA, 3)]))
        landed(m, guest_1, before, f"L1 vCPU {h.vcpu}", "the creation of lpid 2")

    async def flusher(h: L1Hypervisor) -> None:
        await mapped.wait_for_completion()
        while True:
            before = guest_1()
            await h.hcall(H_TLB_INVALIDATE, *encode_tlbie(ric=RIC_FLUSH_TLB, is_=IS_ALL))
            landed(m, guest_1, before, f"L1 vCPU {h.vcpu}", "H_TLB_INVALIDATE IS=3")
            if done.done:
                return
            await m.yield_point(f"L1 vCPU {h.vcpu}: flush every LPID again")

    async def reader() -> None:  # a monitor polling the file from the VM's start
        while True:
            before = guest_1()
            await mach.radix_dump()
            landed(m, guest_1, before, "debugfs", "the radix dump")
            if done.done:
                return
            await m.yield_point("debugfs: read the radix file again")

    t = mach.topology
    away = other_group(mach)
    mach.l1_vcpu(owner, 0)
    mach.l1_vcpu(runner, away)
    mach.l1_vcpu(creator, next(c for c in t.members(0) if c != 0))
    mach.l1_vcpu(flusher, next(c for c in t.members(away) if c != away))
    m.spawn("debugfs", reader, group="host")
