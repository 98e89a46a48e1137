"""Kernel paths of issue 6 item 5, each against the kernel function it models: memslot
FLAGS_ONLY and MOVE on a secure VM, VM destroy, kvmhv_svm_off's VPA unpin and partition-table
reset, and a long-term pin (a registered VPA) blocking migration at the next ESM."""

from __future__ import annotations

import emu
from emu.kvm import hv
from emu.kvm.hv import H_REGISTER_VPA
from emu.kvm.hvcall import H_PARAMETER, H_STATE, H_SUCCESS, PAGE_SHIFT
from emu.kvm.uvmem import QUIRKS, hv_gfn_state, vm_state
from emu.kvm.vm import KVM_MEM_LOG_DIRTY_PAGES
from emu.machines.svm import SvmMachine
from emu.scenarios.svm import H_VPA_REG_VPA

VPA = 8
"""A data page outside the 4-page image: INIT_DONE migrates it without a copy."""


def gpa(gfn: int) -> int:
    return gfn << PAGE_SHIFT


def run(guest, host=None, quirks=(), box=None):
    box = {} if box is None else box

    def build(m):
        sm = SvmMachine(m, quirks=m.quirks, secure_pages=64)
        box["sm"], box["kvm"] = sm, sm.vm(1, ((0, 16),))
        done = m.completion("guest done")

        async def g(gh):
            await guest(gh)
            done.complete_all()

        sm.vcpu(box["kvm"], g)
        if host is not None:
            async def h(hh):
                await done.wait_for_completion()
                await host(hh)

            sm.host(h)

    result = emu.run(emu.scenario(name="kernel-paths", quirks=QUIRKS)(build), quirks=quirks)
    assert result.violation is None, result.violation.describe()
    return box


async def write_image(g, pages=4):
    for gfn in range(pages):
        await g.write(gpa(gfn), 0x100 + gfn)


def test_a_pinned_vpa_fails_init_done_migration():
    """kvmppc_pin_guest_page holds a reference migrate_vma_setup will not migrate: the page
    outside the image makes H_SVM_INIT_DONE's kvmppc_uv_migrate_mem_slot fail (H_STATE),
    and UV_ESM fails with it: the VM is left Transient ("the callers responsibility to
    terminate the VM"), its pinned page Normal."""
    box, got = {}, {}

    async def guest(g):
        await write_image(g)
        assert await g.hcall(H_REGISTER_VPA, H_VPA_REG_VPA, 0, gpa(VPA)) == H_SUCCESS
        assert box["kvm"].pinned
        got["esm"] = await g.esm(0, 4)

    run(guest, box=box)
    assert got["esm"] == H_STATE
    assert vm_state(box["kvm"]) == "Transient" and hv_gfn_state(box["kvm"], VPA) == "Normal"


def test_a_pinned_page_in_the_image_fails_its_page_in():
    """The UV's H_SVM_PAGE_IN of a pinned page: kvmppc_svm_page_in sees no
    MIGRATE_PFN_MIGRATE and returns -1, so H_PARAMETER."""
    got = {}

    async def guest(g):
        await write_image(g)
        await g.hcall(H_REGISTER_VPA, H_VPA_REG_VPA, 0, gpa(2))
        assert await g.uv_hcall("H_SVM_INIT_START") == H_SUCCESS
        got["page_in"] = await g.uv_hcall("H_SVM_PAGE_IN", gpa(2), 0, PAGE_SHIFT)
        got["other"] = await g.uv_hcall("H_SVM_PAGE_IN", gpa(1), 0, PAGE_SHIFT)
        got["done"] = await g.uv_hcall("H_SVM_INIT_DONE")

    run(guest)
    assert got == {"page_in": H_PARAMETER, "other": H_SUCCESS, "done": H_STATE}


def test_h_register_vpa_codes():
    got = {}

    async def guest(g):
        got["bad vcpu"] = await g.hcall(H_REGISTER_VPA, H_VPA_REG_VPA, 7, gpa(VPA))
        got["bad subfunc"] = await g.hcall(H_REGISTER_VPA, 4 << 45, 0, gpa(VPA))
        got["outside"] = await g.hcall(H_REGISTER_VPA, H_VPA_REG_VPA, 0, gpa(1000))
        got["dtl first"] = await g.hcall(H_REGISTER_VPA, 2 << 45, 0, gpa(VPA))
        got["vpa"] = await g.hcall(H_REGISTER_VPA, H_VPA_REG_VPA, 0, gpa(VPA))
        got["dereg"] = await g.hcall(H_REGISTER_VPA, 5 << 45, 0, 0)

    box = run(guest)
    assert got == {"bad vcpu": H_PARAMETER, "bad subfunc": H_PARAMETER, "outside": H_PARAMETER,
                   "dtl first": -16, "vpa": H_SUCCESS, "dereg": H_SUCCESS}
    assert not box["kvm"].pinned and not box["kvm"].vpas


def _reboot_with_vpa(box):
    got = {}

    async def guest(g):
        await write_image(g)
        assert await g.esm(0, 4) == H_SUCCESS
        assert await g.share(VPA) == H_SUCCESS
        assert await g.hcall(H_REGISTER_VPA, H_VPA_REG_VPA, 0, gpa(VPA)) == H_SUCCESS

    async def host(h):
        got["svm_off"] = await h.svm_off(1)
        got["pinned after reset"] = dict(box["kvm"].pinned)
        got["pate"] = box["kvm"].pate

    run(guest, host, box=box)
    return got


def test_svm_off_unpins_the_vpa_and_resets_the_partition_table():
    box = {}
    got = _reboot_with_vpa(box)
    assert got == {"svm_off": 0, "pinned after reset": {}, "pate": True}
    assert box["kvm"].mmu_ready == 1 and not box["kvm"].vpas


def test_without_the_unpin_the_next_esm_fails(monkeypatch):
    """What kvmhv_svm_off's unpin_vpa_reset loop is for: keep the VPA pinned across the reset
    and the rebooted SVM's ESM fails at INIT_DONE."""
    async def keep(self, kvm):
        return None

    monkeypatch.setattr(hv.Hypervisor, "unpin_vpa_reset", keep)
    box, got = {}, {}

    def build(m):
        sm = SvmMachine(m, secure_pages=64)
        kvm = box["kvm"] = sm.vm(1, ((0, 16),))
        reset = m.completion("reset")

        async def first(g):
            await write_image(g)
            await g.esm(0, 4)
            await g.share(VPA)
            await g.hcall(H_REGISTER_VPA, H_VPA_REG_VPA, 0, gpa(VPA))

        async def second(g):
            await write_image(g)
            got["esm"] = await g.esm(0, 4)

        async def qemu(h):
            while kvm.online_vcpus and not kvm.vpas:
                await m.yield_point("wait for the VPA")
            got["svm_off"] = await h.svm_off(1)
            reset.complete_all()

        sm.vcpu(kvm, first)
        sm.vcpu(kvm, second, start=reset)
        sm.host(qemu)

    emu.run(emu.scenario(name="no-unpin", quirks=QUIRKS)(build))
    assert got == {"svm_off": 0, "esm": H_STATE}


def test_a_vcpu_entering_with_the_mmu_not_ready_sets_it_up():
    """kvmhv_setup_mmu on entry: mmu_ready 0 (as after a reset that found the MMU not ready)
    -> kvmppc_setup_partition_table, mmu_ready = 1."""
    box = {}

    def build(m):
        sm = SvmMachine(m, secure_pages=64)
        kvm = box["kvm"] = sm.vm(1, ((0, 16),))
        kvm.mmu_ready, kvm.pate = 0, False

        async def guest(g):
            await g.write(gpa(0), 1)

        sm.vcpu(kvm, guest)

    assert emu.run(emu.scenario(name="setup-mmu", quirks=QUIRKS)(build)).violation is None
    assert box["kvm"].mmu_ready == 1 and box["kvm"].pate


def test_flags_only_on_a_secure_vm_keeps_states_and_slots():
    box = {}

    async def guest(g):
        await write_image(g)
        assert await g.esm(0, 4) == H_SUCCESS

    async def host(h):
        assert await h.set_flags(1, 0, KVM_MEM_LOG_DIRTY_PAGES) == 0
        assert await h.set_flags(1, 0, 0) == 0

    run(guest, host, box=box)
    kvm = box["kvm"]
    assert len(kvm.uvmem_pfns) == 1 and kvm.uvmem_dev.in_use() == 16


def test_flags_only_kernel_behaviour_drops_the_device_pages():
    """quirk flags-only-drops-pages (the kernel): every device page of the slot is dropped
    (page_free, no orphan), the words are cleared, the uvmem slot and the UV registration
    stay (neither lost nor duplicated) and the UV still holds the secure frames."""
    box = {}

    async def guest(g):
        await write_image(g)
        assert await g.esm(0, 4) == H_SUCCESS

    async def host(h):
        kvm = box["kvm"]
        kvm.quirks = ("flags-only-drops-pages",)
        h.m.fail = lambda kind, msg: box.setdefault("failed", (kind, msg))
        await h.set_flags(1, 0, KVM_MEM_LOG_DIRTY_PAGES)

    run(guest, host, box=box)
    kvm, svm = box["kvm"], box["sm"].uv.svms[1]
    assert box["failed"][0] == "life-cycle"
    assert kvm.uvmem_dev.in_use() == 0 and not any(kvm.uvmem_pfns[0].pfns)
    assert len(kvm.uvmem_pfns) == 1 and sorted(svm.slots) == [0] and len(svm.frames) == 4


def test_destroy_leaves_nothing():
    box = {}

    async def guest(g):
        await write_image(g)
        assert await g.esm(0, 4) == H_SUCCESS
        assert await g.share(VPA) == H_SUCCESS
        await g.hcall(H_REGISTER_VPA, H_VPA_REG_VPA, 0, gpa(VPA))

    async def host(h):
        await h.destroy(1)

    run(guest, host, box=box)
    kvm = box["kvm"]
    assert kvm.destroyed and not kvm.uvmem_pfns and not kvm.pinned and not kvm.pate
    assert 1 not in box["sm"].uv.svms and kvm.uvmem_dev.in_use() == 0
