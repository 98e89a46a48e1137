"""The L1 nested hypervisor: a guest of L0 that runs L2 guests of its own.

What it keeps lives in its own memory, where L0 reads it: the partition table (announced
with H_SET_PARTITION_TABLE), each L2's partition-scoped table (L2 real -> L1 real), and for
each L2 vCPU an ``hv_guest_state`` and a ``pt_regs`` in L1's byte order, which it hands to
H_ENTER_NESTED. It does what KVM-HV running as L1 does:

| L1 action              | its memory                               | then                        |
|------------------------|------------------------------------------|-----------------------------|
| ``boot``               | allocate the partition table             | H_SET_PARTITION_TABLE       |
| ``create_guest(lpid)`` | a root table; the PATE (HR, root, RTS)   | (L0 learns at first entry)  |
| ``run(vcpu)``          | store the state and regs                 | H_ENTER_NESTED, then read   |
|                        |                                          | them back; an HDSI is L1's  |
|                        |                                          | own page fault: map, loop   |
| page fault (HDSI)      | insert the PTE (R, and C for a store), or | re-enter                    |
|                        | set R/C in the existing one              |                             |
| ``unmap(lpid, gpa)``   | clear the PTE                            | H_TLB_INVALIDATE IS=0       |
| ``destroy(lpid)``      | clear the PATE                           | H_TLB_INVALIDATE RIC=2 IS=2 |

L2 real page p of nested guest n is backed by L1 page ``data_base + n * stride + p`` (a
fixed layout, so runs are easy to read); L1's tables and register blocks come from another
range. L1's own bookkeeping (its mmu_lock and the like) is not modelled: each table change
is one step, and what races is what L0 sees of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from ..hw.memory import PAGE_SHIFT, PAGE_SIZE
from ..hw.radix import (
    PAGE_ACCESSED,
    PAGE_DIRTY,
    PAGE_RWX,
    PAGE_WRITE,
    Pate,
    RadixTree,
    TableMemory,
    encode_ptcr,
    make_pte,
    write_pate,
)
from ..kvm.hv_guest_state import (
    PT_NIP,
    PT_REGS_WORDS,
    HvGuestState,
    decode,
    decode_pt_regs,
    encode,
    encode_pt_regs,
    l1_version,
)
from ..kvm.hvcall import H_ENTER_NESTED, H_SET_PARTITION_TABLE, H_TLB_INVALIDATE, NAMES
from ..kvm.nested_invariants import L1Edits
from ..kvm.radix_mmu import BOOK3S_INTERRUPT_H_DATA_STORAGE, DSISR_ISSTORE, DSISR_SET_RC
from ..kvm.tlbie_operands import AP_SHIFTS, addr_to_epn, encode_tlbie
from .vcpu import Guest, call_number, registers

if TYPE_CHECKING:
    from .guest_code import GuestCode, Instruction
    from .returncodes import AcceptSpec
    from .vcpu import VCpu

PTBL_ENTRIES = 256
"""L1's partition table: 256 entries (4 KiB), as KVM-HV's L1 sizes it for small configs."""
_HV_OFFSET, _REGS_OFFSET = 0, 0x400
_SHIFT_AP = {shift: ap for ap, shift in AP_SHIFTS.items()}


@attrs.define(eq=False)
class L2Vcpu:
    """L1's ``struct kvm_vcpu`` of an L2 vCPU: where its register blocks live in L1 memory,
    and its registers between runs."""

    lpid: int
    token: int
    block: int
    """L1 real address of the page holding its hv_guest_state and pt_regs."""
    regs: list[int]
    hv: HvGuestState

    @property
    def hv_addr(self) -> int:
        return self.block + _HV_OFFSET

    @property
    def regs_addr(self) -> int:
        return self.block + _REGS_OFFSET


@attrs.define(eq=False)
class L2Guest:
    lpid: int
    tree: RadixTree
    vcpus: dict[int, L2Vcpu] = attrs.Factory(dict)


@attrs.define(eq=False)
class L1Kernel:
    """What the L1 keeps, shared by its vCPUs: its tables in its memory, its L2 guests."""

    tables: TableMemory
    code: GuestCode
    data_base: int
    """The first L1 GFN backing L2 memory."""
    stride: int
    """L2 pages per nested guest."""
    big_endian: bool = False
    edits: L1Edits = attrs.Factory(L1Edits)
    """The L2->L1 edits whose H_TLB_INVALIDATE has not returned (shadow composition waits
    for them)."""
    ptcr: int = 0
    guests: dict[int, L2Guest] = attrs.Factory(dict)

    def backing(self, lpid: int, gpa: int) -> int:
        """The L1 real address backing L2 real address ``gpa`` of nested guest ``lpid``."""
        page = gpa >> PAGE_SHIFT
        if page >= self.stride:
            raise ValueError(f"L2 address {gpa:#x} beyond the {self.stride} pages of guest "
                             f"{lpid}")
        return (self.data_base + lpid * self.stride + page) << PAGE_SHIFT



class L1Hypervisor(Guest):
    """The handle an L1 vCPU's program gets: a guest of L0 acting as a hypervisor."""

    def __init__(self, vcpu: VCpu, kernel: L1Kernel) -> None:
        super().__init__(vcpu)
        self.kernel = kernel

    # ------------------------------------------------------------------ set-up
    async def boot(self) -> int:
        """Allocate the partition table and tell L0 where it is (once per L1)."""
        k = self.kernel
        if not k.ptcr:
            k.ptcr = encode_ptcr(k.tables.alloc_table(), PTBL_ENTRIES * 16)
        return await self.hcall(H_SET_PARTITION_TABLE, k.ptcr)

    def create_guest(self, lpid: int) -> L2Guest:
        """A nested guest: a root table and its partition-table entry."""
        k = self.kernel
        guest = k.guests.get(lpid)
        if guest is None:
            guest = k.guests[lpid] = L2Guest(lpid, RadixTree(k.tables))
            write_pate(k.tables, k.ptcr, lpid, Pate.radix(guest.tree.root, 0))
        return guest

    def l2_vcpu(self, lpid: int, token: int, program: list[Instruction], *,
                block: int | None = None) -> L2Vcpu:
        """An L2 vCPU with vcpu_token ``token`` about to run ``program``; its register
        blocks on the L1 page at real address ``block`` (default: a new page of L1's)."""
        guest = self.kernel.guests[lpid]
        regs = [0] * PT_REGS_WORDS
        regs[PT_NIP] = self.kernel.code.load(program)
        if block is None:
            block = self.kernel.tables.alloc_table()
        v = guest.vcpus[token] = L2Vcpu(lpid, token, block, regs,
                                        HvGuestState(l1_version(self._kvm.release), lpid,
                                                     token))
        return v

    # ------------------------------------------------------------------ running L2
    async def enter(self, v: L2Vcpu, *, accept: AcceptSpec | None = None) -> int:
        """One H_ENTER_NESTED: store the blocks, call, read them back. The return code."""
        k = self.kernel
        k.tables.write_bytes(v.hv_addr, encode(v.hv, big_endian=k.big_endian,
                                               version=l1_version(self._kvm.release)))
        k.tables.write_bytes(v.regs_addr, encode_pt_regs(tuple(v.regs), big_endian=k.big_endian))
        rc = await self.hcall(H_ENTER_NESTED, v.hv_addr, v.regs_addr, accept=accept)
        v.hv = decode(k.tables.read_bytes(v.hv_addr, 248), big_endian=k.big_endian)
        v.regs = list(decode_pt_regs(k.tables.read_bytes(v.regs_addr, 8 * PT_REGS_WORDS),
                                     big_endian=k.big_endian))
        return rc

    async def run(self, v: L2Vcpu, *, accept: AcceptSpec | None = None) -> int:
        """Run ``v`` until it exits for a reason other than a page fault L1 resolves: the
        last H_ENTER_NESTED return code (the L2 trap number, or an hcall error; an HDSI if
        L1 destroyed the guest meanwhile)."""
        while True:
            rc = await self.enter(v, accept=accept)
            if rc != BOOK3S_INTERRUPT_H_DATA_STORAGE or v.lpid not in self.kernel.guests:
                return rc  # (a fault in a guest L1 has torn down is not L1's to resolve)
            await self._page_fault(v.lpid, v.hv.asdr, v.hv.hdsisr)

    async def _page_fault(self, lpid: int, gpa: int, dsisr: int) -> None:
        """kvmppc_book3s_radix_page_fault in L1: set R/C if asked and the PTE is there,
        else map the page (R, and C for a store: L1 maps writable pages dirty)."""
        await self._vcpu.machine.m.point(f"L1 page fault lpid {lpid} gpa {gpa:#x}")
        tree = self.kernel.guests[lpid].tree
        store = bool(dsisr & DSISR_ISSTORE)
        leaf = tree.find(gpa)
        if leaf is not None and (dsisr & DSISR_SET_RC or not store or leaf.pte & PAGE_WRITE):
            tree.update(gpa, set_bits=PAGE_ACCESSED | (PAGE_DIRTY if store else 0))
            return
        page = gpa & ~(PAGE_SIZE - 1)
        flags = PAGE_RWX | PAGE_ACCESSED | (PAGE_DIRTY if store else 0)
        tree.insert(page, make_pte(self.kernel.backing(lpid, page), flags), PAGE_SHIFT)

    # ------------------------------------------------------------------ changing L2 memory
    async def unmap(self, lpid: int, gpa: int, *, accept: AcceptSpec | None = None) -> int:
        """Clear the PTE mapping L2 real address ``gpa``, then invalidate it in L0."""
        tree = self.kernel.guests[lpid].tree
        leaf = tree.find(gpa)
        if leaf is None:
            return 0
        edit = self.kernel.edits.begin(lpid, leaf.gpa, leaf.gpa + leaf.size)
        tree.unmap(gpa, gpa + 1)
        r4, r5, r6 = encode_tlbie(ric=0, lpid=lpid, is_=0, ap=_SHIFT_AP[leaf.shift],
                                  epn=addr_to_epn(leaf.gpa))
        rc = await self.hcall(H_TLB_INVALIDATE, r4, r5, r6, accept=accept)
        self.kernel.edits.end(edit)
        return rc

    async def destroy(self, lpid: int, *, accept: AcceptSpec | None = None) -> int:
        """kvmhv_release_nested in L1: clear the PATE, then RIC=2 on the LPID."""
        k = self.kernel
        edit = k.edits.begin(lpid)
        write_pate(k.tables, k.ptcr, lpid, Pate(0, 0))
        k.guests.pop(lpid, None)
        r4, r5, r6 = encode_tlbie(ric=2, lpid=lpid, is_=2)
        rc = await self.hcall(H_TLB_INVALIDATE, r4, r5, r6, accept=accept)
        k.edits.end(edit)
        return rc

    # ------------------------------------------------------------------ hcalls
    async def hcall(self, call: int | str, *args: int, accept: AcceptSpec | None = None
                    ) -> int:
        """An hcall from L1, served by L0 in this vCPU's thread (the nested hcalls sleep,
        take mutexes and run L2 on whatever pCPU the thread is on: they are kernel code of
        the vCPU task, not of one CPU). Its return code is checked like any other."""
        nr, regs = call_number(call), registers(args)
        rc = await self._machine.l1_hcall(self._vcpu, nr, regs)
        self._machine.codes.check(self._vcpu.name, NAMES.get(nr, hex(nr)), regs, rc, False,
                                  accept)
        return rc
