"""``tlb-invalidate-storm``: L2 vCPUs in two TLB groups keep storing to and loading their
pages while another L1 vCPU changes their L2->L1 mappings and invalidates them with
H_TLB_INVALIDATE in every scope ``kvmhv_emulate_priv_tlbie`` handles, and in the forms it
refuses.

The invalidator's script (``STORM``): batch b starts once every L2 vCPU has finished its
segment b (the setup, then round after round), so it meets live shadow PTEs and runs while
the L2s go on with their next round. Each line edits L1's table (the edit is in flight for
the shadow-composition check until the hcall returns), then issues one H_TLB_INVALIDATE
and checks its return code. Every refault after an invalidation walks L1's table again and
inserts the shadow PTE with its rmap entry on the same L1 page (quirk ``rmap-no-dedup``:
the entry twice). "n:X" is L2 real page X of nested guest n.

| b | edit of L1's L2->L1 table    | RIC | IS            | L0 removes                 | rc   |
|---|------------------------------|-----|---------------|----------------------------|------|
| 0 | unmap 1:S10 (``h.unmap``)    | 0   | 0 (64K page)  | its shadow PTEs            | OK   |
| 0 | move 1:P onto 1:Q's L1 page  | 0   | 0             | its shadow PTEs            | OK   |
| 1 | write-protect 2:S20          | 0   | 2 (LPID 2)    | LPID 2's shadow table      | OK   |
| 1 | clear R/C of 1:S11           | 2   | 2 (LPID 1)    | the table; PATE re-read    | OK   |
| 2 | move 1:P back                | 0   | 3 (all LPIDs) | every shadow table         | OK   |
| 2 | -                            | 1   | 2             | nothing (no PWC cached)    | OK   |
| 3 | unmap 1:S11                  | 0   | 2 (LPID 1)    | LPID 1's shadow table      | OK   |
| 3 | unmap 2:S20                  | 2   | 3             | every table; PATEs re-read | OK   |
| 3 | -                            | 1   | 3             | nothing                    | OK   |
| * | -, LPID 3 (no nested guest)  | 0   | 2, or 0       | nothing                    | OK   |
| * | -                            | any | 1 (PID)       | refused: process scope     | PARM |
| * | -                            | 1,2 | 0             | refused: not in the ISA    | PARM |
| * | - (RIC=3; PRS=1; R=0; bad AP)| ... | ...           | refused                    | PARM |

(OK: H_SUCCESS; PARM: H_PARAMETER.) Every page keeps its content through the storm: the
runner's L1 fault handler maps an unmapped page again to the same L1 page, makes a
write-protected one writable, sets cleared R/C again. P moves between two L1 pages with
different contents, so the L2s load it unchecked during the storm and check it after,
with every other page.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from ...actors.guest_code import Hcall, Instruction, Ld, Map, St
from ...actors.l1_hypervisor import L1Hypervisor, L2Vcpu
from ...hw.memory import PAGE_SHIFT, PAGE_SIZE
from ...hw.radix import (
    PAGE_ACCESSED,
    PAGE_DIRTY,
    PAGE_RWX,
    PAGE_WRITE,
    RADIX_PGTABLE_RANGE,
    make_pte,
)
from ...kvm.hvcall import H_PARAMETER, H_SUCCESS, H_TLB_INVALIDATE
from ...kvm.tlbie_operands import (
    AP_SHIFTS,
    IS_ADDR,
    IS_ALL,
    IS_LPID,
    IS_PID,
    RIC_FLUSH_ALL,
    RIC_FLUSH_PWC,
    RIC_FLUSH_TLB,
    addr_to_epn,
    encode_tlbie,
)
from ...machines.nested import NestedMachine
from ...sim import Machine
from .common import EA, H_YIELD, boot_guest, machine, nested_scenario, other_group

QUIRK_SCENARIO = {"rmap-no-dedup": "tlb-invalidate-storm"}
QUIRK_PARAMS: dict[str, dict[str, object]] = {}

S10, S11, P, Q = (1 << PAGE_SHIFT, 2 << PAGE_SHIFT, 3 << PAGE_SHIFT, 4 << PAGE_SHIFT)
"""Guest 1's pages: vCPU 1.0's, vCPU 1.1's, the one L1 moves, the one it moves it onto."""
S20 = 1 << PAGE_SHIFT
"""Guest 2's page (vCPU 2.0's)."""
ABSENT = 3
"""An lpid with no nested guest."""
V_P, V_Q = 7, 8
"""What P's and Q's own L1 pages hold."""
ROUNDS = 4
"""Store-and-load rounds of each L2 vCPU while the storm runs (one more than the
storm has batches after the setup: the last runs alongside the last batch)."""
AP_64K = next(ap for ap, shift in AP_SHIFTS.items() if shift == PAGE_SHIFT)
BAD_AP = next(ap for ap in range(8) if ap not in AP_SHIFTS)
RWX_AD = PAGE_RWX | PAGE_ACCESSED | PAGE_DIRTY
"""How the L1 fault handler maps a page a store touched (and how a move maps P)."""


def ea(gpa: int) -> int:
    """The effective address an L2 maps its real page ``gpa`` at."""
    return EA + gpa


@attrs.frozen
class Invalidation:
    """One line of the storm: an edit of L1's table (None: none), then H_TLB_INVALIDATE
    with these fields, expecting ``rc``."""

    edit: str | None
    lpid: int
    gpa: int
    ric: int = RIC_FLUSH_TLB
    is_: int = IS_ADDR
    prs: int = 0
    r: int = 1
    ap: int = AP_64K
    rc: int = H_SUCCESS

    @property
    def label(self) -> str:
        edit = f"{self.edit} {self.lpid}:{self.gpa:#x}, " if self.edit else ""
        return (f"{edit}RIC={self.ric} PRS={self.prs} R={self.r} IS={self.is_} "
                f"lpid {self.lpid}")

    def operands(self) -> tuple[int, int, int]:
        return encode_tlbie(ric=self.ric, prs=self.prs, r=self.r, lpid=self.lpid,
                            is_=self.is_, ap=self.ap, epn=addr_to_epn(self.gpa))


def _refused(**fields: int) -> Invalidation:
    return Invalidation(None, 1, S10, rc=H_PARAMETER, **fields)


STORM = (
    (Invalidation("unmap", 1, S10),
     Invalidation("move", 1, P),
     _refused(is_=IS_PID),
     _refused(ric=RIC_FLUSH_PWC)),
    (Invalidation("write-protect", 2, S20, is_=IS_LPID),
     Invalidation("clear-rc", 1, S11, ric=RIC_FLUSH_ALL, is_=IS_LPID),
     Invalidation(None, ABSENT, 0, is_=IS_LPID),
     _refused(ric=RIC_FLUSH_ALL)),
    (Invalidation("move", 1, P, is_=IS_ALL),
     Invalidation(None, 1, 0, ric=RIC_FLUSH_PWC, is_=IS_LPID),
     _refused(ric=3, is_=IS_LPID),
     _refused(prs=1, is_=IS_LPID)),
    (Invalidation("unmap", 1, S11, is_=IS_LPID),
     Invalidation("unmap", 2, S20, ric=RIC_FLUSH_ALL, is_=IS_ALL),
     Invalidation(None, 1, 0, ric=RIC_FLUSH_PWC, is_=IS_ALL),
     Invalidation(None, ABSENT, S10),
     _refused(r=0, is_=IS_LPID),
     _refused(ap=BAD_AP)),
)
"""Batch b runs once every L2 vCPU has finished segment b of its program."""


def program(setup: list[Instruction], rounds: Callable[[int], list[Instruction]],
            final: list[Instruction]) -> list[list[Instruction]]:
    """An L2 program in segments, each ended by an H_YIELD (the last by the H_CEDE the
    loader appends): the setup, ``ROUNDS`` rounds, then the checks after the storm."""
    return [setup, *(rounds(r) for r in range(1, ROUNDS + 1)), final]


def load(h: L1Hypervisor, lpid: int, token: int, segments: list[list[Instruction]]) -> L2Vcpu:
    """L2 vCPU ``lpid``.``token`` with its program's segments joined by H_YIELDs."""
    code = [insn for seg in segments for insn in (*seg, Hcall(H_YIELD))][:-1]
    return h.l2_vcpu(lpid, token, code)


def _own_page(gpa: int, base: int, extra: list[Instruction]) -> tuple[
        list[Instruction], Callable[[int], list[Instruction]], list[Instruction]]:
    """Setup, rounds and final checks of an L2 vCPU that stores ``base + r`` to its page
    ``gpa`` in round r and loads it back (``extra`` in every round too)."""
    return ([Map(ea(gpa), gpa), St(ea(gpa), base)],
            lambda r: [St(ea(gpa), base + r), Ld(ea(gpa), base + r), *extra],
            [Ld(ea(gpa), base + ROUNDS)])


async def invalidate(h: L1Hypervisor, inv: Invalidation) -> int:
    """Make ``inv``'s edit of L1's table, then issue its H_TLB_INVALIDATE (L1Hypervisor.unmap
    for an unmap with IS=0); the return code, checked against ``inv.rc``."""
    k = h.kernel
    if inv.edit == "unmap" and inv.is_ == IS_ADDR:
        return await h.unmap(inv.lpid, inv.gpa, accept={inv.rc})
    edit = k.edits.begin(inv.lpid, inv.gpa, inv.gpa + PAGE_SIZE) if inv.edit else None
    tree = k.guests[inv.lpid].tree if inv.edit else None
    if inv.edit == "unmap":
        tree.unmap(inv.gpa, inv.gpa + PAGE_SIZE)
    elif inv.edit == "write-protect":
        tree.update(inv.gpa, clear_bits=PAGE_WRITE)
    elif inv.edit == "clear-rc":
        tree.update(inv.gpa, clear_bits=PAGE_ACCESSED | PAGE_DIRTY)
    elif inv.edit == "move":  # onto Q's L1 page, or back to its own
        own, other = k.backing(inv.lpid, inv.gpa), k.backing(inv.lpid, Q)
        leaf = tree.find(inv.gpa)
        target = other if leaf is not None and leaf.ra == own else own
        tree.unmap(inv.gpa, inv.gpa + PAGE_SIZE)  # (an insert over a leaf ORs the RPN in)
        tree.insert(inv.gpa, make_pte(target, RWX_AD), PAGE_SHIFT)
    rc = await h.hcall(H_TLB_INVALIDATE, *inv.operands(), accept={inv.rc})
    if edit is not None:
        k.edits.end(edit)
    return rc


def in_scope(mach: NestedMachine, inv: Invalidation) -> int:
    """How many shadow PTEs the invalidation ``inv`` is to remove, were it issued now: the
    measure of whether the storm meets live translations."""
    if inv.rc != H_SUCCESS or inv.ric == RIC_FLUSH_PWC:
        return 0
    guests = [gp for lpid, gp in sorted(mach.l1.idr.items())
              if gp is not None and (inv.is_ == IS_ALL or lpid == inv.lpid)]
    lo, hi = (inv.gpa, inv.gpa + PAGE_SIZE) if inv.is_ == IS_ADDR else (0, RADIX_PGTABLE_RANGE)
    return sum(1 for gp in guests for _ in gp.shadow_pgtable.leaves(lo, hi))


@nested_scenario("tlb-invalidate-storm")
def tlb_invalidate_storm(m: Machine, topology: str, moves: int) -> None:
    """L1 vCPU 0 runs L2 vCPU 1.0, L1 vCPU 1 (another TLB group) L2 vCPUs 1.1 and 2.0 in
    turn: each stores to its own page and loads it back, round after round, and guest 1's
    also load P. Meanwhile L1 vCPU 2 changes their mappings and invalidates in every scope
    (``STORM``). After the storm each L2 vCPU checks its page, and guest 1's check P and
    Q."""
    mach = machine(m, topology, moves, H_TLB_INVALIDATE={H_SUCCESS})
    booted, storm_done = m.completion("L1 booted"), m.completion("storm done")
    segments = ROUNDS + 2
    reached = [[m.completion(f"L1 vCPU {i} finished segment {seg}")
                for seg in range(len(STORM))] for i in range(2)]

    async def run_segments(h: L1Hypervisor, vcpus: list[L2Vcpu]) -> None:
        """Run each of ``vcpus`` through each segment in turn; the last waits for the
        storm to end."""
        for seg in range(segments):
            if seg == segments - 1:
                await storm_done.wait_for_completion()
            for v in vcpus:
                await h.run(v)
            if seg < len(STORM):
                reached[h.vcpu][seg].complete_all()

    async def runner0(h: L1Hypervisor) -> None:
        await boot_guest(h, 1)
        h.create_guest(2)
        booted.complete_all()
        setup, rounds, final = _own_page(S10, 100, [Ld(ea(P))])
        await run_segments(h, [load(h, 1, 0, program(
            [*setup, Map(ea(P), P), St(ea(P), V_P)], rounds, [*final, Ld(ea(P), V_P)]))])

    async def runner1(h: L1Hypervisor) -> None:
        await booted.wait_for_completion()
        setup, rounds, final = _own_page(S11, 200, [Ld(ea(P))])
        v11 = load(h, 1, 1, program([*setup, Map(ea(P), P), Map(ea(Q), Q), St(ea(Q), V_Q)],
                                    rounds, [*final, Ld(ea(P), V_P), Ld(ea(Q), V_Q)]))
        await run_segments(h, [v11, load(h, 2, 0, program(*_own_page(S20, 300, [])))])

    async def invalidator(h: L1Hypervisor) -> None:
        for seg, batch in enumerate(STORM):
            for runner in reached:
                await runner[seg].wait_for_completion()
            for inv in batch:
                running = sum(irqs.guest_phase for irqs in mach.irqs)
                m.note(f"storm: {inv.label}: {in_scope(mach, inv)} shadow PTEs in scope, "
                       f"{running} L2 vCPUs in the guest")
                await invalidate(h, inv)
        storm_done.complete_all()

    mach.l1_vcpu(runner0, 0)
    mach.l1_vcpu(runner1, other_group(mach))
    mach.l1_vcpu(invalidator, next(c for c in mach.topology.members(0) if c != 0))
