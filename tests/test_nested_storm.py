"""The nested suite's storm and host-move scenarios: ``tlb-invalidate-storm`` (L1 changes
L2 mappings and invalidates in every H_TLB_INVALIDATE scope while L2 vCPUs in two TLB
groups use them) and ``l1-unmap-vs-l2-fault`` (the host moves an L1 page behind an L2 page
while the L2 faults on it). Each is clean on the fixed model, reaches the window it is
about, and has teeth: the quirk or the broken check it exists for is found."""

from __future__ import annotations

import re
from collections import Counter

import emu
from emu.hw.costs import UNIT
from emu.hw.memory import PAGE_SHIFT
from emu.hw.radix import PTE_RPN_MASK
from emu.kvm import nested_mmu, radix_mmu, tlbie_operands
from emu.kvm.radix_mmu import EAGAIN
from emu.scenarios.nested import QUIRK_SCENARIO, storm, unmap_fault
from emu.scenarios.nested.storm import STORM, Invalidation
from emu.sim.scenario import suites

STORM_NAME, MOVE_NAME = "tlb-invalidate-storm", "l1-unmap-vs-l2-fault"
SCOPE_NOTE = re.compile(r"storm: (.*): (\d+) shadow PTEs in scope, (\d+) L2 vCPUs in the guest")


def test_both_scenarios_are_in_the_suite():
    assert QUIRK_SCENARIO["rmap-no-dedup"] == STORM_NAME
    assert storm.QUIRK_SCENARIO == {"rmap-no-dedup": STORM_NAME}
    assert unmap_fault.QUIRK_SCENARIO == {}
    assert {STORM_NAME, MOVE_NAME} <= set(suites()["nested"][1])


# --- tlb-invalidate-storm -----------------------------------------------------------------


def test_the_storm_covers_every_scope_and_refused_form():
    """Every form kvmhv_emulate_priv_tlbie distinguishes is issued: IS=0, 2 and 3 with RIC=0,
    RIC=2 on one LPID and on all, RIC=1 (PWC), an lpid with no nested guest, and each
    refused form (IS=1, RIC 1 or 2 with IS=0, RIC=3, PRS=1, R=0, a bad AP)."""
    lines = [inv for batch in STORM for inv in batch]
    ok = {(inv.ric, inv.is_) for inv in lines if inv.rc == 0}
    assert ok == {(0, 0), (0, 2), (0, 3), (2, 2), (2, 3), (1, 2), (1, 3)}
    refused = [inv for inv in lines if inv.rc]
    for inv in refused:
        assert tlbie_operands.check_tlbie(tlbie_operands.decode_tlbie(*inv.operands())) \
            == inv.rc
    assert {inv.is_ for inv in refused} >= {1}
    assert any(inv.prs for inv in refused) and any(not inv.r for inv in refused)
    assert any(inv.ric == 3 for inv in refused)
    assert {inv.ric for inv in refused if inv.is_ == 0 and inv.ap in tlbie_operands.AP_SHIFTS
            and inv.prs == 0 and inv.r} == {1, 2}
    assert any(inv.ap not in tlbie_operands.AP_SHIFTS for inv in refused)


def _scopes(strategy: str, seeds: range) -> tuple[Counter, Counter]:
    """Per storm line: in how many schedules it met live shadow PTEs, and in how many it
    met them while an L2 vCPU was in the guest."""
    live, running = Counter(), Counter()
    for seed in seeds:
        r = emu.run(STORM_NAME, seed=seed, strategy=strategy, params={"moves": 3})
        assert r.ok, r.violation.describe()
        for event in r.trace.events:
            found = SCOPE_NOTE.match(str(event[3])) if event[2] == "note" else None
            if found:
                label, n, k = found.group(1), int(found.group(2)), int(found.group(3))
                live[label] += n > 0
                running[label] += n > 0 and k > 0
    return live, running


def test_each_invalidating_scope_meets_live_shadow_ptes():
    """Each line that invalidates something (RIC 0 or 2, a live lpid) finds shadow PTEs in
    its scope in most schedules, and some lines meet them while an L2 runs on another
    pCPU. Measured over 100 schedules (smt4, moves=3): random, every such line in >= 98,
    and with an L2 in the guest 6 of the 7 lines, 3 to 37 times each; PCT depth 3, every
    line in >= 66, with an L2 in the guest 2 to 10 times each."""
    live, running = _scopes("random", range(30))
    lines = [inv for batch in STORM for inv in batch
             if inv.rc == 0 and inv.ric != 1 and inv.lpid != storm.ABSENT]
    assert len(lines) == 7
    for inv in lines:
        assert live[inv.label] >= 20, (inv.label, live)
    assert sum(running.values()) >= 5, running


def test_rmap_no_dedup_is_found_by_the_storm():
    h = emu.hunt(STORM_NAME, schedules=20, seed=0, quirks=("rmap-no-dedup",))
    assert h.found is not None and h.found.seed == 0
    v = h.found.violation
    assert "nested rmap unique" in v.message and "more than once" in v.message, v.describe()


def test_a_refused_form_must_get_h_parameter(monkeypatch):
    """The storm checks the exact code of every form L0 refuses: an L0 that accepted
    IS=1 (process scope) would be reported."""
    real = tlbie_operands.check_tlbie
    monkeypatch.setattr("emu.kvm.nested_tlbie.check_tlbie",
                        lambda ops: None if ops.is_ == tlbie_operands.IS_PID else real(ops))
    r = emu.run(STORM_NAME, seed=0)
    assert r.violation is not None and r.violation.kind == "return-code"
    assert "H_TLB_INVALIDATE" in r.violation.message and "H_PARAMETER" in r.violation.message


def test_an_invalidation_that_misses_a_moved_page_is_found(monkeypatch):
    """The storm's moves of P are checked: an IS=0 that left the shadow PTE of the old L1
    page in place breaks shadow composition once the hcall returns."""
    from emu.kvm import nested_tlbie

    async def no_op(l1, lpid, ap, epn):
        return 0

    monkeypatch.setattr(nested_tlbie, "kvmhv_emulate_tlbie_tlb_addr", no_op)
    h = emu.hunt(STORM_NAME, schedules=20, seed=0)
    assert h.found is not None
    assert "shadow composition" in h.found.violation.message, h.found.violation.describe()


def test_invalidation_label_names_its_fields():
    inv = Invalidation("unmap", 1, 0x10000, ric=2, is_=3)
    assert inv.label == "unmap 1:0x10000, RIC=2 PRS=0 R=1 IS=3 lpid 1"


# --- l1-unmap-vs-l2-fault -----------------------------------------------------------------


def _count_retries(monkeypatch) -> list[bool]:
    """Record each shadow-PTE insert of the nested fault that mmu_invalidate_retry turned
    away: whether the lookup it was built from had gone stale (no L0 PTE maps the host page
    it composed any more: the faulting page itself moved) or another page's invalidation
    bumped the sequence."""
    real = nested_mmu.kvmppc_create_pte
    retries: list[bool] = []

    async def counting(mmu, pgtable, pte, *rest):
        ret = await real(mmu, pgtable, pte, *rest)
        if ret == EAGAIN:
            pfn = (pte & PTE_RPN_MASK) >> PAGE_SHIFT
            retries.append(not any(leaf.pfn == pfn for leaf in mmu.pgtable.leaves()))
        return ret

    monkeypatch.setattr(nested_mmu, "kvmppc_create_pte", counting)
    return retries


def test_the_host_move_lands_between_lookup_and_insert(monkeypatch):
    """The window: the host's notifier runs between the nested fault's L1->L0 lookup (its
    mmu_invalidate_seq snapshot) and its shadow-PTE insert, which then retries; in some
    schedules it is the faulting page itself that moved. Every schedule stays clean.
    Measured over 200 random schedules (smt4, moves=3): 107 with a retry, 18 of them for
    a stale lookup; PCT depth 3 reaches it in none of 1,000 (one preemption inside one
    step of one actor, plus two host steps)."""
    retries = _count_retries(monkeypatch)
    any_retry = stale = 0
    for seed in range(100):
        retries.clear()
        r = emu.run(MOVE_NAME, seed=seed, params={"moves": 3})
        assert r.ok, r.violation.describe()
        any_retry += bool(retries)
        stale += any(retries)
    assert any_retry > 0 and stale > 0, (any_retry, stale)


def test_without_the_insert_retry_the_race_is_found(monkeypatch):
    """With the nested insert's mmu_invalidate_retry check gone (instantiate_page keeps
    its own), a shadow PTE is inserted for the host page the data just left, and shadow
    composition reports that no L0 unmap would ever remove it."""
    real_create, real_retry = nested_mmu.kvmppc_create_pte, radix_mmu.mmu_notifier_retry
    unchecked = -1  # an mmu_seq no snapshot has

    async def create(mmu, pgtable, pte, gpa, level, mmu_seq, *rest):
        return await real_create(mmu, pgtable, pte, gpa, level, unchecked, *rest)

    monkeypatch.setattr(nested_mmu, "kvmppc_create_pte", create)
    monkeypatch.setattr(radix_mmu, "mmu_notifier_retry",
                        lambda mmu, seq: seq != unchecked and real_retry(mmu, seq))
    h = emu.hunt(MOVE_NAME, schedules=200, seed=0)
    assert h.found is not None
    v = h.found.violation
    assert "shadow composition" in v.message and "no L0 unmap" in v.message, v.describe()


def test_the_host_moves_pages_while_the_l2s_run():
    """The moves are real and happen while the L2s run: in every schedule some of the
    MIGRATIONS copy a page to a new host frame (a page a fault holds a reference to stays),
    and the L2s' checked loads then read their data from the new frames."""
    for seed in range(10):
        r = emu.run(MOVE_NAME, seed=seed)
        assert r.ok, r.violation.describe()
        qemu = r.trace.actors.index("qemu")
        copies = [e[0] for e in r.trace.events
                  if e[2] == "step" and e[1] == qemu and str(e[3]) == f"sleep {UNIT.copy_ns}"]
        loads = [e[0] for e in r.trace.events
                 if e[2] == "step" and "Ld(" in str(e[3])]
        assert copies and loads and min(copies) < max(loads), seed
