"""H_TLB_INVALIDATE from L1 (book3s_hv_nested.c, v6.x: ``kvmhv_do_nested_tlbie``,
``kvmhv_emulate_priv_tlbie``, ``kvmhv_emulate_tlbie_tlb_addr``): the partition-scoped tlbie
L1 would execute if it were the hypervisor, emulated on the shadow tables.

| operands (tlbie_operands.py)       | what L0 does                                 | returns     |
|------------------------------------|----------------------------------------------|-------------|
| R=0, PRS=1, RIC=3, IS=1, IS=0 with | nothing                                      | H_PARAMETER |
| RIC 1 or 2, IS=0 with a bad AP     |                                              |             |
| IS=0: one L1 page at EPN, its size | no such guest: nothing; else under tlb_lock, | H_SUCCESS   |
| from AP                            | from the page's start: remove the shadow PTE |             |
|                                    | there, advance by its size (64K if none),    |             |
|                                    | until the page's 64K pages are counted off   |             |
| IS=2: one lpid                     | kvmhv_emulate_tlbie_lpid (emu/kvm/nested.py) | H_SUCCESS   |
| IS=3: every lpid                   | kvmhv_emulate_tlbie_all_lpid                 | H_SUCCESS   |

For a 4K AP the kernel's page count ``1UL << (shift - PAGE_SHIFT)`` shifts by a negative
amount: 0 on ppc64, so the loop runs once.
"""

from __future__ import annotations

from ..hw.memory import PAGE_SHIFT
from .hvcall import H_PARAMETER, H_SUCCESS
from .nested import (
    L1Host,
    kvmhv_emulate_tlbie_all_lpid,
    kvmhv_emulate_tlbie_lpid,
    kvmhv_get_nested,
    kvmhv_put_nested,
)
from .nested_mmu import kvmhv_invalidate_shadow_pte
from .radix_mmu import EINVAL
from .tlbie_operands import IS_ADDR, IS_ALL, IS_LPID, ap_to_shift, check_tlbie, decode_tlbie


async def kvmhv_emulate_tlbie_tlb_addr(l1: L1Host, lpid: int, ap: int, epn: int) -> int:
    """IS=0: every shadow PTE of L1 lpid ``lpid`` within the L1 page at ``epn << 12``
    (a single L2->L1 PTE may be backed by several shadow PTEs). 0 or -EINVAL (bad AP)."""
    shift = ap_to_shift(ap)
    if shift is None:
        return EINVAL
    addr = (epn << 12) & ~((1 << shift) - 1)
    npages = 1 << (shift - PAGE_SHIFT) if shift >= PAGE_SHIFT else 0
    gp = await kvmhv_get_nested(l1, lpid, False)
    if gp is None:  # no such guest: nothing to do
        return 0
    await gp.tlb_lock.lock()
    while True:  # do { ... } while (npages > 0)
        _, shadow_shift = await kvmhv_invalidate_shadow_pte(gp, addr)
        npages -= 1 << (shadow_shift - PAGE_SHIFT)
        addr += 1 << shadow_shift
        if npages <= 0:
            break
    gp.tlb_lock.unlock()
    await kvmhv_put_nested(gp)
    return 0


async def kvmhv_emulate_priv_tlbie(l1: L1Host, instr: int, rsval: int, rbval: int) -> int:
    """Decode and check the operands, then invalidate by scope: 0 or -EINVAL."""
    ops = decode_tlbie(instr, rsval, rbval)
    if check_tlbie(ops) is not None:  # (its AP test is the one the IS=0 path would make)
        return EINVAL
    if ops.is_ == IS_ADDR:
        return await kvmhv_emulate_tlbie_tlb_addr(l1, ops.lpid, ops.ap, ops.epn)
    if ops.is_ == IS_LPID:
        gp = await kvmhv_get_nested(l1, ops.lpid, False)
        if gp is not None:
            await kvmhv_emulate_tlbie_lpid(gp, ops.ric)
            await kvmhv_put_nested(gp)
    elif ops.is_ == IS_ALL:
        await kvmhv_emulate_tlbie_all_lpid(l1, ops.ric)
    return 0


async def kvmhv_do_nested_tlbie(l1: L1Host, r4: int, r5: int, r6: int) -> int:
    """The H_TLB_INVALIDATE hcall: r4 the tlbie instruction image, r5 RS (the lpid), r6 RB
    (IS, AP, EPN). H_SUCCESS or H_PARAMETER."""
    return H_PARAMETER if await kvmhv_emulate_priv_tlbie(l1, r4, r5, r6) else H_SUCCESS
