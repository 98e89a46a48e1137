"""Every check of the secure-VM model can fail: one small test per check that provokes it.

Each test breaks one rule, with a quirk (a historic bug switched back on), a hand-built
scenario that breaks the protocol, or model state edited (monkeypatched) in a scenario, and
asserts the violation's kind and message. ``CHECKS`` lists them all; the README's
invariant -> test table is this file. (The engine's own kinds, deadlock, liveness, lockdep,
sleep-in-atomic, bad-unlock, srcu and exception, are provoked in tests/test_controller.py.)
"""

from __future__ import annotations

import contextlib

import pytest

import emu
from emu.actors import ultravisor
from emu.actors.returncodes import accept
from emu.kvm import uvmem
from emu.kvm.hvcall import (
    EBUSY,
    H_PAGE_IN_SHARED,
    H_PARAMETER,
    H_STATE,
    H_SUCCESS,
    KVMPPC_GFN_SHARED,
    KVMPPC_GFN_UVMEM_PFN,
    KVMPPC_SECURE_INIT_DONE,
    PAGE_SHIFT,
)
from emu.kvm.uvmem import QUIRKS, UvmemSlot
from emu.machines.svm import SvmMachine

GFN = 5
"""The data page the tests play with (the image is GFNs 0-3)."""


def gpa(gfn: int) -> int:
    return gfn << PAGE_SHIFT


def run(guests, host=None, *, slots=((0, 16),), quirks=(), design="gfn-states", accepts=None,
        box=None, host_after_guests=True):
    """One schedule of a hand-built secure VM: ``guests`` (a program or a list of them, one
    vCPU each), and ``host`` (QEMU), started once every guest has finished unless
    ``host_after_guests`` is false. ``box`` receives the machine ("sm") and the VM
    ("kvm")."""
    box = {} if box is None else box
    guests = guests if isinstance(guests, list) else [guests]

    def build(m):
        sm = SvmMachine(m, design=design, quirks=m.quirks, secure_pages=64, accept=accepts)
        box["sm"], box["kvm"], box["m"] = sm, sm.vm(1, slots), m
        done = m.completion("guests done")

        for program in guests:
            async def guest(g, program=program):
                await program(g)
                done.complete()

            sm.vcpu(box["kvm"], guest)

        async def qemu(h):
            if host_after_guests:
                for _ in guests:
                    await done.wait_for_completion()
            await host(h)

        if host is not None:
            sm.host(qemu)

    return emu.run(emu.scenario(name="invariant-test", quirks=QUIRKS)(build), quirks=quirks)


async def boot(g, pages=4):
    """A normal VM writes its image and goes through ESM."""
    for gfn in range(pages):
        await g.write(gpa(gfn), 0x100 + gfn)
    assert await g.esm(0, pages) == H_SUCCESS


def violation(result, kind, *texts):
    v = result.violation
    assert v is not None, "no violation"
    assert v.kind == kind, v.describe()
    for text in texts:
        assert text in v.message, v.describe()
    return v


def svm(box):
    return box["sm"].uv.svms[1]


# =========================================================================== return codes
def test_return_code_two_state_unshare_refused_by_the_uv_itself(monkeypatch):
    """The bug this check was written for: in -p design=two-state the UV refused the
    UV_PAGE_IN of its own UV_UNSHARE_PAGE (it forgot the request), so every unshare returned
    H_PARAMETER and no scenario looked. Put the forgetting back: share-storm fails."""
    real = ultravisor.Ultravisor._requesting

    @contextlib.asynccontextmanager
    async def forgetful(self, what, gfn):
        if what == "unshare":
            yield
            return
        async with real(self, what, gfn):
            yield

    monkeypatch.setattr(ultravisor.Ultravisor, "_requesting", forgetful)
    found = emu.hunt("share-storm", params={"design": "two-state"}, schedules=5, seed=0).found
    violation(found, "return-code", "UV_UNSHARE_PAGE(0x", ", 0x1) returned H_PARAMETER "
              "(uncontended); the scenario accepts H_SUCCESS")


def test_return_code_fixed_two_state_unshare_succeeds():
    got = []

    async def guest(g):
        await boot(g)
        got.append(await g.share(GFN))
        got.append(await g.unshare(GFN))

    result = run(guest, design="two-state", accepts={"*": {H_SUCCESS}})
    assert result.ok, result.violation.describe()
    assert got == [H_SUCCESS, H_SUCCESS]


def test_return_code_undeclared_code_fails_the_scenario():
    """UV_SHARE_PAGE of a page outside the VM: U_PARAMETER, which a scenario that accepts
    only success does not accept."""
    async def guest(g):
        await boot(g)
        await g.share(100)

    violation(run(guest, accepts={"*": {H_SUCCESS}}), "return-code",
              "vm1.vcpu0: UV_SHARE_PAGE(0x64, 0x1) returned H_PARAMETER (uncontended); the "
              "scenario accepts H_SUCCESS")


def test_return_code_declared_code_and_override_pass():
    async def guest(g):
        await boot(g)
        await g.unshare(GFN, accept={H_PARAMETER})  # this call's own declaration
        await g.uv_hcall("H_SVM_INIT_DONE")  # U_STATE: declared for the scenario

    result = run(guest, accepts={"*": {H_SUCCESS}, "H_SVM_INIT_DONE": {H_STATE}})
    assert result.ok, result.violation.describe()


def test_return_code_contended_code_only_when_contended():
    """accept(H_SUCCESS, contended=[H_PARAMETER]): two vCPUs unsharing the same page, one
    of them losing, pass; one vCPU unsharing a page nobody shares does not."""
    lose = {"*": {H_SUCCESS}, "UV_UNSHARE_PAGE": accept(H_SUCCESS, contended=[H_PARAMETER])}
    shared = {}

    async def first(g):
        await boot(g)
        assert await g.share(GFN) == H_SUCCESS
        shared["done"] = True
        await g.unshare(GFN)

    async def second(g):
        while not shared:
            await g._machine.m.point("wait for the share")
        await g.unshare(GFN)

    results = [run([first, second], accepts=lose).ok for _ in range(1)]
    hunt = emu.hunt(emu.scenario(name="x", quirks=QUIRKS)(
        lambda m: _two_unsharers(m, lose)), schedules=30, seed=0)
    assert all(results) and hunt.ok, hunt.found and hunt.found.violation.describe()

    async def gone(g):  # the guest's books say GFN 5 is no longer shared: contended
        await boot(g)
        assert await g.share(GFN) == H_SUCCESS
        assert await g.unshare(GFN) == H_SUCCESS
        assert await g.unshare(GFN) == H_PARAMETER

    assert run(gone, accepts=lose).ok

    async def alone(g):  # shared, nobody else around, and the unshare fails: uncontended
        await boot(g)
        await g.share(GFN)
        g._kvm.uvmem_pfns[0].pfns[GFN] = KVMPPC_GFN_UVMEM_PFN | 1  # the HV: already in
        await g.unshare(GFN)

    violation(run(alone, accepts=lose), "return-code", "returned H_PARAMETER (uncontended)",
              "(and when contended H_PARAMETER)")


def _two_unsharers(m, accepts):
    sm = SvmMachine(m, secure_pages=64, accept=accepts)
    kvm = sm.vm(1, ((0, 16),))
    booted = m.completion("booted")

    async def first(g):
        await boot(g)
        await g.share(GFN)
        booted.complete_all()
        await g.unshare(GFN)

    async def second(g):
        await booted.wait_for_completion()
        await g.unshare(GFN)

    sm.vcpu(kvm, first)
    sm.vcpu(kvm, second)


def test_return_code_of_a_guest_load():
    async def guest(g):
        await g.read(gpa(100))  # no memory there

    violation(run(guest, accepts={"*": {H_SUCCESS}}), "return-code",
              "vm1.vcpu0: read(0x640000) returned H_PARAMETER")


def test_return_code_of_qemu():
    """KVM_PPC_SVM_OFF refused with -EBUSY while a vCPU runs: a scenario that does not
    declare -EBUSY fails."""
    async def guest(g):
        await boot(g)
        booted.append(1)
        while not tried:  # keeps running (vcpus_running) until QEMU has tried
            await g._machine.m.point("spin")

    booted, tried = [], []

    async def qemu(h):
        while not booted:
            await h.m.point("wait for the boot")
        try:
            await h.svm_off(1)
        finally:
            tried.append(1)

    v = violation(run(guest, qemu, accepts={"*": {H_SUCCESS}}, host_after_guests=False),
                  "return-code")
    assert "KVM_PPC_SVM_OFF(0x1) returned" in v.message
    assert "the scenario accepts 0" in v.message
    booted.clear()
    tried.clear()
    ok = run(guest, qemu, accepts={"*": {H_SUCCESS}, "KVM_PPC_SVM_OFF": {0, -EBUSY}},
             host_after_guests=False)
    assert ok.ok, ok.violation.describe()
    assert tried and booted


# =========================================================================== per access
def test_confidentiality_secret_store_lands_in_normal_memory(monkeypatch):
    """The UV hands a secure VM's store a normal page the HV can read."""
    real = ultravisor.Ultravisor.touch

    async def leaky(self, lpid, gfn):
        frame, normal = await real(self, lpid, gfn)
        return frame, normal or gfn == GFN

    monkeypatch.setattr(ultravisor.Ultravisor, "touch", leaky)

    async def guest(g):
        await boot(g)
        await g.write(gpa(GFN), 0x5EC)

    violation(run(guest), "confidentiality",
              "vm1.vcpu0: a secret store to GFN 0x5 landed in normal memory the HV can read")


def test_confidentiality_qemu_reads_plaintext(monkeypatch):
    """UV_PAGE_OUT forgets to encrypt: QEMU's fault pages the secret out in plaintext."""
    from emu.hw.memory import Frame

    def copy_from(self, src, *, encrypt):
        self.value, self.secret, self.zero, self.encrypted = src.value, src.secret, src.zero, False

    monkeypatch.setattr(Frame, "copy_from", copy_from)

    async def guest(g):
        await boot(g)
        await g.write(gpa(GFN), 0x5EC)

    async def qemu(h):
        await h.read(1, GFN)

    violation(run(guest, qemu), "confidentiality", "QEMU reads the plaintext of secure GFN 0x5")


def test_integrity_secure_frame_changed_under_the_guest():
    box = {}

    async def guest(g):
        await boot(g)
        await g.write(gpa(GFN), 0x5EC)
        sm = box["sm"]
        sm.memory.secure[svm(box).frames[GFN]].value = 0xBAD  # the UV's page changes
        await g.read(gpa(GFN))

    violation(run(guest, box=box), "integrity",
              "vm1.vcpu0 reads 2989 from GFN 0x5, but last wrote 1516")


def test_integrity_guest_books_content_outside_esm_is_undefined():
    """(d) What a normal VM wrote outside the ESM range is undefined after INIT_DONE (moved
    without a copy): no integrity violation when the SVM reads it back."""
    got = []

    async def guest(g):
        await g.write(gpa(GFN), 0x77)
        await boot(g)
        got.append(await g.read(gpa(GFN)))

    result = run(guest)
    assert result.ok, result.violation.describe()
    assert got == [0]  # the UV's zero page


def test_use_after_free_of_a_device_page_pvt():
    """A device page freed under its GFN (page_free without the migration): QEMU's fault
    runs migrate_to_ram, which reads the freed pvt."""
    box = {}

    async def guest(g):
        await boot(g)
        kvm = box["kvm"]
        dpfn = uvmem.kvmppc_gfn_is_uvmem_pfn(0, kvm)
        kvm.uvmem_dev.page_free(dpfn)

    async def qemu(h):
        await h.read(1, 0)

    violation(run(guest, qemu, box=box), "use-after-free",
              "read of pvt->kvm of device page", "freed by kvmppc_uvmem_page_free")


def test_use_after_free_double_page_free():
    box = {}

    async def guest(g):
        await boot(g)
        kvm = box["kvm"]
        dpfn = uvmem.kvmppc_gfn_is_uvmem_pfn(1, kvm)
        kvm.uvmem_dev.page_free(dpfn)
        kvm.uvmem_dev.page_free(dpfn)

    violation(run(guest, box=box), "use-after-free", "pvt->")


# =========================================================================== hcall returns
def test_lock_leak_at_hcall_return():
    """B1 (page-out-lock-leak): H_SVM_PAGE_OUT whose migrate_vma_setup fails keeps
    uvmem_lock."""
    box = {}

    async def guest(g):
        await boot(g)
        box["kvm"].fail_migrate_setup = lambda mig: mig.flags == 2
        await g.uv_hcall("H_SVM_PAGE_OUT", gpa(0), 0, PAGE_SHIFT)

    violation(run(guest, box=box, quirks=["page-out-lock-leak"]), "lock-leak",
              "H_SVM_PAGE_OUT returns with uvmem_lock held")


def test_lock_leak_at_host_fault_return():
    box = {}

    async def guest(g):
        await boot(g)
        box["kvm"].fail_migrate_setup = lambda mig: mig.flags == 2

    async def qemu(h):
        await h.read(1, 0)

    violation(run(guest, qemu, box=box, quirks=["page-out-lock-leak"]), "lock-leak",
              "the host page fault returns with uvmem_lock held")


def test_pfn_refcount_leaked_at_hcall_return(monkeypatch):
    monkeypatch.setattr("emu.kvm.vm.KVM.kvm_release_pfn_clean", lambda self, pfn: None)

    async def guest(g):
        await boot(g)
        await g.share(GFN)

    violation(run(guest), "pfn-refcount",
              "H_SVM_PAGE_IN returns with a gfn_to_pfn reference leaked")


def test_pfn_refcount_release_without_reference(monkeypatch):
    from emu.kvm.vm import KVM

    real = KVM.kvm_release_pfn_clean

    def twice(self, pfn):
        real(self, pfn)
        real(self, pfn)

    monkeypatch.setattr(KVM, "kvm_release_pfn_clean", twice)

    async def guest(g):
        await boot(g)
        await g.share(GFN)

    violation(run(guest), "pfn-refcount", "it holds no reference to")


def test_return_path():
    """B5 (init-start-late-flag): a failed INIT_START returns with rfid."""
    found = emu.hunt("abort-on-register-failure", quirks=["init-start-late-flag"],
                     schedules=5, seed=0).found
    violation(found, "return-path", "H_SVM_INIT_START came from the Ultravisor but returns "
              "with rfid (secure_guest is 0), not UV_RETURN")


# =========================================================================== slots
def test_slots_incomplete_rollback():
    """B8 (init-start-rollback)."""
    found = emu.hunt("abort-on-register-failure", quirks=["init-start-rollback"],
                     schedules=5, seed=0).found
    violation(found, "slots", "H_SVM_INIT_START failed but left the slots it registered",
              "(incomplete rollback)")


def test_slots_uv_and_hv_disagree():
    """The UV forgets a registration: the next memory-region commit compares."""
    box = {}

    async def guest(g):
        await boot(g)
        del svm(box).slots[0]

    async def qemu(h):
        await h.hotplug(1, 1, 32, 16)

    violation(run(guest, qemu, box=box), "slots",
              "the UV has slots [1] registered, the HV's uvmem slots are [0, 1]")


def test_slots_counted_uvmem_slots_pile_up_on_reboot():
    """The kernel's KVM_PPC_SVM_OFF frees no uvmem slot (quirk uvmem-slot-leak, the
    kernel's behaviour): the next INIT_START adds a second one for the same memslot, which
    a comparison of slot-id sets cannot see."""
    box = {}

    async def qemu(h):
        box["kvm"].quirks = ("uvmem-slot-leak",)
        assert await h.svm_off(1) == 0

    async def again(g):
        await g.uv_hcall("H_SVM_INIT_START")

    result = run(boot, qemu, box=box)
    assert result.ok and len(box["kvm"].uvmem_pfns) == 1  # the stale one, words all 0

    def build(m):
        sm = SvmMachine(m, secure_pages=64)
        kvm = sm.vm(1, ((0, 16),))
        kvm.quirks = ("uvmem-slot-leak",)
        reset = m.completion("reset")

        async def guest(g):
            await boot(g)

        async def qemu2(h):
            await booted.wait_for_completion()
            assert await h.svm_off(1) == 0
            reset.complete_all()

        booted = m.completion("booted")

        async def first(g):
            await boot(g)
            booted.complete_all()

        sm.vcpu(kvm, first)
        sm.vcpu(kvm, again, start=reset)
        sm.host(qemu2)

    found = emu.run(emu.scenario(name="reboot-leak", quirks=QUIRKS)(build))
    violation(found, "slots", "VM 1 has 2 uvmem slots for memslot 0 (GFNs 0x0+16): the older "
              "ones are leaked")


def test_slots_uvmem_slot_outlives_its_memslot(monkeypatch):
    """memslot_delete forgets kvmppc_uvmem_slot_free: an unplugged DIMM keeps its uvmem
    slot."""
    real = uvmem.kvmppc_uvmem_slot_free
    frees = []

    async def forgetful(kvm, slot):
        frees.append(slot.id)
        if slot.id != 1:
            await real(kvm, slot)

    monkeypatch.setattr(uvmem, "kvmppc_uvmem_slot_free", forgetful)

    async def qemu(h):
        await h.hotplug(1, 1, 32, 16)
        await h.unplug(1, 1)

    violation(run(boot, qemu), "slots", "VM 1 keeps a uvmem slot for memslot 1 (GFNs 0x20+16), "
              "which is gone")


def test_final_one_uvmem_slot_per_memslot():
    box = {}

    async def guest(g):
        await boot(g)
        kvm = box["kvm"]
        kvm.uvmem_pfns.append(UvmemSlot(kvm.memslots[0]))

    violation(run(guest, box=box), "invariant", "one uvmem slot per memslot: VM 1 has 2 uvmem "
              "slots for memslot 0")


# =========================================================================== life cycle
def test_life_cycle_vm_error_cell_succeeds(monkeypatch):
    async def always(kvm):
        return H_PARAMETER

    monkeypatch.setattr(uvmem, "kvmppc_h_svm_init_abort", always)

    async def guest(g):
        await boot(g)
        await g.uv_hcall("H_SVM_INIT_ABORT")

    violation(run(guest), "life-cycle", "VM Secure --INIT_ABORT--> Secure with H_PARAMETER: "
              "the table says Error")


def test_life_cycle_vm_success_to_the_wrong_state(monkeypatch):
    async def lazy(kvm):
        return H_SUCCESS

    monkeypatch.setattr(uvmem, "kvmppc_h_svm_init_done", lazy)

    async def guest(g):
        await g.uv_hcall("H_SVM_INIT_START")
        await g.uv_hcall("H_SVM_INIT_DONE")

    violation(run(guest), "life-cycle", "VM Transient --INIT_DONE--> Transient with H_SUCCESS: "
              "the table says Secure")


def test_life_cycle_vm_legal_operation_fails():
    """B4 (strict-abort-caller-check): the UV's abort is refused, the VM stays Transient."""
    found = emu.hunt("abort-on-register-failure", quirks=["strict-abort-caller-check"],
                     schedules=5, seed=0).found
    violation(found, "life-cycle", "VM Transient --INIT_ABORT--> Transient failed with "
              "H_UNSUPPORTED: the table says Normal")


def test_life_cycle_vm_failed_operation_changes_state(monkeypatch):
    async def half(kvm):
        kvm.secure_guest |= KVMPPC_SECURE_INIT_DONE
        return H_STATE

    monkeypatch.setattr(uvmem, "kvmppc_h_svm_init_done", half)

    async def guest(g):
        await g.uv_hcall("H_SVM_INIT_START")
        await g.uv_hcall("H_SVM_INIT_DONE")

    violation(run(guest), "life-cycle", "VM Transient --INIT_DONE--> Secure although it failed "
              "with H_STATE")


def test_life_cycle_gfn_transition(monkeypatch):
    """The UV acknowledges a share without mapping the page: Normal --share--> Normal."""
    real = ultravisor.Ultravisor._uv_page_in

    async def ignore_shares(self, lpid, src_ra, dst_gpa, flags, page_shift):
        if self.request.get(self._caller) == ("share", dst_gpa >> PAGE_SHIFT):
            return 0
        return await real(self, lpid, src_ra, dst_gpa, flags, page_shift)

    monkeypatch.setattr(ultravisor.Ultravisor, "_uv_page_in", ignore_shares)

    async def guest(g):
        await g.uv_hcall("H_SVM_INIT_START")
        await g.uv_hcall("H_SVM_PAGE_IN", gpa(GFN), H_PAGE_IN_SHARED, PAGE_SHIFT)

    violation(run(guest), "life-cycle", "GFN 0x5 Normal --share--> Normal (succeeded): the "
              "table says Shared")


def test_life_cycle_init_done_leaves_a_gfn_normal():
    """B2 (no-init-done-migration)."""
    found = emu.hunt("svm-boot", quirks=["no-init-done-migration"], schedules=5, seed=0).found
    violation(found, "life-cycle", "Normal --init_done--> Normal: after H_SVM_INIT_DONE "
              "succeeds no registered GFN may be Normal")


def test_life_cycle_init_done_unshares(monkeypatch):
    """INIT_DONE drops a page the UV shared during ESM: Shared --init_done--> Normal."""
    real = uvmem.kvmppc_h_svm_init_done

    async def unsharing(kvm):
        kvm.uv.svms[kvm.lpid].shared.pop(GFN, None)
        return await real(kvm)

    monkeypatch.setattr(uvmem, "kvmppc_h_svm_init_done", unsharing)

    async def guest(g):
        await g.uv_hcall("H_SVM_INIT_START")
        await g.uv_hcall("H_SVM_PAGE_IN", gpa(GFN), H_PAGE_IN_SHARED, PAGE_SHIFT)
        await g.uv_hcall("H_SVM_INIT_DONE")

    violation(run(guest), "life-cycle", "GFN 0x5 Shared --init_done--> Normal: the table says "
              "Shared")


def test_life_cycle_init_done_excuses_only_gfns_in_flight():
    """A share that completed during INIT_DONE does not excuse its GFN: check_init_done
    holds it to "not Normal"; only a GFN with an operation still in flight is excused."""
    from emu.kvm import lifecycle

    box = {}

    async def guest(g):
        await g.uv_hcall("H_SVM_INIT_START")
        await g.uv_hcall("H_SVM_INIT_DONE")
        kvm = box["kvm"]
        vma = kvm.mm.vma_lookup(kvm.gfn_to_hva(GFN))
        dpfn = -vma.pte[GFN]
        vma.pte[GFN] = 0  # GFN 5 back to Normal behind everybody's back
        box["moved"] = lifecycle.check_init_done(kvm, [], moved={GFN})
        box["in_flight"] = lifecycle.check_init_done(kvm, [], moved={GFN}, in_flight={GFN})
        vma.pte[GFN] = -dpfn

    result = run(guest, box=box)
    assert result.ok, result.violation.describe()
    assert "GFN 0x5 Normal --init_done--> Normal (a share or unshare of it overlapped)" \
        in box["moved"]
    assert box["in_flight"] is None


def test_life_cycle_terminate_uv_still_knows_the_vm(monkeypatch):
    async def no_terminate(self, lpid):
        return 0

    monkeypatch.setattr(ultravisor.Ultravisor, "uv_svm_terminate", no_terminate)

    async def qemu(h):
        await h.svm_off(1)

    violation(run(boot, qemu), "life-cycle", "the UV still knows VM 1 after terminate")


def test_life_cycle_terminate_leaves_a_device_page(monkeypatch):
    async def no_drop(slot, kvm, skip):
        return None

    monkeypatch.setattr(uvmem, "kvmppc_uvmem_drop_pages", no_drop)

    async def qemu(h):
        await h.svm_off(1)

    violation(run(boot, qemu), "life-cycle", "Secure --terminate--> Secure: the table says "
              "Normal")


@pytest.mark.parametrize("op", ["abort", "terminate"])
def test_life_cycle_pfns_word_left_after(monkeypatch, op):
    """drop_pages leaves GFN 5's KVMPPC_GFN_SHARED flag in its pfns[] word."""
    real = uvmem.kvmppc_uvmem_drop_pages

    async def sloppy(slot, kvm, skip):
        await real(slot, kvm, skip)
        p = uvmem.uvmem_slot(kvm, GFN)
        p.pfns[GFN - p.base_pfn] = KVMPPC_GFN_SHARED

    monkeypatch.setattr(uvmem, "kvmppc_uvmem_drop_pages", sloppy)

    async def guest(g):
        await g.uv_hcall("H_SVM_INIT_START")
        await g.uv_hcall("H_SVM_PAGE_IN", gpa(GFN), H_PAGE_IN_SHARED, PAGE_SHIFT)
        if op == "abort":
            await g.uv_hcall("H_SVM_INIT_ABORT")
        else:
            await g.uv_hcall("H_SVM_INIT_DONE")

    async def qemu(h):
        await h.svm_off(1)

    result = run(guest, qemu if op == "terminate" else None)
    violation(result, "life-cycle",
              f"GFN 0x5 keeps KVMPPC_GFN_SHARED in its pfns[] word after {op}")


# =========================================================================== the UV's paths
def test_svm_access_page_cannot_come_back(monkeypatch):
    async def refuse(kvm, gpa_, flags, shift):
        return H_PARAMETER

    async def guest(g):
        await boot(g)
        await g.write(gpa(GFN), 0x5EC)
        await g._machine.hv.kvms[1].host_fault(g._kvm.gfn_to_hva(GFN))  # paged out
        monkeypatch.setattr(uvmem, "kvmppc_h_svm_page_in", refuse)
        await g.read(gpa(GFN))

    violation(run(guest), "svm-access", "the UV cannot page GFN 0x5 back in for the SVM: "
              "H_SVM_PAGE_IN returned -4")


def test_svm_access_shared_page_not_sent_back(monkeypatch):
    async def fail(kvm, gfn):
        return -14

    monkeypatch.setattr(uvmem, "kvmppc_send_page_to_uv", fail)
    shared = {}

    async def guest(g):
        await boot(g)
        await g.share(GFN)
        shared["yes"] = True
        while "reclaimed" not in shared:
            await g._machine.m.point("wait for reclaim")
        await g.read(gpa(GFN))

    async def qemu(h):
        while "yes" not in shared:
            await h.m.point("wait for share")
        await h.reclaim(1, GFN)
        shared["reclaimed"] = True

    violation(run(guest, qemu, host_after_guests=False), "svm-access",
              "the HV could not send shared GFN 0x5 back to the UV after UV_PAGE_INVAL")


def test_fault_livelock(monkeypatch):
    async def no_migration(self, vma, addr, dpfn):
        return 0

    monkeypatch.setattr(uvmem.UvmemDevice, "migrate_to_ram", no_migration)

    async def qemu(h):
        await h.read(1, 0)

    violation(run(boot, qemu), "fault-livelock", "was retried 64 times, each time meeting "
              "device page", "which migrate_to_ram did not migrate")


# =========================================================================== invariants
def test_invariant_never_device_backed_and_shared():
    """Also B2 (single-flag-gfn-tracking); here by state."""
    box = {}

    async def guest(g):
        await boot(g)
        await g.share(GFN)
        kvm = box["kvm"]
        kvm.mm.set_pte(kvm.gfn_to_hva(GFN), -7)
        await g.read(gpa(0))

    violation(run(guest, box=box), "invariant", "never device-backed and shared: GFN 0x5 of "
              "VM 1 is shared with the HV but backed by a device (secure) page")


def test_invariant_no_vcpu_in_the_guest_during_svm_off():
    """B6 (svm-off-no-guard)."""
    found = emu.hunt("svm-off-vs-entry", quirks=["svm-off-no-guard"], schedules=20,
                     seed=0).found
    violation(found, "invariant", "no vCPU in the guest during SVM_OFF",
              "runs in the guest while SVM_OFF tears its VM down")


def test_entry_without_partition_table_entry(monkeypatch):
    """KVM_PPC_SVM_OFF that forgot kvmppc_setup_partition_table after UV_SVM_TERMINATE: the
    vCPU that enters afterwards finds mmu_ready set and no partition-table entry."""
    from emu.kvm import hv

    monkeypatch.setattr(hv, "kvmppc_setup_partition_table", lambda kvm: None)
    found = emu.hunt("svm-reboot", schedules=5, seed=0).found
    violation(found, "entry", "enters the guest with no partition-table entry for LPID 1")


def test_use_after_free_page_free_after_kvm_destroy():
    """A device page freed after kvm_destroy_vm (its pvt->kvm is gone)."""
    box = {}

    async def guest(g):
        await boot(g)
        kvm = box["kvm"]
        kvm.destroyed = True  # as if the VM fd had been closed while the memory stayed mapped
        await kvm.munmap_memslot(kvm.memslots[0])

    violation(run(guest, box=box), "use-after-free", "kvmppc_uvmem_page_free of device page",
              "freed by kvm_destroy_vm")


def test_life_cycle_destroyed_vm_leaves_nothing():
    """svm-destroy with the kernel's uvmem-slot leak: the destroyed VM keeps its slots."""
    found = emu.hunt("svm-destroy", quirks=["uvmem-slot-leak"], schedules=5, seed=0).found
    violation(found, "life-cycle", "VM 1 is destroyed but keeps 1 uvmem slots")


def test_life_cycle_flags_only_changes_gfn_states():
    found = emu.hunt("flags-only", quirks=["flags-only-drops-pages"], schedules=5, seed=0).found
    violation(found, "life-cycle", "Secure --FLAGS_ONLY--> Normal")


def _device_state(edit):
    box = {}

    async def guest(g):
        await boot(g)
        edit(box["kvm"])

    return run(guest, box=box)


def test_final_device_entry_without_uvmem_word():
    def edit(kvm):
        p = uvmem.uvmem_slot(kvm, 2)
        p.pfns[2] = 0  # the word forgets the device page

    violation(_device_state(edit), "invariant", "device pages match the GFN states: GFN 0x2 "
              "of VM 1 has the word 0x0 (not UVMEM) but its host PTE is device page")


def test_final_uvmem_word_names_a_free_device_page():
    def edit(kvm):
        p = uvmem.uvmem_slot(kvm, 2)
        dpfn = p.pfns[2] & ~KVMPPC_GFN_UVMEM_PFN
        kvm.uvmem_dev.bitmap[dpfn - 1] = 0

    violation(_device_state(edit), "invariant", "GFN 0x2 of VM 1 is UVMEM but device page",
              "does not stand for it")


def test_final_uvmem_word_but_pte_is_not_its_device_page():
    def edit(kvm):
        kvm.mm.set_pte(kvm.gfn_to_hva(2), kvm.memory.normal.alloc())

    violation(_device_state(edit), "invariant", "GFN 0x2 of VM 1 is UVMEM (device page",
              "but its host PTE is normal pfn")


def test_final_device_page_leaked():
    def edit(kvm):
        kvm.uvmem_dev.bitmap[60] = 1  # in use, standing for nothing

    violation(_device_state(edit), "invariant", "device pages in use for", "UVMEM GFNs (leaked)")


# =========================================================================== the table
CHECKS = {
    # kind / check: the tests above that make it fire
    "return-code (guest)": ["test_return_code_two_state_unshare_refused_by_the_uv_itself",
                            "test_return_code_undeclared_code_fails_the_scenario",
                            "test_return_code_contended_code_only_when_contended",
                            "test_return_code_of_a_guest_load"],
    "return-code (QEMU)": ["test_return_code_of_qemu"],
    "confidentiality (store)": ["test_confidentiality_secret_store_lands_in_normal_memory"],
    "confidentiality (QEMU read)": ["test_confidentiality_qemu_reads_plaintext"],
    "integrity": ["test_integrity_secure_frame_changed_under_the_guest"],
    "use-after-free (pvt)": ["test_use_after_free_of_a_device_page_pvt",
                             "test_use_after_free_double_page_free"],
    "lock-leak (hcall)": ["test_lock_leak_at_hcall_return"],
    "lock-leak (host fault)": ["test_lock_leak_at_host_fault_return"],
    "pfn-refcount (leak)": ["test_pfn_refcount_leaked_at_hcall_return"],
    "pfn-refcount (release)": ["test_pfn_refcount_release_without_reference"],
    "return-path": ["test_return_path"],
    "slots (rollback)": ["test_slots_incomplete_rollback"],
    "slots (UV vs HV)": ["test_slots_uv_and_hv_disagree"],
    "slots (counted)": ["test_slots_counted_uvmem_slots_pile_up_on_reboot"],
    "slots (outlives memslot)": ["test_slots_uvmem_slot_outlives_its_memslot"],
    "life-cycle (VM Error cell)": ["test_life_cycle_vm_error_cell_succeeds"],
    "life-cycle (VM wrong state)": ["test_life_cycle_vm_success_to_the_wrong_state"],
    "life-cycle (VM legal op fails)": ["test_life_cycle_vm_legal_operation_fails"],
    "life-cycle (VM failed op moves)": ["test_life_cycle_vm_failed_operation_changes_state"],
    "life-cycle (GFN table)": ["test_life_cycle_gfn_transition"],
    "life-cycle (INIT_DONE Normal left)": ["test_life_cycle_init_done_leaves_a_gfn_normal",
                                           "test_life_cycle_init_done_excuses_only_gfns_in_flight"],
    "life-cycle (INIT_DONE Shared kept)": ["test_life_cycle_init_done_unshares"],
    "life-cycle (terminate: UV)": ["test_life_cycle_terminate_uv_still_knows_the_vm"],
    "life-cycle (terminate: device page)": ["test_life_cycle_terminate_leaves_a_device_page"],
    "life-cycle (abort/terminate: pfns[])": ["test_life_cycle_pfns_word_left_after"],
    "svm-access (page-in)": ["test_svm_access_page_cannot_come_back"],
    "svm-access (send back)": ["test_svm_access_shared_page_not_sent_back"],
    "fault-livelock": ["test_fault_livelock"],
    "invariant: never device-backed and shared": [
        "test_invariant_never_device_backed_and_shared"],
    "invariant: no vCPU in the guest during SVM_OFF": [
        "test_invariant_no_vcpu_in_the_guest_during_svm_off"],
    "final: device pages match the GFN states": [
        "test_final_device_entry_without_uvmem_word",
        "test_final_uvmem_word_names_a_free_device_page",
        "test_final_uvmem_word_but_pte_is_not_its_device_page", "test_final_device_page_leaked"],
    "final: one uvmem slot per memslot": ["test_final_one_uvmem_slot_per_memslot"],
    "entry (partition-table entry)": ["test_entry_without_partition_table_entry"],
    "use-after-free (kvm freed)": ["test_use_after_free_page_free_after_kvm_destroy"],
    "life-cycle (destroy leaves nothing)": ["test_life_cycle_destroyed_vm_leaves_nothing"],
    "life-cycle (FLAGS_ONLY keeps states)": ["test_life_cycle_flags_only_changes_gfn_states"],
}
ELSEWHERE = {  # the nested and pkvm models' checks, provoked in their own test files
    "illegal-access":
        "test_pkvm_machine.py::test_illegal_access_fires_on_an_access_the_books_forbid",
    "hyp-panic": "test_pkvm_machine.py::test_el2_touching_a_shared_page_it_has_not_pinned_panics",
    "apply-failed":
        "test_pkvm_machine.py::test_an_apply_step_that_fails_after_its_check_is_reported",
    "bug-on": "test_pkvm_invariants.py::test_abort_bug_on_is_found_and_the_fixed_model_retries",
    "warn-on": "test_pkvm_transitions.py::test_unshare_guest_check_order",
    "idr": "test_nested_lifecycle.py::test_candidate_race_found_with_its_quirk",
    "use-after-free (nested guest)":
        "test_nested_lifecycle.py::test_candidate_race_found_with_its_quirk",
    "invariant: nested lifetime":
        "test_nested_lifecycle.py::test_nested_lifetime_fires_on_a_double_put",
    "invariant: TLB coherence": "test_nested_machine.py::test_tlb_coherence_fires",
    "integrity (L2 load)": "test_nested_machine.py::test_each_quirk_is_found_by_its_scenario",
}


def test_every_check_has_a_test():
    """Every violation kind the model reports (grep: fail(" and m.invariant / m.final in
    emu/actors, emu/kvm, emu/pkvm, emu/machines, emu/scenarios) has a test that provokes
    it: above, or named in ``ELSEWHERE``."""
    import pathlib
    import re

    root = pathlib.Path(emu.__file__).parent
    kinds = set()
    for layer in ("actors", "kvm", "pkvm", "machines", "scenarios"):
        for path in root.glob(f"{layer}/**/*.py"):
            kinds |= set(re.findall(r'fail\("([a-z-]+)"', path.read_text()))
    kinds |= {"invariant"}  # m.invariant and m.final
    covered = {name.split(" (")[0].split(":")[0] for name in [*CHECKS, *ELSEWHERE]}
    assert kinds <= covered, kinds - covered
    here = pathlib.Path(__file__).parent
    for where in ELSEWHERE.values():
        file, test = where.split("::")
        assert f"def {test}(" in (here / file).read_text(), where
    names = {n for tests in CHECKS.values() for n in tests}
    assert names <= set(globals()), names - set(globals())
    assert {n for n in globals() if n.startswith("test_") and n != "test_every_check_has_a_test"
            and not n.startswith("test_return_code_declared") and
            not n.startswith("test_return_code_fixed") and
            not n.startswith("test_integrity_guest_books")} <= names
