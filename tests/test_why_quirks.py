"""--why on the shrunk findings of quirks of three platforms, judged against the race window
each scenario really has (read from the kernel functions in the timeline), the deciding
pair of eight more quirks (seven named by their checks' ``violations.About``), and tolerant
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
from emu.hw.memory import PAGE_SHIFT
from emu.scenarios.nested import QUIRK_PARAMS as NESTED_PARAMS
from emu.scenarios.pkvm import QUIRK_PARAMS as PKVM_PARAMS
from emu.scenarios.pkvm import QUIRK_SCENARIO as PKVM_QUIRKS
from emu.scenarios.svm import QUIRK_PARAMS as SVM_PARAMS
from emu.scenarios.svm import QUIRK_STRATEGY
from emu.sim import replay as replay_file
from emu.sim.explain import deciding_pair, explain
from emu.sim.runner import RunResult, hunt
from emu.sim.why import why

RUNS = 10
"""Continuations per prefix: every prefix is sampled (stride 1) within the default budget."""
PARAMS = {**SVM_PARAMS, **NESTED_PARAMS, **PKVM_PARAMS}
"""The parameters a quirk's scenario needs."""


@functools.cache
def _data(scenario: str, quirk: str) -> dict[str, Any]:
    """The replay data of the quirk's shrunk finding (hunted once for the whole module, with
    the strategy and first seed its scenario declares, if any)."""
    strategy, depth, seed = QUIRK_STRATEGY.get(quirk, ("random", 3, 0))
    h = hunt(scenario, quirks=[quirk], schedules=300, params=PARAMS.get(quirk),
             strategy=strategy, depth=depth, seed=seed)
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


# --- the deciding pair of the quirks whose check names its objects (violations.About) ----

def _pair(scenario: str, quirk: str) -> tuple[RunResult, int, int, str]:
    """The shrunk finding, its deciding pair (first, second) and the pair's object, after
    the checks every pair must pass: between two actors, on an object the violation is
    about (never a check's bookkeeping), conflicting there."""
    r = _detailed(scenario, quirk)
    pair = deciding_pair(r)
    assert pair is not None, r.violation.describe()
    obj = pair.objects[0]
    a, b = r.accesses[pair.first - 1], r.accesses[pair.second - 1]
    assert _actor(r, pair.first) != _actor(r, pair.second)
    assert not obj.startswith("check:") and pair.first < pair.second <= r.violation.step
    if pair.via:  # a stale copy: the copy's fill read what the second step then changed
        assert pair.via in r.violation.objects and pair.via in a.writes
        assert obj in a.reads and obj in b.writes
    else:
        assert pair.about and obj in r.violation.objects
        assert obj in (a.writes & (b.reads | b.writes)) | (a.reads & b.writes)
    return r, pair.first, pair.second, obj


def test_the_fault_livelock_pair_is_the_other_fault_s_reference():
    """fault-ref-no-page-lock: "device page 6" (decimal) is ``page:device:0x6``; the pair
    is the two faults' references on it, the failing fault's one of them."""
    r, first, second, obj = _pair("share-storm", "fault-ref-no-page-lock")
    dpfn = int(re.search(r"device page (\d+)", r.violation.message).group(1))
    assert obj == f"page:device:{dpfn:#x}" and r.violation.objects == (obj,)
    assert r.violation.actor in (_actor(r, first), _actor(r, second))
    assert obj in r.accesses[first - 1].writes and obj in r.accesses[second - 1].writes


def test_the_busy_page_pair_is_the_share_s_reference_and_init_done_s_migration():
    """busy-page-fails: a return code names no object, but INIT_DONE's migration names the
    page whose extra reference made it fail (``uvmem.failed_on``): the pair is the other
    vCPU's share taking that reference (gfn_to_pfn) and the migration finding it busy."""
    r, first, second, obj = _pair("init-done-vs-share", "busy-page-fails")
    assert r.violation.kind == "return-code" and "returned H_STATE" in r.violation.message
    assert re.fullmatch(r"page:normal:0x[0-9a-f]+", obj) and r.violation.objects == (obj,)
    share, done = r.trace.requests()[first], r.trace.requests()[second]
    assert any(q.startswith("H_SVM_PAGE_IN(") and "H_PAGE_IN_SHARED" in q for q in share)
    assert "H_SVM_INIT_DONE()" in done and "kvmppc_uv_migrate_mem_slot" in _where(r, second)
    assert obj in r.accesses[first - 1].writes and obj in r.accesses[second - 1].reads
    assert _actor(r, first) != _actor(r, second)


def test_the_double_registration_pair_is_the_hotplug_and_init_start_s_walk():
    """init-start-unserialised: INIT_START's walk names the memslots it read when a slot's
    registration fails, with the step (``About.at``: the code is checked after INIT_ABORT,
    which reads them again): the pair is QEMU publishing the hot-plugged slot and the
    walk's read of it."""
    r, first, second, obj = _pair("hotplug-during-esm", "init-start-unserialised")
    assert r.violation.kind == "return-code" and r.violation.objects == (obj,) == ("memslots:1",)
    assert r.violation.at is not None and second <= r.violation.at < r.violation.step
    assert _actor(r, first) == "qemu" and "H_SVM_INIT_START()" in r.trace.requests()[second]
    assert obj in r.accesses[first - 1].writes and obj in r.accesses[second - 1].reads


def _pair_any(scenario: str, quirk: str) -> tuple[RunResult, int, int, str]:
    """The deciding pair of a violation that names no object: on the model's state, the
    failing actor in it."""
    r = _detailed(scenario, quirk)
    pair = deciding_pair(r)
    assert pair is not None and not pair.about and not r.violation.objects
    actors = {_actor(r, pair.first), _actor(r, pair.second)}
    assert len(actors) == 2 and r.violation.actor in actors
    obj = pair.objects[0]
    assert not obj.startswith("check:") and not any(
        op in (f"send {obj}", f"recv {obj}", f"wait_for_completion {obj}")
        for _, _, op in r.decisions)
    return r, pair.first, pair.second, obj


def test_the_page_in_fail_livelock_pair_is_the_failed_page_in_and_the_share():
    """page-in-fail-leaves-uvmem (a liveness violation: no object named): the model's state,
    not the vCPU's channel to its CPU: the page-in whose UV_PAGE_IN failed leaves the GFN
    behind; the share of that GFN spinning on it."""
    r, first, second, _ = _pair_any("page-in-fail-vs-share", "page-in-fail-leaves-uvmem")
    requests = r.trace.requests()
    gfn = _hex(r"UV_SHARE_PAGE\(gfn=(0x[0-9a-f]+)", " ".join(requests[second]))
    assert _actor(r, second) == r.violation.actor
    assert r.decisions[first - 1][2] == "wait_for_completion UV_PAGE_IN"
    assert _where(r, first).endswith("< kvmppc_svm_page_in")
    assert f"H_SVM_PAGE_IN(gfn={gfn:#x}, flags=0)" in requests[first]


def test_the_svm_off_pair_is_the_entry_s_mmu_ready_and_the_teardown():
    r, first, second, obj = _pair("svm-off-vs-entry", "svm-off-no-guard")
    assert obj == "mmu:1" and r.violation.objects == ("mmu:1", "vcpus_running:1")
    assert _where(r, first).startswith("_enter()") and _actor(r, first).startswith("pcpu")
    assert _actor(r, second) == "qemu" and "kvmhv_svm_off" in _where(r, second)


def test_the_radix_dump_pair_is_the_table_s_free_and_the_lockless_read():
    r, first, second, obj = _pair("nested-teardown-vs-enter", "radix-dump-lockless")
    table = _hex(r"table page (0x[0-9a-f]+)", r.violation.message)
    assert obj == f"frame:normal:{table >> PAGE_SHIFT:#x}"
    assert "kvmhv_flush_nested" in _where(r, first) and obj in r.accesses[first - 1].writes
    assert second == r.violation.step and _actor(r, second) == "debugfs"


def test_the_enter_nested_pair_is_the_copy_and_the_memslot_delete():
    r, first, second, obj = _pair("memslot-delete-vs-enter", "enter-nested-no-srcu")
    assert obj == "memslots:1"
    copy, delete = sorted((first, second), key=lambda s: _actor(r, s) == "qemu")
    assert _actor(r, copy) == r.violation.actor and "kvm_vcpu_read_guest" in _where(r, copy)
    assert "kvm_delete_memslot" in _where(r, delete)


@pytest.mark.parametrize("quirk", ["no-prev-cpu-flush", "one-tlb-per-core"])
def test_the_stale_tlb_pair_is_the_fill_and_the_load_through_it(quirk):
    """The L2 load on another CPU of the same TLB group reads the entry the first CPU
    filled (and nothing flushed), not the channel that moved the vCPU."""
    r, first, second, obj = _pair("tlbiel-migrate", quirk)
    ea = _hex(r"EA (0x[0-9a-f]+)", r.violation.message)
    assert re.fullmatch(r"tlb:g\d+:lpid\d+", obj) and second == r.violation.step
    assert obj in r.accesses[first - 1].writes and obj in r.accesses[second - 1].reads
    assert f"(ea={ea}," in r.decisions[first - 1][2]


def test_the_set_owner_pair_is_the_tlb_fill_and_the_unflushed_pte_store():
    """The stale entry (``tlb:cpu0:vmid0``) only its CPU touches: the pair is that CPU's
    fill from a stage-2 entry against the donor's store to the same entry (no TLBI)."""
    r, first, second, obj = _pair("donate-vs-abort", "set-owner-no-tlbi")
    stale = r.violation.objects[0]
    cpu = re.fullmatch(r"tlb:(cpu\d+):vmid0", stale)
    assert cpu and deciding_pair(r).via == stale and _actor(r, first) == cpu.group(1)
    assert obj.startswith("s2:") and r.decisions[second - 1][2] == "stage-2 pte store"
    assert f"the copy {stale} the violation is about, taken from {obj}" in explain(r, 0)
    assert why(r, runs=2).pair == deciding_pair(r)


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
