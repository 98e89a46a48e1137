"""The nested machine end to end: an L1 hypervisor actor runs L2 vCPUs through
H_ENTER_NESTED on pCPUs with TLBs; seed 002's tlbiel-then-migrate story; the create race
of two L1 vCPUs; the radix dump of a running machine against its shadow tables. The suite's
hunts run through the pytest plugin (``emu`` marker, ``emu_hunt``): a finding fails with
its shrunk timeline and is replayed first next time."""

from __future__ import annotations

import pytest

import emu
from emu.actors.guest_code import Hcall, Ld, Map, St, Tlbiel
from emu.kvm.hvcall import H_AUTHORITY
from emu.kvm.nested_rmap import n_rmap_gpa, n_rmap_lpid
from emu.machines.nested import NestedMachine
from emu.scenarios.nested import EA, ENTER, H_YIELD, QUIRK_PARAMS, QUIRK_SCENARIO, QUIRKS
from emu.sim import scenario
from emu.sim.scenario import suites

NESTED = suites()["nested"][1]


@pytest.mark.parametrize("name", NESTED)
@pytest.mark.parametrize("strategy", ["random", "pct"])
@pytest.mark.parametrize("topology", ["smt4", "smt8"])
def test_fixed_model_is_clean(emu_hunt, name, strategy, topology):
    """Every scenario of the suite, with random thread migrations (the long runs: README);
    malicious-l1 in the other byte order too."""
    for extra in ({}, {"endian": "be"}) if name == "malicious-l1" else ({},):
        emu_hunt(name, schedules=40, strategy=strategy,
                 params={"topology": topology, "moves": 3, **extra})


@pytest.mark.parametrize("quirk", sorted(QUIRK_SCENARIO))
def test_each_quirk_is_found_by_its_scenario(emu_hunt, quirk):
    emu_hunt(QUIRK_SCENARIO[quirk], schedules=50, quirks=(quirk,),
             params=QUIRK_PARAMS.get(quirk, {}), expect=True)


@pytest.mark.emu("tlbiel-migrate", schedules=30, quirks=["one-tlb-per-core"])
def test_one_tlb_per_core_needs_the_split_tlb():
    """B10 is about SMT8's two TLB groups per core: on SMT4 the core is the group, so the
    quirk changes nothing there."""


@pytest.mark.emu("nested-boot", schedules=50, quirks=["create-race-fails"],
                 expect="return-code")
def test_two_l1_vcpus_creating_one_lpid(emu_hunt):
    """The kernel's C1b: the loser of the create race gets H_PARAMETER; the fixed model
    looks again and both L2 vCPUs run."""
    violation = emu_hunt().found.violations[0]
    assert violation.kind == "return-code" and "H_ENTER_NESTED" in violation.message


def test_tlb_coherence_fires():
    """The TLB-coherence invariant on its own (the reader checks no value): under
    no-prev-cpu-flush the reader translates through the entry the mover's tlbiel missed."""
    @scenario("test-nested-stale")
    def build(m):
        mach = NestedMachine(m, quirks=("no-prev-cpu-flush",),
                             accept={"*": {0}, "H_ENTER_NESTED": ENTER})
        done = m.completion("remapped")

        async def mover(h):
            await h.boot()
            h.create_guest(1)
            v = h.l2_vcpu(1, 0, [Map(EA, 1 << 16), Ld(EA), Hcall(H_YIELD)])
            await h.run(v)
            mach.migrate(mach.vcpus[0], 4)
            await h.run(h.l2_vcpu(1, 0, [Map(EA, 2 << 16), Tlbiel(EA)]))
            done.complete_all()

        async def reader(h):
            await done.wait_for_completion()
            await h.run(h.l2_vcpu(1, 1, [Ld(EA)]))

        mach.l1_vcpu(mover, 0)
        mach.l1_vcpu(reader, 1)

    result = emu.run(build)
    assert [v.kind for v in result.violations] == ["invariant"]
    assert "TLB coherence" in result.violations[0].message


def test_every_quirk_is_documented_and_has_its_scenario():
    assert set(QUIRK_SCENARIO) == set(QUIRKS)
    assert all(QUIRKS[q] for q in QUIRKS)


def test_radix_dump_lists_the_shadow_ptes_and_rmap_entries():
    """Run an L2 to the end, then read the debugfs radix file from inside the schedule:
    its nested part is exactly the shadow table's leaves, and every one of them has its
    rmap entry at the L1 page that backs it."""
    seen: dict = {}

    @scenario("test-nested-dump")
    def build(m):
        mach = NestedMachine(m, accept={"*": {0}, "H_ENTER_NESTED": ENTER})

        async def l1(h):
            await h.boot()
            h.create_guest(1)
            v = h.l2_vcpu(1, 0, [Map(EA, 3 << 16), St(EA, 5), Ld(EA, 5),
                                 Map(EA + (1 << 16), 4 << 16), St(EA + (1 << 16), 6)])
            await h.run(v)
            gp = mach.l1.idr[1]
            seen["leaves"] = list(gp.shadow_pgtable.leaves())
            seen["rmap"] = [entry for words in mach.mmu.rmap.values() for word in words.values()
                            for entry in word.entries()]
            seen["dump"] = await mach.radix_dump()
            seen["root"] = gp.shadow_pgtable.root

        mach.l1_vcpu(l1, 0)

    result = emu.run(build)
    assert not result.violations
    dump = seen["dump"]
    nested = dump[dump.index("\nNested LPID 1: "):]
    lines = nested.splitlines()[1:]
    assert lines[0] == f"Nested LPID 1: pgdir: {seen['root']:x}"
    assert lines[1:] == [f" {leaf.gpa:x}: {leaf.pte:x} {leaf.shift}" for leaf in seen["leaves"]]
    assert len(seen["leaves"]) == 2
    assert sorted((n_rmap_lpid(e), n_rmap_gpa(e)) for e in seen["rmap"]) == \
        [(1, leaf.gpa) for leaf in seen["leaves"]]


def test_a_big_endian_l1_gets_h_authority_after_l2_ran():
    """The kernel finding, from L1's side: on a little-endian L0 a big-endian L1's L2 runs
    (its store lands) but the write-back sizes the swapped version and H_ENTER_NESTED
    returns H_AUTHORITY, so L1 never learns how far its L2 got."""
    seen = {}

    @scenario("test-nested-be")
    def build(m):
        mach = NestedMachine(m, l1_big_endian=True,
                             accept={"*": {0}, "H_ENTER_NESTED": {H_AUTHORITY}})

        async def l1(h):
            await h.boot()
            h.create_guest(1)
            seen["rc"] = await h.enter(h.l2_vcpu(1, 0, [Map(EA, 3 << 16), St(EA, 5)]))
            seen["tables"] = len(mach.l1.idr)

        mach.l1_vcpu(l1, 0)

    result = emu.run(build)
    assert not result.violations
    assert seen["rc"] == H_AUTHORITY and seen["tables"] == 1
