"""The nested suite's teardown scenarios: ``nested-teardown-vs-enter`` (an L1 tears a nested
guest down under its other vCPUs, an IS=3 flush, a new guest's creation and the debugfs
reader) and ``memslot-delete-vs-enter`` (QEMU deletes the memslot holding L2 register
blocks under H_ENTER_NESTED). Clean on the fixed model; each candidate (C1-C3) and B7 found
with its quirk from seed 0; the windows measured; the scenarios' return-code checks shown
to refuse what the kernel does not return."""

from __future__ import annotations

from collections import Counter

import pytest

import emu
from emu.hw.memory import PAGE_SHIFT
from emu.hw.radix import read_pate
from emu.kvm import enter_nested
from emu.kvm.hvcall import H_PARAMETER
from emu.scenarios.nested import QUIRK_PARAMS, QUIRK_SCENARIO
from emu.scenarios.nested.memslot_delete import DIMM_GFN
from emu.scenarios.nested.teardown import GONE, WINDOW

TEARDOWN, MEMSLOT = "nested-teardown-vs-enter", "memslot-delete-vs-enter"


@pytest.mark.parametrize(("quirk", "kind", "text", "actor"), [
    ("idr-alloc-unlocked", "idr", "the IDR's writers are not serialised", None),
    ("tlbie-all-lpid-no-ref", "use-after-free", "freed by kvmhv_release_nested", "vm1.vcpu3"),
    ("radix-dump-lockless", "use-after-free", "debugfs_radix_read reads", "debugfs"),
    ("enter-nested-no-srcu", "use-after-free",
     "which kvm_delete_memslot freed while this copy (outside kvm->srcu)", None),
])
@pytest.mark.parametrize(("strategy", "budget"), [("random", 50), ("pct", 500)])
def test_quirk_found_from_seed_0(quirk, kind, text, actor, strategy, budget):
    """Found by random walk within 50 schedules (at seeds 6, 2, 2 and 2), by PCT d3
    within 500 (48, 350, 11, 16)."""
    h = emu.hunt(QUIRK_SCENARIO[quirk], schedules=budget, strategy=strategy, quirks=(quirk,),
                 params=QUIRK_PARAMS.get(quirk, {}))
    assert h.found is not None, f"{quirk} not found in {budget} {strategy} schedules"
    v = h.found.violation
    assert v.kind == kind and text in v.message, v.describe()
    assert actor is None or v.actor == actor, v.describe()


def clean_runs(name, seeds, **params) -> list:
    """One run per seed, every one clean."""
    runs = [emu.run(name, seed=seed, params=params) for seed in seeds]
    for r in runs:
        assert r.ok, (r.seed, r.violation.describe())
    return runs


def notes(runs) -> Counter:
    """How many of ``runs`` made each window and teardown note."""
    return Counter(text for r in runs for text in {
        e[3] for e in r.trace.events if e[2] == "note" and e[3].startswith((WINDOW, GONE))})


def test_the_teardown_lands_inside_each_call():
    """In 40 random schedules (moves=3) the teardown of lpid 1 lands inside L1 vCPU 1's
    H_ENTER_NESTED, the IS=3 flush, the creation of lpid 2 and a radix dump in nearly all
    (40, 39, 40, 40); L1 vCPU 1 then learns of it by the reflected HDSI in every one, and
    in 14 it entered after the removal, so L0 made lpid 1 anew (no PATE) first."""
    runs = clean_runs(TEARDOWN, range(40), moves=3)
    seen = notes(runs)
    for call in ("H_ENTER_NESTED of L1 vCPU 1", "H_TLB_INVALIDATE IS=3 of L1 vCPU 3",
                 "the creation of lpid 2 of L1 vCPU 2", "the radix dump of debugfs"):
        assert seen[WINDOW + call] >= 20, (call, seen)
    assert seen[GONE + "1.1: HDSI"] == 40, seen
    anew = sum(any(kind == "step" and op.startswith("kvmhv_alloc_nested lpid 1")
                   and r.trace.actors[actor] == "vm1.vcpu1"
                   for _, actor, kind, op, _ in r.trace.events) for r in runs)
    assert anew >= 3


def test_the_creation_of_lpid_2_straddles_the_removal_of_lpid_1():
    """C1's own window, from the trace: the removal of lpid 1 comes between the creator's
    kvmhv_alloc_nested of lpid 2 and its idr_replace, where the kernel's idr_alloc runs
    unlocked (14 of 40 random schedules)."""
    marks = ("kvmhv_alloc_nested lpid 2", "idr_remove lpid 1", "idr_replace lpid 2")
    hits = 0
    for r in clean_runs(TEARDOWN, range(40)):
        at = {}
        for step, _, kind, op, _ in r.trace.events:
            if kind == "step":
                at.update({mark: step for mark in marks if op.startswith(mark)
                           and mark not in at})
        hits += len(at) == 3 and at[marks[0]] < at[marks[1]] < at[marks[2]]
    assert hits >= 5


def test_the_memslot_delete_lands_inside_h_enter_nested():
    """In 40 random schedules (moves=3) QEMU's delete lands inside an H_ENTER_NESTED of
    L1 vCPU 0 in 27 and of vCPU 1 in all, and both kernel answers to a vanished block are
    seen from both L2 vCPUs: H_PARAMETER (the read: 34 and 8) and H_AUTHORITY (the
    write-back: 6 and 32)."""
    seen = notes(clean_runs(MEMSLOT, range(40), moves=3))
    for vcpu in (0, 1):
        assert seen[f"{WINDOW}H_ENTER_NESTED of L1 vCPU {vcpu}"] >= 10, seen
    for l2 in ("1.1", "1.2"):
        for code in ("H_PARAMETER", "H_AUTHORITY"):
            assert seen[f"{GONE}{l2}: {code}"] >= 2, seen


def test_a_torn_down_lpid_is_not_refused(monkeypatch):
    """kvmhv_get_nested never reads the PATE: an L1 entering a guest it tore down gets the
    guest made anew and the HDSI, not H_PARAMETER. A kernel that refused it would fail the
    scenario's check."""
    get_nested = enter_nested.kvmhv_get_nested

    async def refusing(l1, lpid, create):
        pate = read_pate(l1.read_guest, l1.l1_ptcr, lpid)
        return None if pate is None or not pate.dw0 else await get_nested(l1, lpid, create)

    monkeypatch.setattr(enter_nested, "kvmhv_get_nested", refusing)
    h = emu.hunt(TEARDOWN, schedules=20)
    assert h.found is not None
    v = h.found.violation
    assert v.kind == "return-code" and "H_ENTER_NESTED" in v.message, v.describe()
    assert "H_PARAMETER" in v.message, v.describe()


def in_dimm(hv_ptr: int) -> bool:
    return hv_ptr >> PAGE_SHIFT >= DIMM_GFN


def refused(monkeypatch, name: str, fails) -> None:
    """With the copy ``name`` failing for the DIMM's blocks though the slot is there, the
    memslot scenario refuses the code H_ENTER_NESTED then returns."""
    monkeypatch.setattr(enter_nested, name, fails)
    h = emu.hunt(MEMSLOT, schedules=20)
    assert h.found is not None
    v = h.found.violation
    assert v.kind == "return-code" and "the DIMM holding its blocks is still there" in \
        v.message, v.describe()


def test_a_failed_read_is_accepted_only_once_the_slot_is_gone(monkeypatch):
    read = enter_nested.kvmhv_read_guest_state_and_regs

    async def fails(l1, vcpu, hv_ptr, regs_ptr):
        blocks = await read(l1, vcpu, hv_ptr, regs_ptr)
        return H_PARAMETER if in_dimm(hv_ptr) else blocks

    refused(monkeypatch, "kvmhv_read_guest_state_and_regs", fails)


def test_a_failed_write_back_is_accepted_only_once_the_slot_is_gone(monkeypatch):
    write = enter_nested.kvmhv_write_guest_state_and_regs

    async def fails(l1, hv_ptr, state, regs_ptr, regs):
        return await write(l1, hv_ptr, state, regs_ptr, regs) and not in_dimm(hv_ptr)

    refused(monkeypatch, "kvmhv_write_guest_state_and_regs", fails)
