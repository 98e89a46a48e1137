"""The fast paths of issue 6 decide exactly what the slow ones did.

- the end-of-schedule device-page check compares chunks of GFNs as arrays; on a chunk it
  cannot pass at once it walks GFN by GFN, so a broken GFN in the middle of a long run of
  device pages is reported with the same message as the plain walk (``_chunk_by_gfn`` over
  the whole slot) reports;
- the pvt arrays grow on demand and read as zeros past what was written;
- a decision skips actors parked on a channel or completion whose state has not changed,
  and the schedule (its trace hash) is the same as calling every predicate;
- a schedule that ends with actors still parked (daemons, or a violation) wakes them to
  unwind instead of cancelling their Trio tasks, with the same result as the cancel.
"""

from __future__ import annotations

import pytest

import emu
from emu.kvm import uvmem
from emu.kvm.hvcall import KVMPPC_GFN_PFN_MASK, PAGE_SHIFT
from emu.machines.svm import _CHUNK, SvmMachine
from emu.sim import controller

NPAGES = _CHUNK * 2 + 100
MID = _CHUNK + 777  # in the middle of the second chunk


def _edit_pvt(field, by=1):
    def edit(sm, kvm, dpfn):
        getattr(sm.dev, field)._data[dpfn - 1] += by
    return edit


EDITS = {
    "clean": None,
    "word": lambda sm, kvm, dpfn: _word(kvm, 0),
    "other device page": lambda sm, kvm, dpfn: _word(kvm, uvmem.uvmem_slot(kvm, MID).pfns[
        MID + 1]),
    "bitmap": lambda sm, kvm, dpfn: sm.dev.bitmap.__setitem__(dpfn - 1, 0),
    "gpa": _edit_pvt("pvt_gpa", 1 << PAGE_SHIFT),
    "gpa low bits": lambda sm, kvm, dpfn: sm.dev.pvt_gpa.__setitem__(dpfn - 1, (
        MID << PAGE_SHIFT) | 5),
    "lpid": _edit_pvt("pvt_lpid"),
    "wide lpid": lambda sm, kvm, dpfn: sm.dev.pvt_lpid.__setitem__(dpfn - 1, 300),
    "pte normal": lambda sm, kvm, dpfn: _pte(kvm, 7),
    "pte absent": lambda sm, kvm, dpfn: _pte(kvm, 0),
}


def _word(kvm, word):
    p = uvmem.uvmem_slot(kvm, MID)
    p.pfns[MID - p.base_pfn] = word


def _pte(kvm, value):
    kvm.mm.set_pte(kvm.gfn_to_hva(MID), value)


@pytest.mark.parametrize("edit", list(EDITS))
def test_chunked_device_check_matches_the_walk(edit):
    box = {}

    def build(m):
        sm = SvmMachine(m, secure_pages=2 * NPAGES + 64)
        kvm = sm.vm(1, ((0, NPAGES),))
        box["sm"], box["kvm"] = sm, kvm

        async def guest(g):
            await g.write(0, 0x100)
            await g.esm(0, 1)  # INIT_DONE moves every other GFN to a device page
            if EDITS[edit]:
                dpfn = uvmem.uvmem_slot(kvm, MID).pfns[MID] & KVMPPC_GFN_PFN_MASK
                EDITS[edit](sm, kvm, dpfn)
            vma = kvm.mm.vma_lookup(kvm.memslots[0].userspace_addr)
            box["walk"], _ = sm._chunk_by_gfn(1, uvmem.uvmem_slot(kvm, 0), vma.pte, 0, 0, 0,
                                              NPAGES)

        sm.vcpu(kvm, guest)

    r = emu.run(emu.scenario(name="chunk-test")(build))
    got = r.violation.message if r.violation else None
    want = f"device pages match the GFN states: {box['walk']}" if box["walk"] else None
    if edit in ("clean", "gpa low bits"):  # the chunk falls back to the walk, which passes
        assert want is None and got is None
    else:
        assert want is not None and got is not None and got.endswith(want), (got, want)


def test_pvt_arrays_grow_and_read_zero():
    from emu.machines.uvmem_device import CheckedUvmemDevice

    class M:
        def fail(self, kind, message):
            raise AssertionError(message)

    dev = CheckedUvmemDevice(M(), 100_000)
    assert len(dev.pvt_gpa) == 100_000 and len(dev.pvt_gpa._data) == 0
    dev.bitmap[99_999] = 1
    assert dev.pvt_gpa[99_999] == 0 and dev.pvt_gpa[-1] == 0
    dev.bitmap[10] = 1
    dev.pvt_lpid[10] = 7
    assert dev.pvt_lpid[10] == 7 and dev.pvt_lpid._data.typecode == "B"
    dev.pvt_lpid[10] = 70_000  # does not fit a byte: widened, same value back
    assert dev.pvt_lpid[10] == 70_000 and dev.pvt_lpid._data.typecode == "L"
    from array import array
    dev.pvt_gpa[20:25] = array("Q", range(5))
    assert list(dev.pvt_gpa[20:25]) == [0, 1, 2, 3, 4]
    assert len(dev.pvt_gpa._data) < 100_000
    with pytest.raises(IndexError):
        dev.pvt_gpa[100_000]


@pytest.mark.parametrize("scenario,params", [("svm-boot", {"vcpus": 40, "pcpus": 7}),
                                             ("share-storm", {}), ("svm-reboot", {})])
def test_parked_actors_do_not_change_the_schedule(monkeypatch, scenario, params):
    """The same hashes with every predicate called at every decision (no parking)."""
    fast = [emu.run(scenario, params=params, seed=s).trace_hash for s in range(4)]
    monkeypatch.setattr(controller.Controller, "_park", lambda self, parked: None)
    slow = [emu.run(scenario, params=params, seed=s).trace_hash for s in range(4)]
    assert fast == slow


def _cancel_halt(self):
    """The old end of a schedule: cancel the nursery (every parked actor gets Cancelled)."""
    if not self.stopped:
        self.stopped = self.trace.closed = True
        if self._scope is not None:
            self._scope.cancel()


@pytest.mark.parametrize("scenario,quirks", [("svm-boot", ()), ("share-storm", ()),
                                             ("svm-off-vs-entry", ("svm-off-no-guard",)),
                                             ("share-vs-pageout", ("page-out-lock-leak",))])
def test_waking_parked_actors_ends_a_schedule_as_cancelling_does(monkeypatch, scenario, quirks):
    def results():
        runs = [emu.run(scenario, quirks=quirks, seed=s) for s in range(6)]
        return [(r.trace_hash, r.steps, [(v.kind, v.message) for v in r.violations])
                for r in runs]

    fast = results()
    assert any(violations for _, _, violations in fast) == bool(quirks)  # a fail halts too
    monkeypatch.setattr(controller.Controller, "_halt", _cancel_halt)
    assert results() == fast
