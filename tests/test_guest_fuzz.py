"""The guest API under fuzz: any call, any integer arguments, one or two vCPUs at once.

The design promises that a guest program can issue any hcall or ucall by name or number
with raw integer arguments and gets the raw return code: a bad argument gets the kernel's
(or the Ultravisor's) error code, never a Python exception. Each schedule here runs a
seeded list of a few hundred calls per vCPU (every H_SVM_* hcall raw and through the UV,
every ucall a guest may make and every one it may not, unknown call numbers, the
esm/share/unshare helpers, loads and stores) with arbitrary 64-bit, negative and
out-of-range arguments and any number of them, and checks that

- nothing escapes as a Python exception (the schedule would report a violation of kind
  ``exception``), and the model stays clean: no violation of any kind;
- every return code is one the kernel or the Ultravisor returns (``KNOWN_CODES``).

Fixed seeds: every run replays the same schedules.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

import emu
from emu.kvm import hvcall
from emu.kvm.hvcall import (
    H_AUTHORITY,
    H_BAD_MODE,
    H_BUSY,
    H_FUNCTION,
    H_HARDWARE,
    H_IN_USE,
    H_INTERRUPT,
    H_NO_MEM,
    H_NOT_AVAILABLE,
    H_NOT_FOUND,
    H_P2,
    H_P3,
    H_P4,
    H_PAGE_IN_SHARED,
    H_PARAMETER,
    H_PERMISSION,
    H_PRIVILEGE,
    H_STATE,
    H_SUCCESS,
    H_TOO_HARD,
    H_UNSUPPORTED,
    PAGE_SHIFT,
    PAGE_SIZE,
)
from emu.kvm.uvmem import QUIRKS, vm_state
from emu.machines.svm import SvmMachine

KNOWN_CODES = frozenset({
    H_SUCCESS, H_BUSY, H_NOT_AVAILABLE, H_HARDWARE, H_FUNCTION, H_PRIVILEGE, H_PARAMETER,
    H_BAD_MODE, H_NOT_FOUND, H_NO_MEM, H_AUTHORITY, H_PERMISSION, H_P2, H_P3, H_P4,
    H_UNSUPPORTED, H_INTERRUPT, H_STATE, H_IN_USE, H_TOO_HARD})
"""The codes of asm/hvcall.h the model knows (``hvcall.RETURN_NAMES``); every U_* code
equals its H_* namesake (U_PARAMETER, U_P2, U_STATE, U_BUSY, U_PERMISSION, U_FUNCTION).
No negative errno reaches a guest: the model's errnos (-EBUSY and -EINVAL from
KVM_PPC_SVM_OFF, -EFAULT from a radix fault, -1 or -EBUSY from migrate_vma_setup) go to
QEMU or stay inside the HV, which turns them into H_PARAMETER or H_STATE."""

H_CALLS = sorted(v for k, v in vars(hvcall).items() if k.startswith("H_SVM_"))
U_CALLS = sorted(v for k, v in vars(hvcall).items() if k.startswith("UV_"))
SLOTS = ((0, 16), (32, 16))
"""Two memslots with a hole between them (GFNs 16 to 31 are no memory of the VM)."""
NGFNS = 48
MASK64 = (1 << 64) - 1
EDGES = (0, 1, MASK64, 1 << 63, (1 << 63) - 1, -1, -(1 << 63), 1 << 64, (1 << 64) + 1,
         (1 << 64) + (5 << PAGE_SHIFT), -(1 << 64), 1 << 100, -(1 << 100), PAGE_SHIFT,
         H_PAGE_IN_SHARED, 12, 21, 24, PAGE_SIZE, NGFNS, NGFNS << PAGE_SHIFT)


def word(rng: random.Random) -> int:
    """An argument: mostly plausible values near the VM's memory, often extreme ones."""
    r = rng.random()
    if r < 0.25:  # a GPA in or near the VM's memory, sometimes unaligned
        return (rng.randrange(-2, NGFNS + 4) << PAGE_SHIFT) + rng.choice((0, 0, 0, 1, 0x8000))
    if r < 0.40:  # a GFN, a count, a page shift
        return rng.randrange(0, NGFNS + 4)
    if r < 0.60:
        return rng.getrandbits(64)
    if r < 0.75:
        return rng.choice(EDGES)
    if r < 0.85:  # far beyond a register, either sign
        return rng.choice((1, -1)) * rng.getrandbits(rng.choice((65, 100, 200)))
    if r < 0.92:
        return -rng.randrange(1, 1 << 20)
    return (rng.randrange(NGFNS) << PAGE_SHIFT) + rng.choice((1, -1, 2, 1 << 40)) * (1 << 64)


def words(rng: random.Random, lo: int = 0, hi: int = 6) -> list[int]:
    """A few arguments, now and then a dozen (the callee ignores the extra ones)."""
    return [word(rng) for _ in range(rng.randint(lo, 12 if rng.random() < 0.05 else hi))]


def count(rng: random.Random) -> int:
    return rng.choice((0, 1, 1, 2, 3, 16, 40)) if rng.random() < 0.6 else word(rng)


def gpa(rng: random.Random) -> int:
    return rng.randrange(NGFNS + 2) << PAGE_SHIFT if rng.random() < 0.7 else word(rng)


def svm_args(rng: random.Random, nr: int) -> list[int]:
    """Plausible arguments for an H_SVM_* call half of the time, arbitrary ones otherwise."""
    if rng.random() < 0.5:
        return words(rng)
    if nr in (hvcall.H_SVM_PAGE_IN, hvcall.H_SVM_PAGE_OUT):
        flags = rng.choice((0, 0, H_PAGE_IN_SHARED, 2, word(rng)))
        return [gpa(rng), flags, rng.choice((PAGE_SHIFT, PAGE_SHIFT, PAGE_SHIFT, 12, 21))]
    return []


def ucall_args(rng: random.Random, nr: int) -> list[int]:
    if rng.random() < 0.4:
        return words(rng)
    if nr == hvcall.UV_ESM:
        return [rng.randrange(NGFNS), count(rng), rng.randrange(NGFNS), count(rng)][
            :rng.randint(0, 4)]
    if nr in (hvcall.UV_SHARE_PAGE, hvcall.UV_UNSHARE_PAGE):
        return [rng.randrange(NGFNS + 2), count(rng)]
    if nr in (hvcall.UV_PAGE_IN, hvcall.UV_PAGE_OUT):
        return [1, word(rng), gpa(rng), 0, PAGE_SHIFT]
    if nr == hvcall.UV_REGISTER_MEM_SLOT:
        return [1, gpa(rng), count(rng) << PAGE_SHIFT, 0, rng.randrange(4)]
    return [1, *words(rng, 0, 3)]


def number(rng: random.Random, known: list[int]) -> int:
    return rng.choice(known) if rng.random() < 0.8 else word(rng)


def make_call(rng: random.Random) -> tuple[str, int | None, list[int]]:
    """One guest operation: (kind, call number or None, arguments)."""
    kind = rng.choices(("hcall", "uv_hcall", "ucall", "esm", "share", "unshare", "write",
                        "read"), (10, 16, 14, 3, 6, 5, 8, 8))[0]
    if kind == "hcall":
        nr = number(rng, H_CALLS)
        return kind, nr, svm_args(rng, nr)
    if kind == "uv_hcall":
        nr = number(rng, H_CALLS)
        return kind, nr, svm_args(rng, nr)
    if kind == "ucall":
        nr = number(rng, U_CALLS)
        return kind, nr, ucall_args(rng, nr)
    if kind == "esm":
        return kind, None, [rng.randrange(NGFNS) if rng.random() < 0.6 else word(rng),
                            count(rng)]
    if kind in ("share", "unshare"):
        return kind, None, [rng.randrange(NGFNS + 2) if rng.random() < 0.7 else word(rng),
                            count(rng)]
    if kind == "write":
        return kind, None, [gpa(rng), word(rng)]
    return kind, None, [gpa(rng)]


async def issue(g, kind: str, nr: int | None, args: list[int]):
    if kind == "hcall":
        return await g.hcall(nr, *args)
    if kind == "uv_hcall":
        return await g.uv_hcall(nr, *args)
    if kind == "ucall":
        return await g.ucall(nr, *args)
    if kind in ("esm", "share", "unshare"):
        return await getattr(g, kind)(*args)
    if kind == "write":
        return await g.write(*args)
    return await g.read(*args)


def raw_abort(kind: str, nr: int | None) -> bool:
    return kind == "hcall" and nr & MASK64 == hvcall.H_SVM_INIT_ABORT


def via_uv(kind: str) -> bool:
    return kind in ("uv_hcall", "ucall", "esm", "share", "unshare")


def fuzz_schedule(seed: int, vcpus: int, calls: int, catch: bool = False,
                  abort_alone: bool = True, secure_pages: int = 64,
                  design: str = "gfn-states"):
    """One schedule: ``vcpus`` vCPUs of one VM, each issuing ``calls`` seeded calls (the first
    vCPU sometimes boots the SVM first). Returns the run's result and what each call
    returned: (vCPU, kind, number, arguments, return code). ``catch``: record an exception
    as the call's result instead of letting it end the schedule (to survey them all).

    ``abort_alone``: a guest's own H_SVM_INIT_ABORT waits for the Ultravisor calls of the
    other vCPU to return, and they for it (see ``test_raw_abort_races_the_ultravisor``)."""
    rng = random.Random(f"guest-fuzz-{seed}-{vcpus}")
    boot = rng.random() < 0.5
    programs = [[make_call(rng) for _ in range(calls)] for _ in range(vcpus)]
    got: list[tuple] = []

    def build(m):
        sm = SvmMachine(m, design=design, quirks=m.quirks, secure_pages=secure_pages)
        kvm = sm.vm(1, SLOTS)
        alone = m.rwsem("test: raw H_SVM_INIT_ABORT alone") if abort_alone else None
        for i, program in enumerate(programs):
            async def guest(g, i=i, program=program):
                boot_calls = [("write", None, [gfn << PAGE_SHIFT, 0x100 + gfn])
                              for gfn in range(4)] + [("esm", None, [0, 4])]
                for kind, nr, args in (boot_calls if boot and i == 0 else []) + program:
                    exclusive, shared = raw_abort(kind, nr), via_uv(kind)
                    if alone and exclusive:
                        await alone.down_write()
                    elif alone and shared:
                        await alone.down_read()
                    try:
                        rc = await issue(g, kind, nr, args)
                    except Exception as exc:
                        if not catch:
                            raise
                        rc = exc
                    finally:
                        if alone and exclusive:
                            alone.up_write()
                        elif alone and shared:
                            alone.up_read()
                    got.append((i, kind, nr, args, rc))

            sm.vcpu(kvm, guest)

    sc = emu.scenario(name=f"guest-fuzz-{vcpus}", quirks=QUIRKS, max_steps=1_000_000)(build)
    return emu.run(sc, seed=seed), got


# --------------------------------------------------------------------------- the fuzz
RUNS = [(1, "gfn-states", 50), (2, "gfn-states", 50), (2, "two-state", 20)]
"""(vCPUs, design, schedules with seeds 0, 1, ...)."""
CALLS = 300
"""Calls per vCPU and schedule: 57,000 in all (about 7 s)."""
DEVICE_PAGES = 40
"""More than the VM's 32 GFNs, few enough that device pages are recycled and the high
ones used."""


@pytest.mark.parametrize("vcpus, design, schedules", RUNS)
def test_any_guest_call_gets_a_kernel_code_never_an_exception(vcpus, design, schedules):
    seen: Counter = Counter()
    codes: Counter = Counter()
    cases = out_of_range = 0
    for seed in range(schedules):
        result, got = fuzz_schedule(seed, vcpus, CALLS, secure_pages=DEVICE_PAGES,
                                    design=design)
        assert result.ok, f"seed {seed}, {vcpus} vCPUs, {design}: " + \
            result.violation.describe()
        assert len(got) >= vcpus * CALLS
        for _, kind, nr, args, rc in got:
            if kind == "read":
                assert rc is None or 0 <= rc <= MASK64, (seed, kind, args, rc)
            else:
                assert type(rc) is int and rc in KNOWN_CODES, (seed, kind, nr, args, rc)
                codes[rc] += 1
            seen[kind, nr & MASK64 if nr is not None else None] += 1
            out_of_range += any(not 0 <= a <= MASK64 for a in args)
        cases += len(got)
    assert cases >= vcpus * CALLS * schedules
    # every call was made, raw and through the UV, and so were unknown numbers
    for nr in H_CALLS:
        assert seen["hcall", nr] and seen["uv_hcall", nr], hvcall.NAMES[nr]
    for nr in U_CALLS:
        assert seen["ucall", nr], hvcall.NAMES[nr]
    for kind, known in (("hcall", H_CALLS), ("uv_hcall", H_CALLS), ("ucall", U_CALLS)):
        assert sum(n for (k, nr), n in seen.items() if k == kind and nr not in known) > 20
    for kind in ("esm", "share", "unshare", "write", "read"):
        assert seen[kind, None] > 10 * schedules, kind
    assert out_of_range > 40 * schedules
    # and the error paths were reached, not only the front door (U_BUSY: only a second
    # vCPU can ask for a life-cycle operation while one is in progress)
    assert {H_SUCCESS, H_FUNCTION, H_PARAMETER, H_P2, H_P3, H_UNSUPPORTED, H_STATE,
            H_PERMISSION, *([H_BUSY] if vcpus > 1 else [])} <= set(codes), sorted(codes)


# --------------------------------------------------------------------------- the semantics
def run_guest(program, vcpus=1):
    """Run ``program(g, kvm)`` on each of ``vcpus`` vCPUs of a VM with SLOTS."""

    def build(m):
        sm = SvmMachine(m, quirks=m.quirks, secure_pages=96)
        kvm = sm.vm(1, SLOTS)
        for _ in range(vcpus):
            sm.vcpu(kvm, lambda g: program(g, kvm))

    result = emu.run(emu.scenario(name="guest-api", quirks=QUIRKS)(build))
    assert result.ok, result.violation.describe()


def test_arguments_are_64_bit_registers():
    got = {}

    async def program(g, kvm):
        assert await g.write((3 << PAGE_SHIFT) + (1 << 64), -1) == H_SUCCESS
        got["read"] = await g.read(3 << PAGE_SHIFT)
        got["abort"] = await g.hcall(hvcall.H_SVM_INIT_ABORT - (1 << 64))  # H_SVM_INIT_ABORT
        got["esm"] = await g.esm(0 - (1 << 64), 4 + (1 << 64))  # UV_ESM(0, 4)
        got["state"] = vm_state(kvm)
        got["share"] = await g.share(5 + (7 << 64), 1 - (1 << 64))  # UV_SHARE_PAGE(5, 1)

    run_guest(program)
    assert got == {"read": MASK64, "abort": H_UNSUPPORTED, "esm": H_SUCCESS,
                   "state": "Secure", "share": H_SUCCESS}


@pytest.mark.parametrize("first, npages, shares", [
    (0, MASK64, (0, 0)),  # 2**64 - 1 pages: checked against the slots, never listed
    (-1, 2, (0, 0)),  # GFN 2**64 - 1 and then past the end of the GFN space
    (MASK64 << 40, 1 << 62, (0, 0)),
    (10, 10, (0, 0)),  # runs into the hole between the slots
    (0, 4, (0, MASK64)),  # fine pages, but shares the whole GFN space
    (0, 4, (47, 2)),  # shares one page past the last slot
])
def test_esm_with_a_blob_outside_the_vm_aborts_with_u_parameter(first, npages, shares):
    got = {}

    async def program(g, kvm):
        for gfn in range(4):
            await g.write(gfn << PAGE_SHIFT, 0x100 + gfn)
        got["esm"] = await g.ucall("UV_ESM", first, npages, *shares)
        got["state"] = vm_state(kvm)
        got["read"] = [await g.read(gfn << PAGE_SHIFT) for gfn in range(4)]
        got["again"] = await g.ucall("UV_ESM", 0, 4, 32, 1)  # and a good blob still works

    run_guest(program)
    assert got == {"esm": H_PARAMETER, "state": "Normal", "read": [0x100, 0x101, 0x102, 0x103],
                   "again": H_SUCCESS}


def test_ucall_codes():
    got = {}

    async def program(g, kvm):
        got["share before ESM"] = await g.share(0)
        assert await g.esm(0, 4) == H_SUCCESS
        for name, args in [("UV_SHARE_PAGE", (5, 0)), ("UV_SHARE_PAGE", (5, MASK64)),
                           ("UV_SHARE_PAGE", (20, 1)), ("UV_SHARE_PAGE", (15, 2)),
                           ("UV_UNSHARE_PAGE", (5, 0)), ("UV_UNSHARE_PAGE", (6, 1)),
                           ("UV_PAGE_IN", (1, 0, 0, 0, PAGE_SHIFT)),
                           ("UV_REGISTER_MEM_SLOT", (1, 0, PAGE_SIZE, 0, 9)),
                           ("UV_SVM_TERMINATE", (1,)), ("UV_RETURN", ())]:
            got[name, args] = await g.ucall(name, *args)
        got["unknown"] = await g.ucall(0xF1FC)
        got["ESM again"] = await g.esm(0, 4)

    run_guest(program)
    assert got == {
        "share before ESM": H_PARAMETER,  # the UV does not know the VM
        ("UV_SHARE_PAGE", (5, 0)): H_P2, ("UV_SHARE_PAGE", (5, MASK64)): H_P2,
        ("UV_SHARE_PAGE", (20, 1)): H_PARAMETER,  # no memory of the VM
        ("UV_SHARE_PAGE", (15, 2)): H_P2,  # runs into the hole
        ("UV_UNSHARE_PAGE", (5, 0)): H_P2,
        ("UV_UNSHARE_PAGE", (6, 1)): H_PARAMETER,  # not shared
        ("UV_PAGE_IN", (1, 0, 0, 0, PAGE_SHIFT)): H_PERMISSION,  # the HV's ucalls
        ("UV_REGISTER_MEM_SLOT", (1, 0, PAGE_SIZE, 0, 9)): H_PERMISSION,
        ("UV_SVM_TERMINATE", (1,)): H_PERMISSION, ("UV_RETURN", ()): H_PERMISSION,
        "unknown": H_FUNCTION, "ESM again": H_STATE}


def test_a_name_that_names_no_call_is_a_programming_error():
    got = []

    async def program(g, kvm):
        for call in ("H_SVM_PAGE_INN", "H_SUCCESS", "H_PAGE_IN_SHARED", "NAMES", "PAGE_SHIFT"):
            for method in (g.hcall, g.uv_hcall, g.ucall):
                with pytest.raises(ValueError, match="no hcall or ucall named"):
                    await method(call)
                got.append(call)

    run_guest(program)
    assert len(got) == 15


def test_raw_abort_races_the_ultravisor():
    """A candidate race of the modelled kernel, found by this fuzz: H_SVM_INIT_ABORT is
    accepted without MSR_S since e3326ae3d59e (B4), so a guest vCPU can issue it itself.
    If it does while the UV is carrying out UV_ESM on another vCPU, the abort sets
    ``secure_guest`` to 0 under the UV's hcalls in flight, which then return with rfid,
    not UV_RETURN (and the UV goes on paging in for a VM the HV has torn down). It takes
    a second vCPU running while the VM is Transient, which the platform does not allow
    ("the VM never runs while Transient") but the model, like a malicious guest that
    started its secondaries before UV_ESM, does. The fuzz above therefore runs a guest's
    own H_SVM_INIT_ABORT alone (``abort_alone``)."""

    def build(m):
        sm = SvmMachine(m, quirks=m.quirks, secure_pages=64)
        kvm = sm.vm(1, ((0, 16),))

        async def boot(g):
            for gfn in range(8):
                await g.write(gfn << PAGE_SHIFT, gfn)
            await g.esm(0, 8)

        async def aborter(g):
            while vm_state(kvm) != "Transient":
                await m.point("wait for UV_ESM")
            await g.hcall("H_SVM_INIT_ABORT")

        sm.vcpu(kvm, boot)
        sm.vcpu(kvm, aborter)

    found = emu.hunt(emu.scenario(name="raw-abort-vs-esm", quirks=QUIRKS)(build),
                     schedules=20, seed=1).found
    assert found is not None and found.violation.kind == "return-path"
    assert "returns with rfid (secure_guest is 0)" in found.violation.message
