"""``malicious-l1`` (emu/scenarios/nested/malicious.py): the hostile forms answer as the
kernel does, every form is made over a few schedules, the fixed model is clean in both
byte orders on smt4 and smt8 under random and PCT schedules, B9 and no-hfscr-sanitise are
found, older releases are answered as they answered; and two readings of the kernel the
forms led to, pinned: an EPN beyond the 52-bit tree, and L2's reserved TS 0b11."""

from __future__ import annotations

import pytest
import trio

import emu
from emu.actors.guest_code import Ld, Map, St
from emu.hw.memory import PAGE_SHIFT
from emu.kvm import hv_guest_state as hgs
from emu.kvm import nested_regs as nr
from emu.kvm.hvcall import H_AUTHORITY, H_P2, H_PARAMETER, H_SUCCESS, H_TLB_INVALIDATE
from emu.kvm.mm import migrate_pages
from emu.kvm.tlbie_operands import check_tlbie, decode_tlbie, encode_tlbie
from emu.machines.nested import NestedMachine
from emu.scenarios.nested import ENTER, QUIRKS
from emu.scenarios.nested.malicious import (
    END,
    FORMS,
    QUIRK_SCENARIO,
    EnterForm,
    PtcrForm,
    TlbieForm,
    kernel_code,
    page_of,
    premap,
)
from emu.sim.controller import Controller
from emu.sim.machine import Machine
from emu.sim.strategies import RandomWalk

NAME = "malicious-l1"
HOME = (0x0100_0000, 0x0100_0400)
"""Where an L2 vCPU's blocks would be (any L1 page will do for the pure answers)."""


# ------------------------------------------------------------------ the forms' answers
@pytest.mark.parametrize("big_endian", [False, True])
def test_each_form_is_answered_as_its_table_says(big_endian):
    """The module's table against the pure readers (kernel_code) and the operand decoder:
    each H_ENTER_NESTED form's code, or, where L2 runs, its exit (H_AUTHORITY on the other
    byte order); each H_TLB_INVALIDATE form H_PARAMETER exactly when the kernel refuses
    its operands; each PTCR refused."""
    hv, regs = hgs.HvGuestState(2, 1, 9), (0,) * hgs.PT_REGS_WORDS
    for form in FORMS:
        if isinstance(form, EnterForm):
            blocks = form.blocks(hv, regs, HOME, big_endian=big_endian)
            want = form.rc if form.rc is not None else \
                H_AUTHORITY if big_endian else form.trap
            assert kernel_code(form, *blocks, big_endian=big_endian, release=None,
                               quirks=()) == want, form.name
        elif isinstance(form, TlbieForm):
            refused = check_tlbie(decode_tlbie(*form.operands(page_of(0)))) is not None
            assert form.rc == (H_PARAMETER if refused else H_SUCCESS), form.name
        else:
            assert isinstance(form, PtcrForm) and form.rc == H_PARAMETER
            assert (form.ptcr & 0x1F) + 8 > 12 or form.ptcr >= END, form.name


def test_older_releases_answer_as_they_did():
    """kernel_code keys on the release as the kernel did: v5.11 takes version 1 only (H_P2
    for the version-2 block); before the B7 fix (v5.9) a bad version beat an unreadable
    pt_regs; before v5.12 an L1 of the other byte order gets its state written back."""
    hv, regs = hgs.HvGuestState(2, 1, 9), (0,) * hgs.PT_REGS_WORDS
    well_formed = EnterForm("well-formed", None)
    straddle = next(f for f in FORMS if f.name == "pt_regs straddling END")
    v2 = well_formed.blocks(hv, regs, HOME, big_endian=False)
    answers = {release: kernel_code(well_formed, *v2, big_endian=False, release=release,
                                    quirks=()) for release in ("v5.11", "v5.12")}
    assert answers == {"v5.11": H_P2, "v5.12": well_formed.trap}
    bad = straddle.blocks(hv, regs, HOME, big_endian=False)
    assert [kernel_code(straddle, *bad, big_endian=False, release=r, quirks=())
            for r in ("v4.20", "v5.9")] == [H_P2, H_PARAMETER]
    v1 = well_formed.blocks(hgs.HvGuestState(1, 1, 9), regs, HOME, big_endian=True)
    assert kernel_code(well_formed, *v1, big_endian=True, release="v5.10",
                       quirks=()) == well_formed.trap


# ------------------------------------------------------------------ hunts
def _notes(result) -> list[str]:
    return [str(e[3])[len("hostile: "):] for e in result.trace.events
            if str(e[3]).startswith("hostile: ")]


@pytest.mark.parametrize("endian", ["le", "be"])
def test_every_form_is_made_and_answered(endian):
    """The seed picks the forms: over 60 schedules (moves=3) every form of FORMS is made
    at least once, and every one of the 360 calls got exactly the kernel's code."""
    made: set[str] = set()
    for seed in range(60):
        r = emu.run(NAME, seed=seed, params={"endian": endian, "moves": 3})
        assert r.ok, (seed, r.violation.describe())
        notes = _notes(r)
        assert len(notes) == 6
        made.update(notes)
    assert made == {f.name for f in FORMS}


@pytest.mark.parametrize("endian", ["le", "be"])
@pytest.mark.parametrize(("quirk", "text"), [
    ("no-tm-sanitise", "L0 cannot recheckpoint"),
    ("no-hfscr-sanitise", "not permitted to L1"),
])
def test_each_quirk_is_found(quirk, text, endian):
    """B9 lets L2 in with a TM state L0 cannot recheckpoint; without the HFSCR mask L2
    gets facilities L0 never granted L1: the sanitisation invariant sees both."""
    assert QUIRK_SCENARIO[quirk] == NAME
    found = emu.hunt(NAME, schedules=50, quirks=(quirk,), params={"endian": endian})
    assert found.found is not None, f"{quirk} not found"
    v = found.found.violation
    assert v.kind == "invariant" and "sanitisation" in v.message and text in v.message, \
        v.describe()


def test_releases():
    """Under --kernel: v5.14 (the B9 fix) and v5.16 are clean; v5.13 has B9 and is found."""
    for release in ("v5.14", "v5.16"):
        assert emu.hunt(NAME, schedules=20, release=release).found is None, release
    found = emu.hunt(NAME, schedules=20, release="v5.13")
    assert found.found is not None and "MSR[TS]" in found.found.violation.message


# ------------------------------------------------------------------ two readings, pinned
def _machine(l1_program, **accept) -> tuple[Machine, NestedMachine]:
    m = Machine(Controller(RandomWalk(0), max_steps=100_000), {}, (), tuple(QUIRKS), 0)
    mach = NestedMachine(m, topology="smt4", cores=1,
                         accept={"*": {H_SUCCESS}, "H_ENTER_NESTED": ENTER, **accept})
    mach.l1_vcpu(l1_program(mach), 0)
    trio.run(m.ctl.run)
    assert m.ctl.error is None
    return m, mach


@pytest.mark.parametrize(("high", "survives"), [(0, False), (1 << 60, True)])
def test_epn_beyond_the_tree_leaves_a_tlb_entry_to_a_freed_page(high, survives):
    """A candidate in the kernel's code, as the model reads it. kvmhv_emulate_tlbie_tlb_addr
    takes EPN = RB >> 12 whole; kvmhv_invalidate_shadow_pte finds the shadow PTE with
    __find_linux_pte, whose pgd_index masks the address to the 52-bit tree, and
    kvmppc_unmap_pte clears that PTE but tlbies the unmasked address
    (kvmppc_radix_tlbie_page: ``addr &= ~(psize - 1)`` only). Where the TLB compares RB's
    EPN bits above 2**52 (hardware behaviour the kernel does not settle), the entry for the
    page survives, and since its shadow PTE is gone the rmap walk of a later L0 unmap of
    the L1 page (reclaim, migration, balloon) invalidates nothing: L2 stores through a
    translation to a host page L0 freed. With the EPN in range everything is removed."""
    page = page_of(0)
    seen = {}

    def program(mach):
        def shadow_entries(gp):
            return [e for tlb in mach.tlbs.groups.values() for e in tlb.entries.values()
                    if e.lpid == gp.shadow_lpid and e.gra == page]

        async def l1(h):
            await h.boot()
            h.create_guest(1)
            premap(h, 1)
            await h.run(h.l2_vcpu(1, 0, [Map(0xC000_0000_0001_0000, page),
                                         St(0xC000_0000_0001_0000, 1)]))
            gp = mach.l1.idr[1]
            await h.hcall(H_TLB_INVALIDATE, *encode_tlbie(ric=0, lpid=1, is_=0, ap=5,
                                                          epn=(page | high) >> 12))
            seen["pte"] = list(gp.shadow_pgtable.leaves())
            seen["tlb"] = shadow_entries(gp)
            gfn = h.kernel.backing(1, page) >> PAGE_SHIFT
            moved, _ = await migrate_pages(mach.kvm, mach.kvm.gfn_to_hva(gfn), 0)
            seen["moved"] = moved
            await h.run(h.l2_vcpu(1, 0, [St(0xC000_0000_0001_0000, 2),
                                         Ld(0xC000_0000_0001_0000, 2)]))
        return l1

    m, _ = _machine(program)
    assert seen["pte"] == [] and seen["moved"]
    assert bool(seen["tlb"]) == survives
    kinds = [v.kind for v in m.ctl.violations]
    assert kinds == (["use-after-free"] if survives else []), m.ctl.violations
    if survives:
        assert "which L0 freed" in m.ctl.violations[0].message


def test_l1_suspended_lets_l2_in_with_the_reserved_ts():
    """A reading of d9c57d3ed52a: with L1 suspended the check is MSR_TM_ACTIVE(l2 msr),
    which counts the reserved TS 0b11, and the nested entry sets shregs.msr directly, not
    through kvmppc_set_msr_hv (which clears 0b11 "to a safe state"). So L2 is entered with
    MSR[TS] = 0b11, the value whose rfid is a TM Bad Thing (the reason signal returns
    refuse it: MSR_TM_RESV). Whether the P9 entry path clears it is not settled here; the
    model lets it through and the sanitisation invariant (the kernel's own checks) agrees."""
    seen = {}

    def program(mach):
        async def l1(h):
            await h.boot()
            h.create_guest(1)
            premap(h, 1)
            v = h.l2_vcpu(1, 0, [Map(0xC000_0000_0001_0000, page_of(0)),
                                 St(0xC000_0000_0001_0000, 1)])
            v.regs[hgs.PT_MSR] |= nr.MSR_TS_MASK
            kv = mach.kvm_vcpus[mach.vcpus[0].name]
            kv.msr |= nr.MSR_TS_S
            seen["rc"] = await h.enter(v)
            seen["l2_msr"] = kv.l2_entry.msr
            seen["l1_msr"] = kv.msr
            kv.msr &= ~nr.MSR_TS_MASK
        return l1

    m, _ = _machine(program)
    assert not m.ctl.violations
    assert seen["rc"] == 0xC00
    assert seen["l2_msr"] & nr.MSR_TS_MASK == nr.MSR_TS_MASK
    assert seen["l1_msr"] & nr.MSR_TS_MASK == nr.MSR_TS_S  # L2 was "transactional"
