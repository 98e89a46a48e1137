"""The incremental "never device-backed and shared" invariant: it answers as the full pass
would at every step, and notices each kind of change the full pass reads (the UV's SVMs and
their shared GFNs, the memslots and their flags, the VMAs, the host PTEs)."""

from __future__ import annotations

from array import array

import pytest

import emu
from emu.actors.ultravisor import SvmState
from emu.hw.hostmm import VMA
from emu.kvm.uvmem import QUIRKS
from emu.kvm.vm import KVM_MEMSLOT_INVALID, Memslot
from emu.machines.svm import SvmMachine
from emu.sim import Machine
from emu.sim.controller import Controller
from emu.sim.strategies import RandomWalk

GFN = 5
BAD = "GFN 0x5 of VM 1 is shared with the HV but backed by a device (secure) page"


@pytest.fixture
def machine():
    """A built secure-VM machine, not running: one VM of 16 GFNs whose GFN 5 the UV maps
    as shared, its page populated, and the invariant's first pass done."""
    sm = SvmMachine(Machine(Controller(RandomWalk(0)), {}, (), tuple(QUIRKS), 0))
    kvm = sm.vm(1, ((0, 16),), prealloc=True)
    sm.uv.svms[1] = SvmState(1, shared={GFN: 1})
    assert sm._shared_not_device() is None
    return sm, kvm


def pte_of(kvm, gfn=GFN):
    hva = kvm.gfn_to_hva(gfn)
    vma = kvm.mm.vma_lookup(hva)
    return vma.pte, vma.index(hva)


def test_a_pte_gone_device_is_seen(machine):
    sm, kvm = machine
    pte, i = pte_of(kvm)
    pte[i] = -3
    assert sm._shared_not_device() == BAD


def test_a_newly_shared_gfn_is_seen(machine):
    sm, kvm = machine
    pte, i = pte_of(kvm, GFN + 1)
    pte[i] = -3
    assert sm._shared_not_device() is None  # not shared: a secure page is fine
    sm.uv.svms[1].shared[GFN + 1] = 1
    assert sm._shared_not_device() == BAD.replace("0x5", "0x6")


def test_a_new_svm_is_seen(machine):
    sm, kvm = machine
    pte, i = pte_of(kvm)
    del sm.uv.svms[1]
    pte[i] = -3
    assert sm._shared_not_device() is None
    sm.uv.svms[1] = SvmState(1, shared={GFN: 1})
    assert sm._shared_not_device() == BAD


def device_backing(kvm):
    """New memory QEMU maps (at its own address) for GFNs 0..15, GFN 5's page a device
    page: the userspace address of a memslot over it."""
    hva = kvm.new_memslot(1, 64, 16).userspace_addr
    vma = kvm.mm.vma_lookup(hva)
    vma.pte[vma.index(hva) + GFN] = -3
    return hva


def test_a_moved_memslot_is_seen(machine):
    sm, kvm = machine
    old = kvm.memslots[0]
    hva = device_backing(kvm)
    assert sm._shared_not_device() is None
    kvm.remove_memslot(old)  # the slot now points at the new backing
    kvm.publish(Memslot(old.id, old.base_gfn, old.npages, hva))
    assert sm._shared_not_device() == BAD


def test_memslot_flags_are_seen(machine):
    """An INVALID slot hides the GFN; the valid one behind it, device-backed, is found."""
    sm, kvm = machine
    front = kvm.memslots[0]
    kvm.publish(Memslot(1, 0, 16, device_backing(kvm)))
    kvm.memslots.sort(key=lambda s: s is not front)  # the lookup finds the front one first
    # (an edit in place, but before the next pass: publish made a new generation)
    assert sm._shared_not_device() is None
    kvm.set_memslot_flags(front, front.flags | KVM_MEMSLOT_INVALID)
    assert sm._shared_not_device() == BAD


def test_a_replaced_vma_is_seen(machine):
    sm, kvm = machine
    hva = kvm.gfn_to_hva(GFN)
    vma = kvm.mm.vma_lookup(hva)
    kvm.mm.munmap(vma)
    assert sm._shared_not_device() is None
    new = VMA(vma.start, vma.end, array("q", [0]) * len(vma.pte))
    new.pte[vma.index(hva)] = -3
    kvm.mm.mmap(new)
    assert sm._shared_not_device() == BAD


@pytest.mark.parametrize("scenario, quirks", [
    ("init-done-vs-share", ["single-flag-gfn-tracking"]),  # the invariant fires
    ("share-storm", []),
    ("dimm-hotplug", []),
    ("svm-reboot", []),
])
def test_incremental_equals_full_pass(monkeypatch, scenario, quirks):
    """Every schedule the same with the full pass at every step (the check as it was)."""
    incremental = [emu.run(scenario, seed=s, quirks=quirks) for s in range(8)]
    monkeypatch.setattr(SvmMachine, "_shared_not_device", SvmMachine._shared_pass)
    full = [emu.run(scenario, seed=s, quirks=quirks) for s in range(8)]
    assert [(r.trace_hash, [v.message for v in r.violations]) for r in incremental] == \
        [(r.trace_hash, [v.message for v in r.violations]) for r in full]
    if quirks:
        assert any("never device-backed and shared" in v.message
                   for r in full for v in r.violations)
