"""POWER secure-VM scenarios (seeds 000, 001, 004).

Every scenario takes ``vcpus``, ``mem_mb`` and ``design``, and accepts every quirk of
``emu/kvm/uvmem.py``; ``QUIRK_SCENARIO`` names the scenario that hunts each one down. The
guest boots the same way everywhere: it writes its image (the first pages of memory) as a
normal VM, then UV_ESM pages exactly those in and H_SVM_INIT_DONE migrates the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ..actors.host import Host
from ..actors.returncodes import RETURN_CODES, AcceptSpec, accept
from ..actors.svm_guest import SvmGuest
from ..actors.ultravisor import SHARE_VS_PAGE_IN
from ..hw.costs import COST_MODELS
from ..kvm.hv import H_REGISTER_VPA, H_VPA_FUNC_SHIFT
from ..kvm.hvcall import EBUSY, EFAULT, H_PARAMETER, H_SUCCESS, PAGE_SHIFT
from ..kvm.lifecycle import GFN_CELLS, VM_CELLS
from ..kvm.uvmem import (
    MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
    QUIRKS,
    RESET_IN_SHARE_RETRY,
    RESET_VS_SHARE,
    SHARE_VS_PAGE_OUT,
)
from ..kvm.vm import KVM_MEM_LOG_DIRTY_PAGES
from ..machines.svm import COMMON_PARAMS, KVM_USER_MEM_SLOTS, SvmMachine
from ..sim import Machine, Param, scenario
from ..sim.channel import Completion
from ..sim.coverage import RACE

QUIRK_SCENARIO = {
    "page-out-lock-leak": "share-vs-pageout",
    "single-flag-gfn-tracking": "init-done-vs-share",
    "no-init-done-migration": "svm-boot",
    "strict-abort-caller-check": "abort-on-register-failure",
    "init-start-late-flag": "abort-on-register-failure",
    "svm-off-no-guard": "svm-off-vs-entry",
    "init-start-rollback": "abort-on-register-failure",
    "uvmem-slot-leak": "svm-reboot",
    "fault-ref-no-page-lock": "share-storm",
    "page-in-hole-race": "qemu-vs-page-in",
    "busy-page-fails": "init-done-vs-share",
    "flags-only-drops-pages": "flags-only",
    "mr-move-unhandled": "flags-only",
    "init-start-unserialised": "hotplug-during-esm",
    "page-in-fail-leaves-uvmem": "page-in-fail-vs-share",
}
QUIRK_PARAMS = {"mr-move-unhandled": {"change": "move"}, "busy-page-fails": {"slots": 2}}
"""Parameters a quirk's scenario needs."""
SMALLEST = ("svm-boot", {"vcpus": 1, "mem_mb": 1}, "no-init-done-migration")
"""The suite's smallest schedule (scenario, parameters, the quirk it claims): what
``emu explore`` exhausts within 2 preemptions in the README's table."""
QUIRK_STRATEGY = {"busy-page-fails": ("pct", 3, 13), "init-start-unserialised": ("pct", 3, 22)}
"""A quirk random walk does not reach in 2,000 schedules: (strategy, depth, first seed that
finds it)."""

SUITE = "POWER secure VMs: every scenario of seeds 000, 001 and 004"
"""What ``emu list`` says of the suite (entry point in pyproject.toml)."""


ACCEPT: dict[str, AcceptSpec] = {"*": {H_SUCCESS}}
"""What every scenario accepts unless it says otherwise: success, from every call (H_SUCCESS
and the ioctls' 0 are the same number). A scenario adds the codes its races or its fault
injection legitimately produce, call by call (``actors/returncodes.py``);
anything else a guest program or QEMU gets is a ``return-code`` violation."""

ESM_COUNTER = "UV_ESM returned at (ns)"
IMAGE_PAGES = 64
"""The guest image UV_ESM pages in (4 MiB at most): "the necessary and sufficient GFNs"."""


def image_pages(mem_mb: int, slots: int = 1) -> int:
    """The guest image: an eighth of memory, at most ``IMAGE_PAGES`` and at most half of slot
    0 (whose other half holds the data pages)."""
    per_slot = mem_mb * 16
    return max(2, min(per_slot // 2, per_slot * slots // 8, IMAGE_PAGES))


def svm_scenario(name: str, extra: dict[str, Param] | None = None, *, per_vcpu: float = 15,
                 per_gfn: float = 1 / 256, more_steps: Callable[[dict], float] | None = None,
                 limits: Callable[[dict], str | None] | None = None):
    """A secure-VM scenario. Its step bound, measured over random and PCT schedules as the
    parameters grow (see the README's "Budgets"), is ``200 + per_vcpu*vcpus + 20*image +
    per_gfn*GFNs + more_steps(params)``, plus 3 steps per GFN when UV_ESM pages in every GFN
    and 7 when every page is populated and paged in; the budget is four times that (a
    schedule that exceeds it livelocks), the memory estimate 40 MB + 13 KB a vCPU + 53 bytes a
    GFN + 300 bytes a step of trace."""

    def steps(p: dict) -> float:
        gfns = p["mem_mb"] * 16 * p.get("slots", 1)
        total = (200 + per_vcpu * p["vcpus"] + 20 * image_pages(p["mem_mb"], p.get("slots", 1))
                 + per_gfn * gfns + (more_steps(p) if more_steps else 0))
        if p.get("esm") == "all":
            total += 3 * gfns
        if p.get("prealloc") and (p.get("esm") == "all" or p["design"] == "two-state"):
            total += 7 * gfns
        return total

    def memory(p: dict) -> int:
        gfns = p["mem_mb"] * 16 * p.get("slots", 1)
        return int(40 * 2**20 + 13 * 2**10 * p["vcpus"] + 53 * gfns + 300 * steps(p))

    return scenario(name, params={**COMMON_PARAMS, **(extra or {})}, quirks=QUIRKS,
                    max_steps=lambda p: 10_000 + 4 * int(steps(p)), memory=memory,
                    limits=limits)


def gpa(gfn: int) -> int:
    return gfn << PAGE_SHIFT


class Boot:
    """A VM with one memslot per ``slots`` entry, and the boot protocol of its first vCPU."""

    def __init__(self, m: Machine, mem_mb: int, design: str, uv: str = "faithful", slots: int = 1,
                 esm: str = "necessary", costs: str = "unit", prealloc: bool = False,
                 pcpus: int = 0, accept: Mapping[str, AcceptSpec] | None = None) -> None:
        """``accept``: the return codes this scenario accepts beyond ``ACCEPT``."""
        self.m = m
        per_slot = mem_mb * 16
        self.npages = per_slot * slots
        # device pages for the guest twice over (room for a hot-plugged DIMM and reboots)
        self.sm = SvmMachine(m, design=design, uv=uv, quirks=m.quirks, esm_pagein=esm,
                             secure_pages=2 * self.npages + 64, costs=COST_MODELS[costs],
                             pcpus=pcpus, accept={**ACCEPT, **(accept or {})})
        self.kvm = self.sm.vm(1, tuple((i * per_slot, per_slot) for i in range(slots)),
                              prealloc)
        self.image = image_pages(mem_mb, slots)
        self.booted: Completion = m.completion("SVM booted")
        self.esm_started: Completion = m.completion("UV_ESM issued")

    def data_gfn(self, i: int) -> int:
        """A data page after the image (distinct per i, wrapping inside slot 0)."""
        per_slot = self.npages // len(self.kvm.memslots)
        return self.image + i % (per_slot - self.image)

    async def boot(self, g: SvmGuest, share: tuple[int, int] = (0, 0),
                   expect: AcceptSpec | None = None) -> int:
        """Write the image, UV_ESM, read the image back. ``expect``: the codes UV_ESM may
        return (default: the scenario's declaration, H_SUCCESS unless it says otherwise)."""
        for gfn in range(self.image):
            await g.write(gpa(gfn), 0x1000 + gfn)
        self.esm_started.complete_all()
        rc = await g.ucall("UV_ESM", 0, self.image, *share, accept=expect)
        self.m.counter(ESM_COUNTER, self.m.now)
        for gfn in range(self.image):
            await g.read(gpa(gfn))
        self.booted.complete_all()
        return rc


@svm_scenario("svm-boot", {
    "esm": Param("necessary", "what UV_ESM pages in", choices=("necessary", "all")),
    "costs": Param("unit", "virtual-time cost model", choices=tuple(COST_MODELS)),
    "prealloc": Param(False, "QEMU populates all guest memory before boot (-mem-prealloc)")})
def svm_boot(m: Machine, vcpus: int, pcpus: int, mem_mb: int, design: str, uv: str, esm: str,
             costs: str, prealloc: bool) -> None:
    """An SVM boots: its image is paged in by UV_ESM, INIT_DONE secures the rest; then every
    vCPU writes and reads back its own pages."""
    b = Boot(m, mem_mb, design, uv=uv, pcpus=pcpus, esm=esm, costs=costs, prealloc=prealloc)

    async def boot(g: SvmGuest) -> None:
        await b.boot(g)
        await g.write(gpa(b.data_gfn(0)), 0xB007)
        await g.read(gpa(b.data_gfn(0)))

    async def secondary(g: SvmGuest) -> None:
        await b.booted.wait_for_completion()
        gfn = b.data_gfn(g.vcpu)
        await g.write(gpa(gfn), 0x5EC0 + g.vcpu)
        await g.read(gpa(gfn))

    b.sm.vcpu(b.kvm, boot)
    for _ in range(1, vcpus):
        b.sm.vcpu(b.kvm, secondary)


def _pool_fits(p: dict) -> str | None:
    data = p["mem_mb"] * 16 - image_pages(p["mem_mb"])
    if p["pool"] > data:
        return (f"pool {p['pool']} is more than the {data} data pages of a {p['mem_mb']} MiB "
                "VM (raise mem_mb or lower pool)")
    return None


@svm_scenario("share-storm", {"rounds": Param(2, "share/unshare rounds per vCPU", minimum=1),
                              "pool": Param(3, "GFNs the vCPUs share among", minimum=1)},
              per_vcpu=8, more_steps=lambda p: 40 * p["rounds"] * p["vcpus"] + 16 * p["pool"],
              limits=_pool_fits)
def share_storm(m: Machine, vcpus: int, pcpus: int, mem_mb: int, design: str, uv: str, rounds: int,
                pool: int) -> None:
    """After boot, vCPUs share and unshare pages of a small pool concurrently (virtio bounce
    buffers), writing and reading them, while QEMU reads the pool and the host reclaims its
    pages (UV_PAGE_INVAL, then a fault sends them to the UV again); finally a vCPU unshares
    everything (UV_UNSHARE_ALL_PAGES, as before a kexec)."""
    # an unshare loses to another vCPU's unshare of the same page (U_PARAMETER: not shared
    # any more, or H_PARAMETER: already paged in), or to QEMU's reclaim of it (the page-in
    # does not collect a page under migration: H_PARAMETER); uncontended, every call must
    # succeed
    unshare = accept(H_SUCCESS, contended=[H_PARAMETER])
    b = Boot(m, mem_mb, design, uv=uv, pcpus=pcpus,
             accept={"UV_UNSHARE_PAGE": unshare, "UV_UNSHARE_ALL_PAGES": unshare})
    m.goal("share-races-page-out", "a share racing a page-out of the same GFN",
           ("a Secure GFN is shared", (GFN_CELLS, "Secure|share")),
           ("a page-out of that GFN overlaps the share", (RACE, SHARE_VS_PAGE_OUT)))
    m.goal("unshare-loses-race", "an unshare losing to another unshare or a reclaim",
           ("a Shared GFN is unshared", (GFN_CELLS, "Shared|unshare")),
           ("an unshare loses (H_PARAMETER)", (RETURN_CODES, "UV_UNSHARE_PAGE|H_PARAMETER")))
    gfns = [b.data_gfn(i) for i in range(pool)]
    done = m.completion("storm done")

    async def storm(g: SvmGuest) -> None:
        if g.vcpu == 0:
            await b.boot(g)
        await b.booted.wait_for_completion()
        for r in range(rounds):
            gfn = gfns[(g.vcpu + r) % pool]
            if await g.share(gfn) == H_SUCCESS:
                await g.write(gpa(gfn), 0x5A00 + g.vcpu)
                await g.read(gpa(gfn))
                await g.unshare(gfn)
            await g.read(gpa(gfn))
        done.complete()
        if g.vcpu == 0:
            for _ in range(vcpus):
                await done.wait_for_completion()
            await g.share(gfns[0])
            await g.ucall("UV_UNSHARE_ALL_PAGES")

    async def qemu(h: Host) -> None:
        await b.booted.wait_for_completion()
        for gfn in gfns:
            await h.read(1, gfn)
            await h.reclaim(1, gfn)

    for _ in range(vcpus):
        b.sm.vcpu(b.kvm, storm)
    b.sm.host(qemu)


@svm_scenario("share-vs-pageout", {
    "setup_fail_pct": Param(30, "chance in percent that migrate_vma_setup fails when a "
                                "device page is paged out", minimum=0, maximum=100)},
              per_vcpu=25, per_gfn=1 / 128)
def share_vs_pageout(m: Machine, vcpus: int, pcpus: int, mem_mb: int, design: str, uv: str,
                     setup_fail_pct: int) -> None:
    """vCPU 0 keeps secrets in a few pages; QEMU touches them, so host faults page them out
    (migrate_vma_setup sometimes failing); then vCPU 0 reads them back (a first touch pages
    each one in again) while vCPU 1 shares one of them."""
    # an injected migrate_vma_setup failure makes the host fault SIGBUS: QEMU's access
    # fails (-EFAULT), and so does a share, whose gfn_to_pfn faults (H_PARAMETER)
    injected = {"qemu read": {0, -EFAULT}, "UV_SHARE_PAGE": {H_SUCCESS, H_PARAMETER}}
    b = Boot(m, mem_mb, design, uv=uv, pcpus=pcpus, accept=injected if setup_fail_pct else None)
    m.goal("share-races-read-back", "a share racing the read-back page-in of the same GFN",
           ("a paged-out Secure GFN is shared", (GFN_CELLS, "Secure|share")),
           ("the owner's read-back of that GFN overlaps the share (in the UV)",
            (RACE, SHARE_VS_PAGE_IN)))
    pages = [b.data_gfn(i) for i in range(3)]
    written = m.completion("secrets written")
    touched = m.completion("QEMU touched them")
    b.kvm.fail_migrate_setup = lambda mig: (mig.flags == MIGRATE_VMA_SELECT_DEVICE_PRIVATE
                                            and m.random.randrange(100) < setup_fail_pct)

    async def owner(g: SvmGuest) -> None:
        await b.boot(g)
        for i, gfn in enumerate(pages):
            await g.write(gpa(gfn), 0xC0DE + i)
        written.complete_all()
        await touched.wait_for_completion()
        for gfn in (pages[1], pages[0], pages[2]):
            await g.read(gpa(gfn))

    async def sharer(g: SvmGuest) -> None:
        await touched.wait_for_completion()
        if await g.share(pages[1]) == H_SUCCESS:
            await g.write(gpa(pages[1]), 0x5A5A)

    async def qemu(h: Host) -> None:
        await written.wait_for_completion()
        for gfn in pages:
            await h.read(1, gfn)
        touched.complete_all()

    b.sm.vcpu(b.kvm, owner)
    for _ in range(1, max(vcpus, 2)):
        b.sm.vcpu(b.kvm, sharer)
    b.sm.host(qemu)


@svm_scenario("init-done-vs-share", {
    "slots": Param(1, "memslots of the VM: with 2 or more the racing share is in the last, "
                      "which INIT_DONE walks after dropping uvmem_lock for the first",
                   minimum=1, maximum=KVM_USER_MEM_SLOTS)}, per_vcpu=800)
def init_done_vs_share(m: Machine, vcpus: int, pcpus: int, mem_mb: int, design: str,
                       uv: str, slots: int) -> None:
    """The UV shares a page during ESM (a boot-time buffer) while another vCPU's request to
    share a second page races H_SVM_INIT_DONE's migration of the remaining GFNs (with
    ``-p slots=2``, across the unlock between two memslots)."""
    # while UV_ESM runs (contended: it covers every GFN), the UV may not know the VM or the
    # slot yet (U_PARAMETER); once ESM is done the share must succeed
    b = Boot(m, mem_mb, design, uv=uv, pcpus=pcpus, slots=slots,
             accept={"UV_SHARE_PAGE": accept(H_SUCCESS, contended=[H_PARAMETER])})
    m.goal("share-meets-esm", "a share racing the VM's transition to secure",
           ("a GFN of the Transient VM is shared", (GFN_CELLS, "Normal|share")),
           ("a share loses to UV_ESM (H_PARAMETER)", (RETURN_CODES, "UV_SHARE_PAGE|H_PARAMETER")))
    early = b.data_gfn(0)
    racing = b.data_gfn(1) if slots == 1 else (slots - 1) * mem_mb * 16 + 1

    async def boot(g: SvmGuest) -> None:
        await b.boot(g, share=(early, 1))
        await g.read(gpa(early))

    async def sharer(g: SvmGuest) -> None:
        await b.esm_started.wait_for_completion()
        for _ in range(200):  # until the UV knows the slot (INIT_START has registered it)
            if await g.share(racing) == H_SUCCESS:
                await g.write(gpa(racing), 0x5A5A)
                return
            await m.yield_point("retry UV_SHARE_PAGE")

    b.sm.vcpu(b.kvm, boot)
    for _ in range(1, max(vcpus, 2)):
        b.sm.vcpu(b.kvm, sharer)


@svm_scenario("hotplug-during-esm", per_vcpu=10, per_gfn=1 / 128)
def hotplug_during_esm(m: Machine, vcpus: int, pcpus: int, mem_mb: int, design: str,
                       uv: str) -> None:
    """QEMU hot-plugs a DIMM while the SVM goes through ESM; afterwards the SVM uses both
    its boot memory and the new memory.

    With quirk ``init-start-unserialised`` (the kernel), a slot published while
    H_SVM_INIT_START walks the memslots is registered by both that walk and the commit hook;
    the UV refuses the second registration, and if it is INIT_START's, UV_ESM fails with
    H_PARAMETER (a return-code violation: the guest asked for nothing wrong), else the
    hook's error path may free INIT_START's uvmem slot."""
    b = Boot(m, mem_mb, design, uv=uv, pcpus=pcpus)
    base = b.npages
    plugged = m.completion("DIMM plugged")

    async def boot(g: SvmGuest) -> None:
        await b.boot(g)
        await plugged.wait_for_completion()
        for gfn in (b.data_gfn(0), base, base + 1):
            await g.write(gpa(gfn), 0xD1 + gfn)
            await g.read(gpa(gfn))

    async def qemu(h: Host) -> None:
        await h.hotplug(1, 1, base, mem_mb * 16)
        plugged.complete_all()

    b.sm.vcpu(b.kvm, boot)
    for _ in range(1, vcpus):
        b.sm.vcpu(b.kvm, lambda g: b.booted.wait_for_completion())
    b.sm.host(qemu)


@svm_scenario("dimm-hotplug", per_vcpu=40, per_gfn=1.1)
def dimm_hotplug(m: Machine, vcpus: int, pcpus: int, mem_mb: int, design: str, uv: str) -> None:
    """QEMU plugs a DIMM into a booted SVM (its memory goes straight to Secure), one vCPU
    uses it, then QEMU unplugs it (drop_pages, UV_UNREGISTER_MEM_SLOT, munmap) while another
    vCPU shares, unshares and touches its boot memory."""
    b = Boot(m, mem_mb, design, uv=uv, pcpus=pcpus)
    base, dimm = b.npages, mem_mb * 16
    plugged, used = m.completion("DIMM plugged"), m.completion("DIMM used")

    async def user(g: SvmGuest) -> None:
        await b.boot(g)
        await plugged.wait_for_completion()
        for gfn in (base, base + dimm - 1):
            await g.write(gpa(gfn), 0xD1 + gfn)
            await g.read(gpa(gfn))
        used.complete_all()  # the guest offlines the DIMM before QEMU removes it

    async def busy(g: SvmGuest) -> None:
        await used.wait_for_completion()
        gfn = b.data_gfn(g.vcpu)
        await g.write(gpa(gfn), 0xB5)
        if await g.share(gfn) == H_SUCCESS:
            await g.unshare(gfn)
        await g.read(gpa(gfn))

    async def qemu(h: Host) -> None:
        await b.booted.wait_for_completion()
        await h.hotplug(1, 1, base, dimm)
        plugged.complete_all()
        await used.wait_for_completion()
        await h.unplug(1, 1)

    b.sm.vcpu(b.kvm, user)
    for _ in range(1, max(vcpus, 2)):
        b.sm.vcpu(b.kvm, busy)
    b.sm.host(qemu)


@svm_scenario("svm-reboot", {
    "reboots": Param(1, "resets in a row (KVM_PPC_SVM_OFF), each followed by a secure boot",
                     minimum=1, maximum=64),
    "share_during_reset": Param(False, "the first boot's vCPU goes on sharing pages while "
                                       "QEMU resets the VM: the reset lands inside "
                                       "kvmppc_share_page's retry loop (a coverage goal)")},
              per_vcpu=20, per_gfn=10,
              more_steps=lambda p: 300 * p["reboots"] + 100 * p["share_during_reset"])
def svm_reboot(m: Machine, vcpus: int, pcpus: int, mem_mb: int, design: str, uv: str,
               reboots: int, share_during_reset: bool) -> None:
    """An SVM boots, keeps secrets, shares a page; QEMU resets it (KVM_PPC_SVM_OFF, the UV
    terminates it) and it boots again as a secure VM, ``reboots`` times. With
    ``share_during_reset`` the first boot's vCPU shares three more pages once QEMU may
    reset it."""
    b = Boot(m, mem_mb, design, uv=uv, pcpus=pcpus, accept={"KVM_PPC_SVM_OFF": {0, -EBUSY}})
    if share_during_reset:
        m.goal("reset-in-share-retry", "a reset landing inside kvmppc_share_page's retry loop",
               ("a Secure VM is reset", (VM_CELLS, "Secure|TERMINATE")),
               ("the reset meets a share in flight", (RACE, RESET_VS_SHARE)),
               ("... inside its retry loop", (RACE, RESET_IN_SHARE_RETRY)),
               ("the guard refuses the reset while the vCPU runs (-EBUSY)",
                (RETURN_CODES, "KVM_PPC_SVM_OFF|-EBUSY")))
    resets = [m.completion(f"reset {i} done") for i in range(reboots)]
    up = [m.completion(f"boot {i} done") for i in range(reboots + 1)]
    shared = b.data_gfn(1)

    async def first(g: SvmGuest) -> None:
        await b.boot(g)
        await g.write(gpa(b.data_gfn(0)), 0x5EC)
        await g.share(shared)
        await g.write(gpa(shared), 0x5A)
        up[0].complete_all()
        for i in range(2, 5) if share_during_reset else ():
            await g.share(b.data_gfn(i))

    def again(i: int):
        async def boot(g: SvmGuest) -> None:
            b.booted.reinit()
            await b.boot(g)
            await g.write(gpa(b.data_gfn(0)), 0x5EC0 + i)
            await g.read(gpa(b.data_gfn(0)))
            up[i].complete_all()
        return boot

    async def qemu(h: Host) -> None:
        for booted, reset in zip(up, resets, strict=False):
            await booted.wait_for_completion()
            await h.read(1, shared)
            await h.read(1, b.data_gfn(0))
            while await h.svm_off(1) == -EBUSY:  # (any other failure is a return-code one)
                await m.yield_point("retry KVM_PPC_SVM_OFF")
            reset.complete_all()

    b.sm.vcpu(b.kvm, first)
    for i in range(1, reboots + 1):
        b.sm.vcpu(b.kvm, again(i), start=resets[i - 1])
    b.sm.host(qemu)


@svm_scenario("qemu-vs-page-in", per_vcpu=10)
def qemu_vs_page_in(m: Machine, vcpus: int, pcpus: int, mem_mb: int, design: str,
                    uv: str) -> None:
    """QEMU touches the SVM's image while UV_ESM pages it in (core mm's windows): it writes
    each image page the guest left empty (every other one) and reads it back (a hole the
    page-in fills with a device page, unless QEMU's fault fills it first and the insert
    aborts), and reads the pages the guest wrote (it meets the migration entry of the
    UV_PAGE_IN copy and waits, or faults the new device page back out). QEMU must read back
    what it wrote, never read plaintext of the SVM, and the guest's image must survive."""
    b = Boot(m, mem_mb, design, uv=uv, pcpus=pcpus)
    written, holes = range(0, b.image, 2), range(1, b.image, 2)
    qemu_done = m.completion("QEMU done")

    async def boot(g: SvmGuest) -> None:
        for gfn in written:
            await g.write(gpa(gfn), 0x1000 + gfn)
        b.esm_started.complete_all()
        await g.ucall("UV_ESM", 0, b.image, 0, 0)
        for gfn in written:
            await g.read(gpa(gfn))
        await qemu_done.wait_for_completion()
        for gfn in holes:  # QEMU's value or the UV's zero page: the guest never wrote them
            await g.read(gpa(gfn))

    async def qemu(h: Host) -> None:
        await b.esm_started.wait_for_completion()
        for page, hole in zip(written, holes, strict=False):
            for _ in range(1000):  # until the HV's books say the page-in of ``page`` began
                if b.sm.page_states(1, page).hv != "Normal":
                    break
                await m.yield_point(f"QEMU waits for the page-in of GFN {page:#x}")
            await h.read(1, page)  # (its migration entry keeps QEMU in step with UV_ESM)
            await h.write(1, hole, 0xCAFE)
            if (got := await h.read(1, hole)) != 0xCAFE:
                m.fail("integrity", f"QEMU wrote 0xcafe to GFN {hole:#x} while UV_ESM paged "
                       f"it in and reads back {got!r}: the write was lost")
        qemu_done.complete_all()

    b.sm.vcpu(b.kvm, boot)
    b.sm.host(qemu)


@svm_scenario("store-vs-pageout", {
    "rounds": Param(3, "stores to each page, each raced by a QEMU read that pages it out",
                    minimum=1, maximum=64)},
              per_vcpu=30, more_steps=lambda p: 90 * p["rounds"])
def store_vs_pageout(m: Machine, vcpus: int, pcpus: int, mem_mb: int, design: str, uv: str,
                     rounds: int) -> None:
    """The SVM stores to its pages while QEMU's reads page the same pages out (host fault,
    migrate_to_ram, UV_PAGE_OUT): the UV unmaps a page before copying it out, so a store
    racing the copy faults and pages the page back in after it. Each vCPU reads back what
    it last stored (vCPU 0 the pages, the others read them too); the reach of the window (a
    store while the UV copies that page out) is measured in tests/test_core_mm.py."""
    b = Boot(m, mem_mb, design, uv=uv, pcpus=pcpus)
    pages = [b.data_gfn(i) for i in range(2)]

    async def owner(g: SvmGuest) -> None:
        await b.boot(g)
        for r in range(rounds):
            for gfn in pages:
                await g.write(gpa(gfn), 0x570 + 16 * r + gfn)
                await g.read(gpa(gfn))

    async def reader(g: SvmGuest) -> None:
        await b.booted.wait_for_completion()
        for _ in range(rounds):
            for gfn in pages:
                await g.read(gpa(gfn))

    async def qemu(h: Host) -> None:
        await b.booted.wait_for_completion()
        for _ in range(rounds):
            for gfn in pages:
                await h.read(1, gfn)

    b.sm.vcpu(b.kvm, owner)
    for _ in range(1, vcpus):
        b.sm.vcpu(b.kvm, reader)
    b.sm.host(qemu)


@svm_scenario("page-in-fail-vs-share", per_vcpu=30)
def page_in_fail_vs_share(m: Machine, vcpus: int, pcpus: int, mem_mb: int, design: str,
                          uv: str) -> None:
    """The UV fails the UV_PAGE_IN of an unshare (a busy or integrity failure the HV must
    survive: the unshare fails), then, the firmware recovered, another vCPU shares that GFN
    again and uses it while QEMU reads it. With quirk ``page-in-fail-leaves-uvmem`` (the
    kernel) the failed page-in leaves the GFN flagged UVMEM while its host PTE is the normal
    page: the UV's retry is refused, and the later share's ``goto retry`` never ends."""
    b = Boot(m, mem_mb, design, uv=uv, pcpus=pcpus)
    gfn = b.data_gfn(0)
    failed = m.completion("unshare failed")
    fw = b.sm.uv

    async def owner(g: SvmGuest) -> None:
        await b.boot(g)
        await g.share(gfn)
        hostile = fw.misbehave, fw.page_in_fail_paths, fw.hostile_pct
        fw.misbehave, fw.page_in_fail_paths, fw.hostile_pct = \
            frozenset({"page-in-fail"}), frozenset({"page-in"}), 100
        # the UV fails every UV_PAGE_IN of the unshare (and of its retries): it must fail
        await g.unshare(gfn, accept={H_PARAMETER})
        fw.misbehave, fw.page_in_fail_paths, fw.hostile_pct = hostile
        failed.complete_all()

    async def sharer(g: SvmGuest) -> None:
        await failed.wait_for_completion()
        if await g.share(gfn) == H_SUCCESS:
            await g.write(gpa(gfn), 0x5A5A)
            await g.read(gpa(gfn))

    async def qemu(h: Host) -> None:
        await failed.wait_for_completion()
        await h.read(1, gfn)

    b.sm.vcpu(b.kvm, owner)
    for _ in range(1, max(vcpus, 2)):
        b.sm.vcpu(b.kvm, sharer)
    b.sm.host(qemu)


def _fail_slot_exists(p: dict) -> str | None:
    if p["fail_slot"] >= p["slots"]:
        return (f"fail_slot {p['fail_slot']} is not a slot of the VM (slots={p['slots']}: "
                f"0..{p['slots'] - 1})")
    return None


@svm_scenario("abort-on-register-failure", {
    "slots": Param(2, "memslots of the VM", minimum=2, maximum=KVM_USER_MEM_SLOTS),
    "fail_slot": Param(0, "the slot whose UV_REGISTER_MEM_SLOT runs out of secure memory "
                          "(before v5.17 slots are walked from the highest base GFN "
                          "down, so slot 0 fails last; from v5.17 in id_hash order, slot 0 "
                          "first)", minimum=0)},
              per_gfn=1.1, more_steps=lambda p: 12 * p["slots"], limits=_fail_slot_exists)
def abort_on_register_failure(m: Machine, vcpus: int, pcpus: int, mem_mb: int, design: str, uv: str,
                              slots: int, fail_slot: int) -> None:
    """UV_REGISTER_MEM_SLOT fails for one slot during H_SVM_INIT_START: the UV aborts ESM
    (H_SVM_INIT_ABORT), the guest's UV_ESM fails, and it goes on as a normal VM."""
    b = Boot(m, mem_mb, design, uv=uv, pcpus=pcpus, slots=slots)
    b.sm.uv.fail_register = lambda lpid, slot_id: slot_id == fail_slot

    async def boot(g: SvmGuest) -> None:
        await b.boot(g, expect={H_PARAMETER})
        await g.write(gpa(b.data_gfn(0)), 0x0B)
        await g.read(gpa(b.data_gfn(0)))

    async def secondary(g: SvmGuest) -> None:
        await b.booted.wait_for_completion()
        await g.read(gpa(g.vcpu % b.image))

    b.sm.vcpu(b.kvm, boot)
    for _ in range(1, vcpus):
        b.sm.vcpu(b.kvm, secondary)


@svm_scenario("svm-off-vs-entry", per_vcpu=20, per_gfn=1.1)
def svm_off_vs_entry(m: Machine, vcpus: int, pcpus: int, mem_mb: int, design: str, uv: str) -> None:
    """Once the SVM has booted, a vCPU enters the guest while QEMU resets the VM with
    KVM_PPC_SVM_OFF: either the reset is refused (-EBUSY) or the vCPU waits for it."""
    b = Boot(m, mem_mb, design, uv=uv, pcpus=pcpus, accept={"KVM_PPC_SVM_OFF": {0, -EBUSY}})

    async def boot(g: SvmGuest) -> None:
        await b.boot(g)

    async def late(g: SvmGuest) -> None:
        await g.write(gpa(b.data_gfn(g.vcpu)), 0x1A7E)
        await g.read(gpa(b.data_gfn(g.vcpu)))

    async def qemu(h: Host) -> None:
        await b.booted.wait_for_completion()
        await h.svm_off(1)

    b.sm.vcpu(b.kvm, boot)
    for _ in range(1, max(vcpus, 2)):
        b.sm.vcpu(b.kvm, late, start=b.booted)
    b.sm.host(qemu)


@svm_scenario("flags-only", {
    "change": Param("flags-only", "what QEMU changes in a memslot of the SVM: its flags "
                    "(dirty logging on, then off: KVM_MR_FLAGS_ONLY) or its GPA (a DIMM "
                    "moved: KVM_MR_MOVE)", choices=("flags-only", "move")),
    "when": Param("after", "flags-only: during ESM (before INIT_DONE) or once the SVM runs "
                  "(after)", choices=("before", "after"))},
              per_vcpu=20, per_gfn=2.2)
def flags_only(m: Machine, vcpus: int, pcpus: int, mem_mb: int, design: str, uv: str,
               change: str, when: str) -> None:
    """QEMU turns dirty logging on and off for the SVM's boot memory (as a migration would)
    while its vCPUs use it, during ESM or after; or, with ``-p change=move``, plugs a DIMM,
    lets the SVM use it and moves it to another GPA. The SVM's data must survive, and the
    HV's GFN states and uvmem slots must follow the memslots."""
    b = Boot(m, mem_mb, design, uv=uv, pcpus=pcpus)
    base, dimm = b.npages, mem_mb * 16
    changed = m.completion("memslot changed")

    async def owner(g: SvmGuest) -> None:
        await b.boot(g)
        await g.write(gpa(b.data_gfn(0)), 0xF1A6)
        if change == "move":
            await changed.wait_for_completion()
        await g.read(gpa(b.data_gfn(0)))
        for gfn in range(b.image):
            await g.read(gpa(gfn))

    async def user(g: SvmGuest) -> None:
        await b.booted.wait_for_completion()
        gfn = b.data_gfn(g.vcpu)
        await g.write(gpa(gfn), 0xD1 + g.vcpu)
        await g.read(gpa(gfn))

    async def qemu(h: Host) -> None:
        if change == "move":
            await b.booted.wait_for_completion()
            await h.hotplug(1, 1, base, dimm)
            await h.move(1, 1, base + dimm)
        else:
            await (b.booted if when == "after" else b.esm_started).wait_for_completion()
            await h.set_flags(1, 0, KVM_MEM_LOG_DIRTY_PAGES)
            await h.set_flags(1, 0, 0)
        changed.complete_all()

    b.sm.vcpu(b.kvm, owner)
    for _ in range(1, vcpus):
        b.sm.vcpu(b.kvm, user)
    b.sm.host(qemu)


H_VPA_REG_VPA = 1 << H_VPA_FUNC_SHIFT


@svm_scenario("svm-destroy", per_vcpu=20, per_gfn=1.1)
def svm_destroy(m: Machine, vcpus: int, pcpus: int, mem_mb: int, design: str, uv: str) -> None:
    """An SVM boots, registers its VPA in a shared page (kvmppc_pin_guest_page pins it),
    keeps secrets; then QEMU exits: exit_mmap frees the device pages, kvm_destroy_vm
    terminates the SVM in the UV. Nothing of the VM may remain: no device page, no uvmem
    slot, no UV state, no pinned page."""
    b = Boot(m, mem_mb, design, uv=uv, pcpus=pcpus)
    done = m.completion("vCPU done")
    vpa = b.data_gfn(1)

    async def first(g: SvmGuest) -> None:
        await b.boot(g)
        if await g.share(vpa) == H_SUCCESS:  # the lppaca lives in shared memory
            await g.hcall(H_REGISTER_VPA, H_VPA_REG_VPA, 0, gpa(vpa))
        await g.write(gpa(b.data_gfn(0)), 0x5EC)
        done.complete()

    async def other(g: SvmGuest) -> None:
        await b.booted.wait_for_completion()
        await g.write(gpa(b.data_gfn(g.vcpu + 1)), 0x5EC + g.vcpu)
        await g.read(gpa(b.data_gfn(g.vcpu + 1)))
        done.complete()

    async def qemu(h: Host) -> None:
        for _ in range(vcpus):
            await done.wait_for_completion()
        await h.read(1, b.data_gfn(0))
        await h.destroy(1)

    b.sm.vcpu(b.kvm, first)
    for _ in range(1, vcpus):
        b.sm.vcpu(b.kvm, other)
    b.sm.host(qemu)


HOSTILE_EXTRA = ("none", "page-in-fail-private", "init-done-twice", "init-start-secure",
                 "init-start-duplicate")
"""What ``hostile-uv -p extra=`` adds to the hostile UV's default misbehaviour: each leads to
a known finding of the modelled kernel (README, Findings; ``tests/test_hostile_uv.py``)."""


@svm_scenario("hostile-uv", {
    "extra": Param("none", "a hostile act with a known finding to add", choices=HOSTILE_EXTRA),
    "hostile_pct": Param(20, "chance in percent of each hostile act at each opportunity",
                         minimum=0, maximum=100)},
              per_vcpu=60, per_gfn=1.1)
def hostile_uv(m: Machine, vcpus: int, pcpus: int, mem_mb: int, design: str, uv: str,
               extra: str, hostile_pct: int) -> None:
    """The Ultravisor is hostile whatever ``-p uv=`` says: it does not serialise its work on
    a GFN, pages secure GFNs out itself (H_SVM_PAGE_OUT), fails some of the UV_PAGE_IN calls
    of shares and of faults (and retries), and pages a GFN in from inside the
    UV_REGISTER_MEM_SLOT of a hot-plugged DIMM (seed 004). Meanwhile an SVM boots sharing a
    page, its vCPUs share, unshare and touch memory, QEMU reads and reclaims the shared pages
    and hot-plugs a DIMM the SVM then uses. Every HV invariant must hold; the SVM's integrity
    is the hostile UV's problem and is not checked."""
    b = Boot(m, mem_mb, design, uv="hostile", pcpus=pcpus,
             accept={"UV_UNSHARE_PAGE": accept(H_SUCCESS, contended=[H_PARAMETER])})
    hv_uv = b.sm.uv
    hv_uv.hostile_pct = hostile_pct
    if extra == "page-in-fail-private":
        hv_uv.page_in_fail_paths = hv_uv.page_in_fail_paths | {"page-in"}
    elif extra == "init-start-duplicate":  # INIT_START on the secure VM, and the UV accepts
        hv_uv.misbehave = hv_uv.misbehave | {"init-start-secure", "duplicate-register"}
    elif extra != "none":
        hv_uv.misbehave = hv_uv.misbehave | {extra}
    base, dimm = b.npages, mem_mb * 16
    pool = [b.data_gfn(i) for i in range(3)]
    plugged = m.completion("DIMM plugged")

    async def vcpu(g: SvmGuest) -> None:
        if g.vcpu == 0:
            await b.boot(g, share=(pool[2], 1))
        await b.booted.wait_for_completion()
        for i in range(2):
            gfn = pool[(g.vcpu + i) % 2]
            await g.write(gpa(gfn), 0x4051 + g.vcpu)
            if await g.share(gfn) == H_SUCCESS:
                await g.write(gpa(gfn), 0x5A00 + g.vcpu)
                await g.unshare(gfn)
            await g.read(gpa(gfn))
        await plugged.wait_for_completion()
        for gfn in (base + g.vcpu % dimm, b.data_gfn(3 + g.vcpu)):
            await g.write(gpa(gfn), 0xD1 + gfn)
            await g.read(gpa(gfn))
        await g.read(gpa(pool[2]))

    async def qemu(h: Host) -> None:
        await b.booted.wait_for_completion()
        await h.read(1, pool[2])
        await h.reclaim(1, pool[2])
        await h.hotplug(1, 1, base, dimm)
        plugged.complete_all()
        await h.read(1, pool[0])

    for _ in range(max(vcpus, 2)):
        b.sm.vcpu(b.kvm, vcpu)
    b.sm.host(qemu)
