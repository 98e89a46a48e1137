"""--why on the shrunk findings of quirks of three platforms, judged against the race window
each scenario really has (read from the kernel functions in the timeline), and tolerant
replay of every pKVM quirk's shrunk finding (and two POWER secure-VM ones) across a model
change: an extra scheduling point inside the window and a renamed operation.

The windows (what opens each, and the step from which the violation is certain):

| quirk                | opens                               | certain from                       |
|----------------------|-------------------------------------|------------------------------------|
| unshare-ignores-pin  | hyp_pin_shared_mem takes the pin    | __pkvm_host_unshare_hyp's          |
|                      |                                     | host_mmu.lock (the unpin waits)    |
| abort-bug-on         | a CPU's abort on VA X starts; the   | __get_fault_info's AT of X, before |
|                      | remapper unmaps X (host_stage1_...) | the remapper maps X back           |
| page-in-hole-race    | kvmppc_svm_page_in collects the     | QEMU's host_fault fills that PTE:  |
|                      | hole (migrate_vma_setup)            | migrate_vma_pages then aborts      |
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import pytest

from emu.errors import ReplayDivergence
from emu.scenarios.pkvm import QUIRK_SCENARIO as PKVM_QUIRKS
from emu.sim import replay as replay_file
from emu.sim.explain import deciding_pair
from emu.sim.runner import RunResult, hunt
from emu.sim.why import why

RUNS = 10
"""Continuations per prefix: every prefix is sampled (stride 1) within the default budget."""


@functools.cache
def _data(scenario: str, quirk: str) -> dict[str, Any]:
    """The replay data of the quirk's shrunk finding (hunted once for the whole module)."""
    h = hunt(scenario, quirks=[quirk], schedules=300)
    assert h.shrunk is not None, f"{scenario} --quirk {quirk}: nothing found"
    return replay_file.replay_data(h.shrunk.result, Path("shrunk.replay.json"),
                                   h.shrunk.record())


@functools.cache
def _detailed(scenario: str, quirk: str) -> RunResult:
    """The shrunk finding replayed strictly with accesses and model functions recorded."""
    rep = replay_file.replay(_data(scenario, quirk), detail=True)
    assert rep.matched and rep.result.accesses is not None
    return rep.result


def _where(r: RunResult, step: int) -> str:
    return r.trace.where.get(step, "")


def _actor(r: RunResult, step: int) -> str:
    return r.decisions[step - 1][1]


def _hex(pattern: str, message: str) -> int:
    found = re.search(pattern, message)
    assert found, message
    return int(found.group(1), 16)


# --- --why: share-unshare-pin --quirk unshare-ignores-pin (pKVM) --------------------------

def test_why_unshare_ignores_pin_names_the_pin_and_the_unshare():
    r = _detailed("share-unshare-pin", "unshare-ignores-pin")
    pfn = _hex(r"pfn (0x[0-9a-f]+)", r.violation.message)
    answer = why(r, runs=RUNS)
    pair = answer.pair
    assert pair is not None and pair.about and pair.objects[0] == f"vmemmap:{pfn:#x}"
    pin, unshare = pair.first, pair.second
    assert "< hyp_pin_shared_mem" in _where(r, pin)
    assert "< __pkvm_host_unshare_hyp" in _where(r, unshare)
    unsharer = _actor(r, unshare)
    assert _actor(r, pin) != unsharer
    # certain once the unshare holds host_mmu.lock with the page still pinned: the unpin
    # needs that lock; before, the pinning CPU may still unpin first
    assert answer.stride == 1
    k = answer.inevitable
    assert k is not None and pin < k <= unshare
    assert _actor(r, k) == unsharer and r.decisions[k - 1][2] == "spin_lock host_mmu.lock"
    assert _where(r, k) == "host_lock_component() < __pkvm_host_unshare_hyp"
    assert not any("hyp_unpin_shared_mem" in _where(r, s) for s in range(1, k + 1))
    assert answer.curve[pin - 1].p < 1.0


# --- --why: concurrent-aborts --quirk abort-bug-on (pKVM) ----------------------------------

def _abort_window(r: RunResult) -> tuple[int, int, int]:
    """(the faulting CPU's first stage-2 walk of the VA, the VA's unmap, the failing AT)."""
    v = r.violation
    assert v.kind == "bug-on"
    far = _hex(r"AT of (0x[0-9a-f]+)", v.message)
    at = v.step
    assert r.decisions[at - 1][2] == "at s1e1r (host stage-1)"
    assert f"handle_host_mem_abort(cpu={_actor(r, at)[3:]}, far={far:#x}" in _where(r, at)
    stores = [s for s in range(1, at) if f"host_stage1_update(va={far:#x})" in _where(r, s)]
    assert len(stores) == 1  # the unmap; the remap back would let the AT succeed
    walk = next(s for s in range(1, at) if _actor(r, s) == _actor(r, at)
                and f"addr={far:#x}, op='host stage-2 walk'" in _where(r, s))
    assert walk < stores[0] < at
    return walk, stores[0], at


def test_why_abort_bug_on_is_certain_at_the_at_after_the_unmap():
    r = _detailed("concurrent-aborts", "abort-bug-on")
    _, unmap, at = _abort_window(r)
    answer = why(r, runs=RUNS)
    assert answer.stride == 1 and answer.curve[-1].p == 1.0
    # after the unmap the remapper may still map the VA back before the AT reads it
    assert answer.curve[unmap].p < 1.0
    assert answer.inevitable == at


def test_the_abort_bug_on_pair_is_the_unmap_and_the_at():
    r = _detailed("concurrent-aborts", "abort-bug-on")
    _, unmap, at = _abort_window(r)
    pair = deciding_pair(r)
    assert pair is not None and pair.about and (pair.first, pair.second) == (unmap, at)


# --- --why: qemu-vs-page-in --quirk page-in-hole-race (POWER secure VMs) -------------------

def _hole_window(r: RunResult) -> tuple[int, int, int, str]:
    """(the page-in's step collecting the hole, QEMU's fault filling it, the aborted insert,
    the host PTE they share)."""
    v = r.violation
    gfn = _hex(r"GFN (0x[0-9a-f]+)", v.message)
    insert = v.step
    assert _where(r, insert) == "migrate_vma_pages() < kvmppc_svm_page_in"
    pte, = (o for o in r.accesses[insert - 1].writes if o.startswith("hostpte:"))
    pager = _actor(r, insert)
    fill = max(s for s in range(1, insert)
               if _actor(r, s) != pager and pte in r.accesses[s - 1].writes)
    assert _where(r, fill).endswith("< host_fault")
    requests = r.trace.requests()
    setup = max(s for s in range(1, fill) if _actor(r, s) == pager
                and pte in r.accesses[s - 1].writes)
    page_in = f"H_SVM_PAGE_IN(gfn={gfn:#x}, "
    assert any(q.startswith(page_in) for q in requests[setup])
    assert any(q.startswith(page_in) for q in requests[insert])
    return setup, fill, insert, pte


def test_why_page_in_hole_race_is_certain_once_qemu_fills_the_hole():
    r = _detailed("qemu-vs-page-in", "page-in-hole-race")
    setup, fill, insert, _ = _hole_window(r)
    answer = why(r, runs=RUNS)
    assert answer.stride == 1 and answer.curve[0].p < 1.0
    assert setup < fill < insert
    assert answer.curve[fill - 1].p < 1.0 and answer.inevitable == fill


def test_the_page_in_hole_race_pair_is_the_fill_and_the_insert():
    """"GFN 0x1" numbers GFNs, not the host frame 0x1 (``explain.numbered``); no other actor
    touches GFN 0x1's word, so the pair is the failing actor's last one whose first step
    wrote what the insert reads: QEMU's fill of the PTE, not its later read-back."""
    r = _detailed("qemu-vs-page-in", "page-in-hole-race")
    _, fill, insert, pte = _hole_window(r)
    pair = deciding_pair(r)
    assert pair is not None and (pair.first, pair.second) == (fill, insert)
    assert pte in pair.objects


# --- tolerant replay across a model change ------------------------------------------------

def _change_the_window(change: dict[str, str | None], data: dict[str, Any]) -> str:
    """Put the extra point before the failing step's operation (inside the window) and
    rename the last other operation of another actor before it; the strict replay's error
    for the first decision this changes."""
    decisions, failing = data["decisions"], data["violation"]["step"]
    _, who, at = decisions[failing - 1]
    change["who"], change["at"] = who, at
    change["rename"] = next(op for _, name, op in reversed(decisions[:failing - 1])
                            if name != who and op not in (at, "start"))
    step, name, op = next(d for d in decisions
                          if (d[1], d[2]) == (who, at) or d[2] == change["rename"])
    now = f"extra before {op}" if (name, op) == (who, at) else f"renamed {op}"
    return (f"at step {step} the replay file has {name} doing '{op}' (its 1st time), but "
            f"here {name} is at '{now}'; runnable: ")


CHANGED = [(sc, q) for q, sc in PKVM_QUIRKS.items() if q != "pgd-refcount"] + [
    ("qemu-vs-page-in", "page-in-hole-race"), ("svm-boot", "no-init-done-migration")]
"""Every pKVM quirk's scenario but pkvm-boot's (a finding at step 0: below), two svm ones."""


@pytest.mark.parametrize("scenario, quirk", CHANGED)
def test_strict_replay_names_the_first_drift(changed_model, scenario, quirk):
    data = _data(scenario, quirk)
    drift = _change_the_window(changed_model, data)
    with pytest.raises(ReplayDivergence) as err:
        replay_file.replay(data)
    assert str(err.value).startswith(drift), (drift, str(err.value))


@pytest.mark.parametrize("scenario, quirk", CHANGED)
def test_tolerant_replay_finds_the_violation_across_the_change(changed_model, scenario,
                                                                quirk):
    data = _data(scenario, quirk)
    _change_the_window(changed_model, data)
    rep = replay_file.replay(data, tolerant=True)
    assert rep.tolerant.new >= 2 and rep.tolerant.skipped >= 1
    assert rep.result.violation is not None
    assert rep.result.violation.kind == data["violation"]["kind"] and rep.reproduced


def test_a_finding_at_boot_has_no_decision_to_drift(changed_model):
    """pgd-refcount breaks the host stage-2's refcounts at boot, before any decision: both
    modes reproduce it whatever the change."""
    data = _data("pkvm-boot", "pgd-refcount")
    assert data["decisions"] == [] and data["violation"]["step"] == 0
    changed_model["who"], changed_model["at"], changed_model["rename"] = "cpu0", "start", "start"
    for tolerant in (False, True):
        rep = replay_file.replay(data, tolerant=tolerant)
        assert rep.reproduced and rep.result.violation.kind == "invariant"
