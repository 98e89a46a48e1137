"""pKVM's transitions are atomic: random programs of transitions on 2-3 host CPUs, run as a
schedule (a tiny scenario defined here, the same model code on a ``Machine``), end with the
return codes and page states of *some* sequential order of the same calls, each CPU's in
program order, found by a search over the direct API with pruning on the return codes.
Every invariant is checked at every step of the schedule. Hypothesis draws the programs."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import emu
from emu.pkvm import mem_protect as mp
from emu.pkvm.invariants import register
from emu.pkvm.pgtable import KVM_PGTABLE_PROT_R, KVM_PGTABLE_PROT_RWX, kvm_pgtable_get_leaf
from emu.sim import Param, scenario
from emu.sim.sequential import Sequential

QUIRKS = ("abort-bug-on", "check-apply-unlocked", "pgd-refcount", "set-owner-no-tlbi",
          "unshare-ignores-pin")
MEMORY_PAGES = 64
PAGES = 3
"""The host pages the programs work on: the first three the host owns."""
GFNS = (0x10, 0x11)

_LAST: dict[str, Any] = {}
"""The machine and per-CPU results of the last schedule (read after emu.run returns)."""

KERNEL = {
    "share_hyp": mp.__pkvm_host_share_hyp,
    "unshare_hyp": mp.__pkvm_host_unshare_hyp,
    "donate_hyp": mp.__pkvm_host_donate_hyp,
    "hyp_donate_host": mp.__pkvm_hyp_donate_host,
    "share_guest": mp.__pkvm_host_share_guest,
    "unshare_guest": mp.__pkvm_host_unshare_guest,
    "wrprotect": mp.__pkvm_host_wrprotect_guest,
    "relax": mp.__pkvm_host_relax_perms_guest,
    "young": mp.__pkvm_host_test_clear_young_guest,
}


class CpuState:
    """What a CPU's program remembers between its calls: its pins and FF-A handles."""

    def __init__(self) -> None:
        self.pins: list[int] = []
        self.handles: list[int] = []


async def do_op(hyp: mp.Hyp, cpu: int, mine: CpuState, op: list[Any]) -> Any:
    """One call of a program; returns what the test compares (a return code, or "skip"
    when the CPU has nothing to undo)."""
    name, arg = op
    pfn = hyp.host_pfns()[arg % PAGES]
    gfn = GFNS[arg % len(GFNS)]
    vm = hyp.vms[0]
    vcpu = vm.vcpus[cpu]
    if name in ("share_hyp", "unshare_hyp"):
        return await KERNEL[name](hyp, pfn)
    if name in ("donate_hyp", "hyp_donate_host"):
        return await KERNEL[name](hyp, pfn, 1)
    if name == "pin":
        ret = await mp.hyp_pin_shared_mem(hyp, pfn << 12, (pfn + 1) << 12)
        if not ret:
            mine.pins.append(pfn)
        return ret
    if name == "unpin":
        if not mine.pins:
            return "skip"
        pfn = mine.pins.pop(0)
        return await mp.hyp_unpin_shared_mem(hyp, pfn << 12, (pfn + 1) << 12)
    if name == "ffa_share":
        ret = await mp.ffa_mem_share(hyp, pfn, 1)
        if ret > 0:
            mine.handles.append(ret)
            return "handle"
        return ret
    if name == "ffa_reclaim":
        if not mine.handles:
            return "skip"
        return await mp.ffa_mem_reclaim(hyp, mine.handles.pop(0))
    if name == "share_guest":
        ret = await mp.pkvm_refill_memcache(hyp, vcpu)
        return ret or await KERNEL[name](hyp, pfn, gfn, 1, vcpu,
                                         KVM_PGTABLE_PROT_R if arg & 4 else KVM_PGTABLE_PROT_RWX)
    if name in ("unshare_guest", "wrprotect"):
        return await KERNEL[name](hyp, gfn, 1, vm)
    if name == "relax":
        return await KERNEL[name](hyp, gfn, vcpu, KVM_PGTABLE_PROT_RWX)
    if name == "young":
        return await KERNEL[name](hyp, gfn, 1, bool(arg & 4), vm)
    assert name == "guest_access"
    return await mp.guest_mem_access(hyp, cpu, vm, gfn, bool(arg & 4))


def fingerprint(hyp: mp.Hyp) -> tuple:
    """The state the programs can change: their pages' states and counts, the guest leaves."""
    vmemmap = hyp.hyp_vmemmap
    pages = tuple((mp.get_host_state(hyp, pfn << 12), mp.get_hyp_state(hyp, pfn << 12),
                   vmemmap.refcount[pfn], vmemmap.host_share_guest_count[pfn])
                  for pfn in hyp.host_pfns()[:PAGES])
    leaves = tuple(kvm_pgtable_get_leaf(hyp.vms[0].pgt, gfn << 12)[1] for gfn in GFNS)
    return pages, leaves


def new_hyp(ctx: Any, nr_cpus: int) -> mp.Hyp:
    return mp.Hyp(ctx, memory_pages=MEMORY_PAGES, nr_cpus=nr_cpus, nr_vms=1)


@scenario("pkvm-linearizable-test", params={"program": Param("[]")},
          quirks={q: "" for q in QUIRKS})
def linearizable(m: emu.sim.Machine, program: str) -> None:
    """Each CPU runs its list of calls; the results are kept for the test."""
    programs = json.loads(program)
    hyp = new_hyp(m, len(programs))
    register(m, hyp)
    results: list[list[Any]] = [[] for _ in programs]

    async def cpu_program(cpu: int) -> None:
        mine = CpuState()
        for op in programs[cpu]:
            results[cpu].append(await do_op(hyp, cpu, mine, op))

    for cpu in range(len(programs)):
        m.spawn(f"cpu{cpu}", cpu_program, cpu)
    _LAST.update(hyp=hyp, results=results)


def sequential_witness(programs: list[list[list[Any]]], results: list[list[Any]],
                       final: tuple) -> list[tuple[int, int]] | None:
    """An order of the calls (cpu, index) whose sequential run gives ``results`` and ends
    in ``final``, or None. Depth first; a call whose result differs prunes the branch."""
    ctx = Sequential()
    start = new_hyp(ctx, len(programs))

    def search(hyp: mp.Hyp, done: list[int], cpus: list[CpuState],
               order: list[tuple[int, int]]) -> list[tuple[int, int]] | None:
        if all(d == len(p) for d, p in zip(done, programs, strict=True)):
            return order if fingerprint(hyp) == final else None
        for cpu, prog in enumerate(programs):
            i = done[cpu]
            if i == len(prog):
                continue
            h, c = copy.deepcopy((hyp, cpus))
            if ctx.call(do_op(h, cpu, c[cpu], prog[i])) != results[cpu][i]:
                continue
            found = search(h, [*done[:cpu], i + 1, *done[cpu + 1:]], c, [*order, (cpu, i)])
            if found is not None:
                return found
        return None

    return search(start, [0] * len(programs), [CpuState() for _ in programs], [])


OPS = ("share_hyp", "unshare_hyp", "donate_hyp", "hyp_donate_host", "pin", "unpin",
       "ffa_share", "ffa_reclaim", "share_guest", "unshare_guest", "wrprotect", "relax",
       "young", "guest_access")
op_st = st.tuples(st.sampled_from(OPS), st.integers(0, 7)).map(list)
programs_st = st.lists(st.lists(op_st, min_size=1, max_size=3), min_size=2, max_size=3)


def run_and_check(programs: list[list[list[Any]]], seed: int, strategy: str = "random") -> None:
    result = emu.run(linearizable, seed=seed, params={"program": json.dumps(programs)},
                     strategy=strategy)
    assert result.ok, result.violations
    hyp, results = _LAST["hyp"], _LAST["results"]
    order = sequential_witness(programs, results, fingerprint(hyp))
    assert order is not None, f"no sequential order gives {results} and the final state"


@settings(max_examples=400, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(programs=programs_st, seed=st.integers(0, 2**16),
       strategy=st.sampled_from(("random", "pct")))
def test_concurrent_programs_are_linearizable(programs, seed, strategy):
    run_and_check(programs, seed, strategy)


def test_a_contended_page():
    """Three CPUs on one page: share/pin/unshare, donate/give back, FF-A, guest share;
    several schedules."""
    programs = [
        [["share_hyp", 0], ["pin", 0], ["unshare_hyp", 0]],
        [["donate_hyp", 0], ["hyp_donate_host", 0], ["ffa_share", 0]],
        [["share_guest", 0], ["unpin", 0], ["unshare_guest", 0]],
    ]
    for seed in range(6):
        run_and_check(programs, seed, ("random", "pct")[seed % 2])


def test_check_apply_unlocked_is_not_linearizable():
    """The quirk lets two CPUs both share the same page with the hyp: every state stays
    legal (the invariants pass), but no sequential order returns 0 twice."""
    programs = [[["share_hyp", 0]], [["share_hyp", 0]]]
    witnesses = []
    for seed in range(10):
        result = emu.run(linearizable, seed=seed, params={"program": json.dumps(programs)},
                         quirks=("check-apply-unlocked",))
        assert result.ok
        witnesses.append(sequential_witness(programs, _LAST["results"],
                                            fingerprint(_LAST["hyp"])))
    assert None in witnesses and any(w is not None for w in witnesses)


def test_the_search_rejects_a_result_no_order_gives():
    """The witness search has teeth: a result no order produces is refused."""
    programs = [[["share_hyp", 0]], [["share_hyp", 0]]]
    result = emu.run(linearizable, seed=0, params={"program": json.dumps(programs)})
    assert result.ok
    hyp = _LAST["hyp"]
    assert sorted(r for rs in _LAST["results"] for r in rs) == [-1, 0]
    assert sequential_witness(programs, [[0], [0]], fingerprint(hyp)) is None
    assert sequential_witness(programs, _LAST["results"], fingerprint(hyp)) is not None
