"""The nested POWER machine: L0 on bare metal running one L1 hypervisor (a radix guest with
nesting enabled) whose vCPUs run L2 guests through H_ENTER_NESTED.

Assembly: every pCPU of the topology (cores x threads, TLB groups as the kernel's
cputhreads.h defines them) with its TLB group and interrupt state; the L1 as a ``KVM``
(one memslot of ``L1_PAGES`` 64K pages, populated on demand from host memory) with L0's
radix MMU for it and its nested state (``L1Host``); the L1 kernel's own memory (partition
table, L2->L1 tables, register blocks) and the guest code L2 vCPUs run; the host scheduler.

Threads and CPUs. A vCPU thread runs the kernel code of its hcalls itself (it sleeps, takes
mutexes, and may be moved), and hands each run of a guest to the pCPU it is on now
(``actors/nested_cpu.py``). L1's own instructions are not run through the entry path: L1
executes only hcalls and its own memory writes here, so what can go stale is L2's.

Invariants: the nested life cycle, shadow composition, the rmap without duplicates, L0's
table for L1 current, TLB coherence (no translation through an entry an invalidation
removed), sanitisation (L2 never entered with values L0 forbade), and every return code
checked (``accept``).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from operator import attrgetter

from ..actors.guest_code import GuestCode
from ..actors.l1_hypervisor import L1Hypervisor, L1Kernel
from ..actors.nested_cpu import (
    BOOK3S_INTERRUPT_DATA_STORAGE,
    BOOK3S_INTERRUPT_EXTERNAL,
    Interrupts,
    L2Turn,
    run_turn,
    smp_call_function_single,
)
from ..actors.pcpu import PCpu
from ..actors.returncodes import AcceptSpec
from ..actors.scheduler import HostScheduler, migrate
from ..actors.vcpu import GuestProgram, VCpu
from ..hw.cputhreads import Topology
from ..hw.memory import PAGE_SHIFT, PAGE_SIZE
from ..hw.radix import TableMemory
from ..hw.tlb import IS_LPID, RIC_ALL, Tlbs
from ..kvm import radix_debugfs
from ..kvm.enter_nested import MSR_LE, MSR_ME, MSR_SF, KvmVcpu, h_enter_nested, l2_sanitisation
from ..kvm.hv_guest_state import PT_NIP
from ..kvm.hvcall import (
    H_ENTER_NESTED,
    H_FUNCTION,
    H_SET_PARTITION_TABLE,
    H_TLB_INVALIDATE,
    NAMES,
)
from ..kvm.nested import (
    NESTED,
    NESTED_TRANSITIONS,
    L1Host,
    LpidPool,
    kvmhv_set_partition_table,
    nested_lifetime,
)
from ..kvm.nested_invariants import l1_pgtable_current, nested_rmap_unique, shadow_composition
from ..kvm.nested_mmu import kvmhv_nested_page_fault
from ..kvm.nested_tlbie import kvmhv_do_nested_tlbie
from ..kvm.radix_entry import RadixEntry
from ..kvm.radix_mmu import (
    BOOK3S_INTERRUPT_H_DATA_STORAGE,
    RESUME_GUEST,
    RadixMmu,
    VcpuFault,
    kvm_mmu_notifier_invalidate_range_start,
)
from ..kvm.vm import KVM
from ..sim import Machine, accesses
from .power import PowerMachine

L1_LPID = 1
L1_PAGES = 512
"""L1's memory: 32 MiB in 64K pages."""
TABLE_GFNS = range(0x100, 0x200)
"""L1 pages its kernel allocates tables and register blocks from."""
DATA_BASE = 0x10
STRIDE = 0x20
"""L2 guest n's real page p is backed by L1 page DATA_BASE + n * STRIDE + p."""
NR_LPIDS = 4096
TOPOLOGIES = {"smt4": Topology.power9_smt4, "smt8": Topology.power9_smt8,
              "power10": Topology.power10}


class GfnRange:
    """A frame allocator over a range of L1 page numbers (the L1 kernel's page allocator
    for its tables), lowest free first."""

    def __init__(self, gfns: range) -> None:
        self.gfns = gfns
        self.used: set[int] = set()

    def alloc(self) -> int:
        gfn = next((g for g in self.gfns if g not in self.used), None)
        if gfn is None:
            raise MemoryError("the L1 kernel is out of table pages")
        self.used.add(gfn)
        return gfn

    def free(self, gfn: int) -> None:
        self.used.discard(gfn)


class NestedMachine(PowerMachine):
    def __init__(self, m: Machine, *, topology: str = "smt4", cores: int = 2,
                 quirks: tuple[str, ...] = (), l1_big_endian: bool = False,
                 moves: int = 0, accept: Mapping[str, AcceptSpec] | None = None) -> None:
        self.topology = TOPOLOGIES[topology](cores)
        super().__init__(m, pcpus=self.topology.nr_cpus, accept=accept)
        self.quirks = quirks
        self.pcpus = [PCpu(m, i) for i in range(self.topology.nr_cpus)]
        self.irqs = [Interrupts() for _ in self.pcpus]
        self.tlbs = Tlbs(self.topology)
        self.entry = RadixEntry(self.topology, self.tlbs, self._ipi, quirks)
        self.code = GuestCode()
        self.kvm = KVM(m, L1_LPID, self.memory, quirks=quirks)
        self.kvm.add_memslot(0, 0, L1_PAGES)
        self.kernel = L1Kernel(TableMemory(GfnRange(TABLE_GFNS)), self.code, DATA_BASE, STRIDE,
                               l1_big_endian)
        self.l0_ptbl: dict[int, tuple[int, int]] = {}
        """L0's own partition table: LPID -> (dw0, dw1)."""
        self.l1 = L1Host(self.kvm, LpidPool(NR_LPIDS, reserved=(0, L1_LPID)),
                         TableMemory(self.memory.normal), self._read_l1, self._write_l1,
                         self._flush_lpid, self._set_ptbl_entry, quirks,
                         copy_from_user=self.kernel.tables.read_bytes,
                         copy_to_user=self._copy_to_l1)
        self.mmu = RadixMmu(self.kvm, self._tlbie_page, self.l1)
        self.kvm.mm.notifiers.append(partial(kvm_mmu_notifier_invalidate_range_start, self.mmu))
        radix_debugfs.offer_views(m, self.mmu)  # emu run --view radix / rmap
        self.kvm_vcpus: dict[str, KvmVcpu] = {}
        self.l2_proc: dict[int, dict[int, int]] = {}
        """Each L2 guest's own process-scoped table: effective page -> L2 real page."""
        self.scheduler = HostScheduler(m, self.pcpus, self.irqs, self.vcpus, moves) \
            if moves else None
        checks = {  # name: (check, the key of what it reads: between steps a keyed check
            # runs only when its key has changed; None: at every step)
            "nested lifetime": (partial(nested_lifetime, self.l1),
                                lambda: self.l1.lifetime_version),
            "shadow composition": (self._shadow_composition, self._composition_key),
            "nested rmap unique": (lambda: nested_rmap_unique(self.mmu),
                                   lambda: (self.mmu.rmap_version, self.kvm.memslots_generation)),
            "L1 table current": (lambda: l1_pgtable_current(self.mmu), self._l1_table_key),
            "TLB coherence": (self._tlb_coherence, None),
            "sanitisation": (self._sanitisation, self._entries),
        }
        for name, (check, key) in checks.items():
            m.invariant(name, check, key=key)
            m.final(name, check)
        m.declare(NESTED, NESTED_TRANSITIONS)

    # ------------------------------------------------------------------ building
    def l1_vcpu(self, program: GuestProgram, cpu: int) -> VCpu:
        """An L1 vCPU whose thread starts on pCPU ``cpu``, running ``program`` with an
        ``L1Hypervisor`` handle."""
        vcpu = VCpu(self, self.kvm, len(self.vcpus), program, self.pcpus[self.topology.check(cpu)])
        self.vcpus.append(vcpu)
        self.kvm_vcpus[vcpu.name] = KvmVcpu(
            vcpu_id=vcpu.index, msr=_l1_msr(self.kernel.big_endian))
        self.m.spawn(vcpu.name, vcpu.run, group=f"vm{L1_LPID}")
        return vcpu

    def guest(self, vcpu: VCpu) -> L1Hypervisor:
        return L1Hypervisor(vcpu, self.kernel)

    def migrate(self, vcpu: VCpu, cpu: int) -> None:
        """The host moves ``vcpu``'s thread to pCPU ``cpu`` (a scripted scheduler decision)."""
        migrate(self.m, self.irqs, vcpu, self.pcpus[self.topology.check(cpu)])

    # ------------------------------------------------------------------ L0 callbacks
    def _read_l1(self, addr: int) -> int | None:
        if self.kvm.gfn_to_memslot(addr >> PAGE_SHIFT) is None:
            return None
        return self.kernel.tables.read(addr)

    def _write_l1(self, addr: int, value: int) -> bool:
        if self.kvm.gfn_to_memslot(addr >> PAGE_SHIFT) is None:
            return False
        self.kernel.tables.write(addr, value)
        return True

    def _copy_to_l1(self, addr: int, data: bytes) -> bool:
        self.kernel.tables.write_bytes(addr, data)
        return True

    def _flush_lpid(self, lpid: int) -> None:
        self.tlbs.tlbie(lpid, ric=RIC_ALL, is_=IS_LPID)

    def _set_ptbl_entry(self, lpid: int, dw0: int, dw1: int) -> None:
        """mmu_partition_table_set_entry(flush=true): the entry, then a tlbie of the LPID."""
        if accesses.current.on:
            accesses.current.touch(f"ptbl:{lpid}", True)
        if dw0 or dw1:
            self.l0_ptbl[lpid] = (dw0, dw1)
        else:
            self.l0_ptbl.pop(lpid, None)
        self._flush_lpid(lpid)

    def _tlbie_page(self, addr: int, shift: int, lpid: int) -> None:
        self.tlbs.tlbie(lpid, gpa=addr, shift=shift)

    async def _ipi(self, cpu: int, what: str) -> None:
        await smp_call_function_single(self.m, self.irqs[cpu], cpu, what)

    # ------------------------------------------------------------------ hcalls
    async def l1_hcall(self, vcpu: VCpu, nr: int, regs: list[int]) -> int:
        """kvmppc_pseries_do_hcall for an L1 vCPU: the nested hcalls; H_FUNCTION else."""
        actor = self.m.ctl.current
        held, refs = list(actor.held), self.kvm.pfn_refs.get(actor.name, 0)
        kv = self.kvm_vcpus[vcpu.name]
        args = [*regs, 0, 0, 0][:3]
        if nr == H_SET_PARTITION_TABLE:
            rc = await kvmhv_set_partition_table(self.l1, args[0])
        elif nr == H_ENTER_NESTED:
            words = list(kv.regs)
            words[3:6] = [nr, args[0], args[1]]
            kv.regs = tuple(words)
            await h_enter_nested(self.l1, kv, partial(self._run_l2, vcpu),
                                 nesting_enabled=True)
            kv.mmio_needed = False  # QEMU completes an MMIO exit before the vCPU runs again
            rc = kv.regs[3] - (1 << 64 if kv.regs[3] >> 63 else 0)  # r3, as a signed code
        elif nr == H_TLB_INVALIDATE:
            rc = await kvmhv_do_nested_tlbie(self.l1, *args)
        else:
            rc = H_FUNCTION
        self.hv.no_leaks(self.kvm, f"{vcpu.name}: {NAMES.get(nr, hex(nr))}", held, refs)
        return rc

    async def _run_l2(self, vcpu: VCpu, kv: KvmVcpu, hdec_exp: int, lpcr: int) -> int:
        """kvmhv_run_single_vcpu for an L2, while it says RESUME_GUEST: each turn on the
        pCPU the thread is on now; an HDSI goes to L0's nested fault handler (under
        kvm->srcu, as kvmppc_handle_nested_exit holds it)."""
        gp = kv.nested
        turn = L2Turn(self.m, self.entry, self.tlbs, self.memory, self.code, self.kvm, gp,
                      gp.shadow_lpid, gp.shadow_pgtable, list(kv.regs),
                      self.l2_proc.setdefault(gp.l1_lpid, {}), kv.nested_vcpu_id,
                      "no-prev-cpu-flush" not in self.quirks,
                      f"L2 {gp.l1_lpid}.{kv.nested_vcpu_id}")
        try:
            while True:
                pcpu = vcpu.pcpu
                exit_ = await pcpu.execute(
                    vcpu.name, partial(run_turn, turn, pcpu, self.irqs[pcpu.index]))
                if exit_.trap == BOOK3S_INTERRUPT_EXTERNAL:
                    await self.m.yield_point(f"{vcpu.name}: cond_resched")
                    continue
                if exit_.trap != BOOK3S_INTERRUPT_H_DATA_STORAGE:
                    return exit_.trap
                fault = VcpuFault.hdsi(exit_.gpa, exit_.dsisr, exit_.ea)
                idx = await self.kvm.srcu.read_lock()
                ret = await kvmhv_nested_page_fault(fault, gp)
                self.kvm.srcu.read_unlock(idx)
                if fault.queued_dsi is not None:
                    turn.regs[PT_NIP] = BOOK3S_INTERRUPT_DATA_STORAGE
                    continue
                if fault.mmio is not None:
                    kv.mmio_needed, kv.mmio_is_write = True, fault.mmio[2]
                    return exit_.trap
                if ret == RESUME_GUEST:
                    continue
                kv.fault_dar, kv.fault_dsisr, kv.fault_gpa = \
                    fault.fault_dar, fault.fault_dsisr, fault.fault_gpa
                return exit_.trap
        finally:
            kv.regs = tuple(turn.regs)

    # ------------------------------------------------------------------ views
    async def radix_dump(self) -> str:
        """The debugfs ``radix`` file of the L1 VM, read now (from inside a schedule)."""
        return await radix_debugfs.debugfs_radix_read(self.mmu)

    def _shadow_composition(self) -> str | None:
        """Shadow composition, following the pages of L1's memory it read (its walks of
        L1's tables) for its key: an L1 storing its register blocks does not re-run it."""
        pages: set[int] = set()

        def read(addr: int) -> int | None:
            pages.add(addr & ~(PAGE_SIZE - 1))
            return self._read_l1(addr)

        problem = shadow_composition(self.l1, self.kernel.edits, read)
        self.kernel.tables.watch(pages)
        return problem

    def _composition_key(self) -> tuple[int, ...]:
        """Everything shadow composition reads: the shadow tables, L0's table for L1, the
        pages of L1's memory its last pass read, the rmap, the memslots, L1's pending edits,
        the live nested guests and their PATE caches."""
        return (self.l1.tables.version, self.mmu.pgtable.mem.version,
                self.kernel.tables.watched_version, self.mmu.rmap_version,
                self.kvm.memslots_generation, self.kernel.edits.version,
                self.l1.guests_version)

    def _l1_table_key(self) -> tuple[int, ...]:
        """What "L1 table current" reads: L0's table for L1, the memslots, QEMU's mappings."""
        mm = self.kvm.mm
        return (self.mmu.pgtable.mem.version, self.kvm.memslots_generation, mm.generation,
                mm.pte_version)

    def _entries(self) -> tuple:
        """The L2 entry record of each vCPU (frozen, a new one at every entry that differs
        from the last; tuples compare their items by identity first, so an unchanged key
        costs no field comparison)."""
        return tuple(map(_L2_ENTRY, self.kvm_vcpus.values()))

    def _tlb_coherence(self) -> str | None:
        if not self.tlbs.stale_uses:
            return None
        use = self.tlbs.stale_uses[0]
        e = use.entry
        return (f"pcpu{use.cpu} translates address {e.gpa:#x} of LPID {e.lpid} through a TLB "
                f"entry (to host {e.ra:#x}) that an invalidation at epoch {use.invalidated} "
                f"removed elsewhere; its TLB group was never flushed")

    def _sanitisation(self) -> str | None:
        for kv in self.kvm_vcpus.values():
            found = l2_sanitisation(kv)
            if found:
                return found
        return None


_L2_ENTRY = attrgetter("l2_entry")


def _l1_msr(big_endian: bool) -> int:
    return MSR_SF | MSR_ME | (0 if big_endian else MSR_LE)
