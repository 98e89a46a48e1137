"""The pkvm suite on its machine: every scenario clean on the fixed model under both
strategies, every quirk found by the scenario that claims it (hunts through the pytest
plugin's ``emu_hunt``: a finding fails with its shrunk timeline and is replayed first next
time), and the windows the scenarios aim at reached (counted from the traces)."""

from __future__ import annotations

from collections import Counter

import pytest

import emu
from emu.scenarios.pkvm import QUIRK_PARAMS, QUIRK_SCENARIO, QUIRKS
from emu.scenarios.pkvm.donate_abort import REFUSED
from emu.scenarios.pkvm.guest_storm import EVERY_GUEST
from emu.scenarios.pkvm.share_pin import PINNED
from emu.sim.scenario import suites

SCENARIOS = suites()["pkvm"][1]


def test_the_suite_has_its_five_scenarios_and_each_quirk_one_hunter():
    assert sorted(SCENARIOS) == ["concurrent-aborts", "donate-vs-abort", "guest-share-storm",
                                 "pkvm-boot", "share-unshare-pin"]
    assert set(QUIRK_SCENARIO) == set(QUIRKS)
    assert set(QUIRK_SCENARIO.values()) <= set(SCENARIOS)


@pytest.mark.parametrize("name", SCENARIOS)
@pytest.mark.parametrize("strategy", ["random", "pct"])
def test_clean_on_the_fixed_model(emu_hunt, name, strategy):
    emu_hunt(name, schedules=40, strategy=strategy)


@pytest.mark.parametrize("quirk", sorted(QUIRKS))
def test_each_quirk_is_found_by_its_scenario(emu_hunt, quirk):
    emu_hunt(QUIRK_SCENARIO[quirk], schedules=50, quirks=(quirk,),
             params=QUIRK_PARAMS.get(quirk, {}), expect=True)


def runs(name: str, n: int = 60, **params) -> list:
    out = [emu.run(name, seed=seed, params=params) for seed in range(n)]
    for r in out:
        assert r.ok, (r.seed, r.violation.describe())
    return out


def noted(results: list, text: str) -> int:
    """In how many runs the scenario noted ``text``."""
    return sum(any(e[2] == "note" and e[3] == text for e in r.trace.events) for r in results)


def ops_by_actor(r) -> dict[str, list[str]]:
    """Each actor's scheduling points, in order, by name."""
    names = [a[0] if isinstance(a, (list, tuple)) else a for a in r.trace.actors]
    out: dict[str, list[str]] = {}
    for e in r.trace.steps():
        out.setdefault(names[e[1]], []).append(e[3])
    return out


def lost_races(r) -> int:
    """Aborts that found the entry already mapped (another CPU idmapped it first): the host
    lock taken by the abort path, and no stage-2 store before the retry."""
    lost = 0
    for ops in ops_by_actor(r).values():
        inside = None
        for op in ops:
            if op == "spin_lock host_mmu.lock" and inside is None:
                inside = []
            elif op == "host retries the access" and inside is not None:
                lost += not any("pte store" in o for o in inside)
                inside = None
            elif inside is not None:
                inside.append(op)
    return lost


def at_after_remap(r) -> int:
    """Aborts whose AT walk came after the remapper changed the host's stage-1 since the
    faulting walk (B12's window), from the global order of steps."""
    names = [a[0] if isinstance(a, (list, tuple)) else a for a in r.trace.actors]
    faulted: dict[str, bool] = {}
    hits = 0
    for e in r.trace.steps():
        who, op = names[e[1]], e[3]
        if op == "host stage-2 walk":
            faulted[who] = False
        elif op == "host stage-1 pte store":
            faulted = {k: True for k in faulted}
        elif op == "at s1e1r (host stage-1)":
            hits += faulted.get(who, False)
    return hits


def test_faults_race_inside_el2():
    """Two CPUs faulting on the same page: the later finds it mapped and retries."""
    boot = runs("pkvm-boot")
    aborts = runs("concurrent-aborts")
    assert sum(lost_races(r) > 0 for r in boot) >= 10
    assert sum(lost_races(r) > 0 for r in aborts) >= 30


def test_the_stage1_change_lands_between_an_abort_and_its_at_walk():
    assert sum(at_after_remap(r) > 0 for r in runs("concurrent-aborts")) >= 5


def test_windows_noted_by_the_scenarios():
    counts = Counter({
        PINNED: noted(runs("share-unshare-pin"), PINNED),
        REFUSED: noted(runs("donate-vs-abort"), REFUSED),
        EVERY_GUEST: noted(runs("guest-share-storm"), EVERY_GUEST),
    })
    assert all(n >= 5 for n in counts.values()), counts


def test_illegal_access_fires_on_an_access_the_books_forbid():
    """The access check itself: after CPU0 touched page P (its TLB holds P), EL2's books
    are made to say the host gave P away; CPU0's next access, a TLB hit, reaches P and is
    reported in the same step."""
    from emu.machines.pkvm import PkvmMachine
    from emu.pkvm.memory import PKVM_NOPAGE
    from emu.sim import scenario

    @scenario("test-pkvm-illegal-access", quirks=QUIRKS)
    def build(m):
        mach = PkvmMachine(m, host_cpus=1)
        p = mach.page(0)

        async def host(cpu):
            await cpu.access(p)
            mach.hyp.hyp_vmemmap.set_host_state(p, PKVM_NOPAGE)
            await cpu.access(p)

        mach.host(0, host)

    v = emu.run(build).violations[0]
    assert v.kind == "illegal-access" and "neither owns nor borrows" in v.message, v.describe()


def test_el2_touching_a_shared_page_it_has_not_pinned_panics():
    """v6.16 maps a page the host shares at EL2 only on its first pin: EL2 using a shared
    page it never pinned faults at EL2 (hyp-panic); after a pin the same access is fine."""
    from emu.machines.pkvm import PkvmMachine
    from emu.pkvm.mem_protect import hyp_pin_shared_mem
    from emu.sim import scenario

    def build_for(pin: bool):
        @scenario(f"test-pkvm-el2-unpinned-{pin}", quirks=QUIRKS)
        def build(m):
            mach = PkvmMachine(m, host_cpus=1, accept={"*": {0}})
            v = mach.page(0)

            async def host(cpu):
                await cpu.hcall("__pkvm_host_share_hyp", v >> 12)
                if pin:
                    await cpu.el2(hyp_pin_shared_mem, v, v + 8)
                await cpu.el2_access(v)

            mach.host(0, host)
        return build

    assert emu.run(build_for(True)).ok
    v = emu.run(build_for(False)).violations[0]
    assert v.kind == "hyp-panic" and "nothing maps it at EL2" in v.message, v.describe()


def test_an_apply_step_that_fails_after_its_check_is_reported():
    """The check-then-apply contract: __pkvm_host_share_guest called with the vCPU's
    memcache empty (its hypercall handler tops it up first, which is what makes the apply
    safe), so its checks pass but mapping the guest's stage-2 cannot allocate a table page
    (-ENOMEM): the kernel's WARN_ON, reported as apply-failed."""
    from emu.pkvm import Pkvm
    from emu.pkvm.api import KERNEL
    from emu.pkvm.pgtable import KVM_PGTABLE_PROT_RWX
    from emu.sim.sequential import Finding

    p = Pkvm()
    p.hyp.vms[0].vcpus[0].memcache.pages.clear()
    share = KERNEL["__pkvm_host_share_guest"](p.hyp, p.host_pfns[0], 0x10, 1,
                                             p.hyp.vms[0].vcpus[0], KVM_PGTABLE_PROT_RWX)
    with pytest.raises(Finding, match="apply-failed") as found:
        p.ctx.call(share)
    assert found.value.kind == "apply-failed"


def test_a_release_without_a_scenario_s_calls_skips_it_in_a_suite_hunt(cli, tmp_path):
    """On v6.1 (no donation, pins or guest shares) the pkvm suite hunt skips the four
    scenarios that need them, saying why, and hunts concurrent-aborts, where B12 (still in
    v6.1) is found; asked for alone, such a scenario is refused with the same reason."""
    r = cli("hunt", "pkvm", "--kernel", "v6.1", "--schedules", "20", "--out", str(tmp_path))
    assert r.status == 1, r.out + r.err
    assert r.out.count("skipped ") == 4
    assert "skipped share-unshare-pin: this scenario needs hyp_pin_shared_mem (pins), " \
           "which v6.1 does not have (it came in v6.2)" in r.out
    assert "BUG_ON(!__get_fault_info())" in r.out
    r = cli("hunt", "pkvm-boot", "--kernel", "v6.1", "--out", str(tmp_path))
    assert r.status == 2 and "which v6.1 does not have (it came in v6.2)" in r.err
