"""L0's nested-guest life cycle (kvm/nested.py) under racing L1 vCPUs: get / put / remove /
release with the refcount, H_SET_PARTITION_TABLE, and H_TLB_INVALIDATE's LPID scopes. The
candidate races C1 (idr_alloc outside mmu_lock) and C2 (the all-LPID flush holding no
reference) are found with their quirk on, and the fixed model is clean on the same hunts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import emu
from emu.hw.memory import FramePool
from emu.hw.radix import Pate, TableMemory, encode_ptcr, write_pate
from emu.kvm.hvcall import H_PARAMETER, H_SUCCESS
from emu.kvm.nested import (
    NESTED_QUIRKS,
    L1Host,
    LpidPool,
    kvmhv_emulate_tlbie_all_lpid,
    kvmhv_emulate_tlbie_lpid,
    kvmhv_get_nested,
    kvmhv_put_nested,
    kvmhv_set_partition_table,
    nested_lifetime,
)

L1_MEM = 1 << 24
"""L1's memory: 16 MiB of guest real addresses, all in one visible memslot."""
PTCR = encode_ptcr(0x10000, 4096)  # 256 entries


def l1_host(m, quirks=()):
    frames = FramePool("l1")
    l1mem = TableMemory(frames)
    kvm = SimpleNamespace(m=m, lpid=1, srcu=m.srcu("kvm->srcu"), mmu_lock=m.spinlock("mmu_lock"))
    l0_ptbl: dict[int, tuple[int, int]] = {}
    l1 = L1Host(kvm, LpidPool(4096, reserved=(0, 1)), TableMemory(FramePool("l0")),
                read_guest=lambda a: l1mem.read(a) if 0 <= a < L1_MEM else None,
                write_guest=lambda a, v: 0 <= a < L1_MEM and (l1mem.write(a, v) or True),
                flush_lpid=lambda lpid: None,
                set_ptbl_entry=lambda lpid, dw0, dw1: l0_ptbl.__setitem__(lpid, (dw0, dw1)),
                quirks=quirks)
    return l1, l1mem


def build(m):
    """Two L1 vCPUs enter nested lpid 3 (get, put), one flushes every LPID (IS=3, RIC=0),
    one clears lpid 3's PATE and flushes it with RIC=2, which removes the guest."""
    l1, l1mem = l1_host(m, m.quirks)
    m.invariant("nested lifetime", lambda: nested_lifetime(l1))
    root = l1mem.alloc_table()

    async def boot():
        write_pate(l1mem, PTCR, 3, Pate.radix(root, 0))
        assert await kvmhv_set_partition_table(l1, PTCR) == H_SUCCESS

    booted = m.completion("L1 booted")

    async def enter(name):
        await booted.wait_for_completion()
        gp = await kvmhv_get_nested(l1, 3, True)
        if gp is None:  # C1's spurious H_PARAMETER, or lost to a removal: retry later
            return
        await m.point(f"{name} runs L2 lpid 3")
        await kvmhv_put_nested(gp)

    async def vcpu0():
        await boot()
        booted.complete_all()
        await enter("vcpu0")

    async def flush_all():
        await booted.wait_for_completion()
        await kvmhv_emulate_tlbie_all_lpid(l1, 0)

    async def remove():
        await booted.wait_for_completion()
        gp = await kvmhv_get_nested(l1, 3, False)
        if gp is None:
            return
        write_pate(l1mem, PTCR, 3, Pate(0, 0))  # L1 tears its L2 down...
        await kvmhv_emulate_tlbie_lpid(gp, 2)  # ...and says so with RIC=2
        await kvmhv_put_nested(gp)

    m.spawn("l1.vcpu0", vcpu0)
    m.spawn("l1.vcpu1", enter, "vcpu1")
    m.spawn("l1.vcpu2", flush_all)
    m.spawn("l1.vcpu3", remove)


@emu.scenario(name="nested-lifecycle-test", quirks=NESTED_QUIRKS)
def lifecycle(m: emu.Machine) -> None:
    build(m)


@pytest.mark.parametrize(("quirk", "seed", "kind", "text"), [
    ("idr-alloc-unlocked", 1, "idr", "not serialised"),
    ("tlbie-all-lpid-no-ref", 7, "use-after-free", "freed by kvmhv_release_nested"),
])
def test_candidate_race_found_with_its_quirk(quirk, seed, kind, text):
    h = emu.hunt(lifecycle, schedules=2000, seed=0, quirks=(quirk,))
    assert h.found is not None, f"{quirk} not found in 2000 schedules"
    v = h.found.violation
    assert (h.found.seed, v.kind) == (seed, kind) and text in v.message, v.describe()


def test_fixed_model_is_clean():
    for strategy in ({}, {"strategy": "pct", "depth": 3}):
        h = emu.hunt(lifecycle, schedules=1000, seed=0, **strategy)
        assert h.ok, h.found.violation.describe()


def test_set_partition_table_checks_size_and_base():
    got = []

    @emu.scenario(name="ptcr-test")
    def ptcr(m: emu.Machine) -> None:
        l1, _ = l1_host(m)

        async def vcpu():
            got.append(await kvmhv_set_partition_table(l1, encode_ptcr(L1_MEM, 4096)))
            got.append(await kvmhv_set_partition_table(l1, encode_ptcr(0, 1 << 17)))
            got.append(await kvmhv_set_partition_table(l1, encode_ptcr(0, 1 << 16)))
            got.append(l1.l1_ptcr)

        m.spawn("l1.vcpu0", vcpu)

    assert emu.run(ptcr).ok
    # beyond L1's memory; 8192 entries > 2**12; 4096 entries: accepted and stored
    assert got == [H_PARAMETER, H_PARAMETER, H_SUCCESS, encode_ptcr(0, 1 << 16)]


def test_get_nested_refuses_an_lpid_beyond_the_table():
    got = []

    @emu.scenario(name="lpid-bound-test")
    def bound(m: emu.Machine) -> None:
        l1, _ = l1_host(m)

        async def vcpu():
            await kvmhv_set_partition_table(l1, PTCR)
            got.append(await kvmhv_get_nested(l1, 256, True))  # 256 entries: 0..255
            gp = await kvmhv_get_nested(l1, 255, True)
            got.append((gp.refcnt, gp.shadow_lpid, l1.lpids.used == {0, 1, 2}))

        m.spawn("l1.vcpu0", vcpu)

    assert emu.run(bound).ok
    assert got == [None, (2, 2, True)]


def test_nested_lifetime_fires_on_a_double_put():
    @emu.scenario(name="double-put-test")
    def double_put(m: emu.Machine) -> None:
        l1, l1mem = l1_host(m)
        m.invariant("nested lifetime", lambda: nested_lifetime(l1))
        write_pate(l1mem, PTCR, 3, Pate.radix(l1mem.alloc_table(), 0))

        async def vcpu():
            await kvmhv_set_partition_table(l1, PTCR)
            gp = await kvmhv_get_nested(l1, 3, True)
            await kvmhv_put_nested(gp)
            await kvmhv_put_nested(gp)  # one put too many: the IDR's reference is gone
            await m.point("after")

        m.spawn("l1.vcpu0", vcpu)

    v = emu.run(double_put).violation
    assert v is not None and "nested lifetime" in v.message, v
    assert "freed while the IDR still points at it" in v.message, v.message

