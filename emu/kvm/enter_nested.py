"""H_ENTER_NESTED in L0: ``kvmhv_enter_nested_guest`` (arch/powerpc/kvm/book3s_hv_nested.c)
and the H_ENTER_NESTED arm of ``kvmppc_pseries_do_hcall`` (book3s_hv.c), keyed to releases.

Check order of the newest kernel (the first failing check wins; r4 = GPA of the
hv_guest_state, r5 = GPA of the pt_regs):

| #  | check                                                       | returns         | since      |
|----|-------------------------------------------------------------|-----------------|------------|
| 0  | nesting not enabled for the VM (``nesting_enabled(kvm)``)   | H_FUNCTION      | v4.20      |
| 1  | ``kvm->arch.l1_ptcr == 0``                                  | H_NOT_AVAILABLE | v4.20      |
| 2  | L1's MSR is transactional (TS = 0b10)                       | H_BAD_MODE      | v5.14 (B9) |
| 3  | under ``kvm->srcu``: the version (8 bytes) unreadable, its  | H_PARAMETER     | v5.12      |
|    | size unknown (``hv_guest_state_size`` < 0), the state or    |                 |            |
|    | the pt_regs unreadable                                      |                 |            |
| 4  | the byte-swapped version > HV_GUEST_STATE_VERSION (2)       | H_P2            | v5.12      |
| 5  | ``vcpu_token >= NR_CPUS``                                   | H_PARAMETER     | v4.20      |
| 6  | L1 suspended and L2's MSR not TM-active, or L1 not          | H_BAD_MODE      | v5.14 (B9) |
|    | suspended and L2's (or L1's) MSR has TS bits                |                 |            |
| 7  | ``kvmhv_get_nested(lpid, create)`` is NULL                  | H_PARAMETER     | v4.20      |
| 8  | (L2 runs) the write-back fails, under ``kvm->srcu``         | H_AUTHORITY     | v4.20      |
| 9  | the run ended with -EINTR (r3 = 0; the run loop: -EINTR)    | H_INTERRUPT     | v4.20      |
| 10 | L2 needs MMIO emulated (r3 = 0; RESUME_HOST to userspace)   | H_TOO_HARD      | v4.20      |
| 11 | otherwise: the L2 exit's trap number (``vcpu->arch.trap``)  | trap            | v4.20      |

Earlier forms of rows 3-4: before v5.12 (afe75049303f) the state is read as
``sizeof(struct hv_guest_state)`` = 232 bytes and any version but 1 is H_P2; before v5.9 (the
B7 fix also reordered the reads) the version is checked right after the state is read, so a
bad version beats an unreadable pt_regs (H_P2 where later releases say H_PARAMETER).
From v5.12 an L1 of the other endianness always gets H_AUTHORITY (row 8):
``kvmhv_write_guest_state_and_regs`` sizes the block from the already byte-swapped version
(``hv_guest_state.write_guest_state`` pins this), after L2 has run.

Between rows 7 and 8, in the kernel's order: the PATE cache is refreshed under ``tlb_lock``
if ``l1_gr_to_hr`` is 0; L1's regs (with ``regs.msr = shregs.msr``) and hv regs are saved;
``hdec_exp = hdec_expiry - vc->tb_offset``, then L2's tb_offset is added to
``vc->tb_offset`` (and to ``dec_expires`` from v5.16); ``nested``, ``nested_vcpu_id`` and
``nested_hfscr`` are set; L2's regs load with MSR = (msr | ME) & ~HV; ``load_l2_hv_regs``;
``run_l2``; L2's return state is saved (exit-specific: HDSI hdar/hdsisr/asdr, HISI asdr,
HFAC the HFSCR cause byte, HEAI heir); L1 is restored (MSR[TS] = suspended if L2 was
transactional, tb_offset, the purr/spurr/ic/vtb deltas); ``kvmhv_put_nested``.

Release keying (mainline tags; stable backports are not modelled; a release name comes from
``l1.kvm.release``, None = the newest):

| tag   | change                                                                              |
|-------|-------------------------------------------------------------------------------------|
| v5.4  | 13c7bb3c57dc: PCR_MASK OR'd into pcr (byteswap, save, restore)                      |
| v5.9  | the B7 fix: the pt_regs read before the version check                                |
| v5.12 | afe75049303f: version read first and sized (1: 232 bytes, 2: 248), version > 2 H_P2 |
| v5.13 | LPCR filtered by kvmppc_filter_lpcr_hv; before v5.15 L1 then reads the filtered LPCR |
|       | back (Nick Piggin's "Nested move LPCR sanitising to sanitise_hv_regs")              |
| v5.15 | 7487cabc7ed2 + 8b210a880b35: ``load_l2_hv_regs`` sanitises the vCPU, not the block   |
|       | (before, L1 read the sanitised hfscr/dawrx/ciabr back, and every exit returned the   |
|       | running HFSCR), and limits HFSCR by ``hfscr_permitted`` (before: L1's current HFSCR)|
| v5.16 | "Change dec_expires to be relative to guest timebase" (release from the series'     |
|       | merge, unconfirmed): dec_expires moves with tb_offset                               |
| v5.19 | 2852ebfa10af: LPES no longer L1's to choose (emu/kvm/nested_regs.py)                |

Quirks (in ``NESTED_QUIRKS``; their histories, with every nested quirk's, are in
emu/kvm/nested_releases.py; ``bugs(release)`` lists the ones of this module a release has):

- ``enter-nested-no-srcu`` (B7, v4.20 to v5.8): the blocks are read and written back outside
  ``kvm->srcu``. Each page copy looks its memslot up, then may fault (a scheduling point),
  then copies; a concurrent ``kvm_delete_memslot`` (INVALID, synchronize_srcu, unpublish,
  synchronize_srcu, free) only waits for SRCU readers, so under the quirk it can free the
  slot inside that window: reported as use-after-free only when that really happened.
  (The PATE read of ``kvmhv_update_ptbl_cache``, emu/kvm/nested.py, which the B7 fix also
  wrapped, keeps its SRCU section.)
- ``no-tm-sanitise`` (B9, v4.20 to v5.13): neither TM check (rows 2 and 6). d9c57d3ed52a
  added both; emu/kvm/nested_regs.py dates row 2 to v4.20, but the stable backport of
  d9c57d3ed52a shows the L1-transactional test arriving with it.
- ``no-hfscr-sanitise`` (in no release): 7487cabc7ed2 masked L2's HFSCR with
  ``vcpu->arch.hfscr`` after ``restore_hv_regs`` had loaded L2's own value there, so L1's
  request went to L2 unmasked; the next commit, 8b210a880b35, masks with
  ``hfscr_permitted``. Both were merged for v5.15 (powerpc-5.15-1).

Choices where the kernel does not settle it:

- L1 memory is reached through ``L1Host.read_guest`` / ``write_guest`` one doubleword at a
  time; a partial doubleword is written read-modify-write (one step, so atomic here). A
  copy fails at the first page with no visible memslot, as ``kvm_vcpu_read_guest`` does;
  earlier pages of a write stay written.
- A memslot freed by ``vm.kvm_delete_memslot`` is poisoned (``MEMSLOT_POISON`` in its flags, as
  slab debugging poisons a freed object), so a later copy through it is seen.
- ``struct pt_regs`` is 48 doublewords in every release (``PT_REGS_WORDS``).
- The L2 MSR gets ME set and HV cleared in every release: before v5.13 (946cf44ac6ce,
  732f21a3053c) the guest-entry code did the same.
- DAWR1/DAWRX1 are saved and restored in every release; before v5.12 L2's come out 0.
- ``nested_hfscr`` is per vCPU (22f7ff0dea94, v5.17); in v5.15-v5.16 it was a field of the
  shared ``kvm_nested_guest`` (8b210a880b35), a race between L1 vCPUs not modelled here.
- The sanitisation invariant limits L2's HFSCR by ``hfscr_permitted`` in every release (the
  facilities L0 grants this L1 vCPU; before v5.15 nothing demand-faulted, so L1's HFSCR was
  that set).
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable, Iterator

import attrs

from ..sim import accesses
from ..sim.releases import version
from ..sim.violations import About
from . import hv_guest_state as hgs
from . import nested_regs as nr
from . import nested_releases
from .hvcall import (
    H_AUTHORITY,
    H_BAD_MODE,
    H_FUNCTION,
    H_INTERRUPT,
    H_NOT_AVAILABLE,
    H_P2,
    H_PARAMETER,
    H_TOO_HARD,
    MASK64,
    PAGE_SHIFT,
    PAGE_SIZE,
)
from .nested import (
    KvmNestedGuest,
    L1Host,
    kvmhv_get_nested,
    kvmhv_put_nested,
    kvmhv_update_ptbl_cache,
)
from .vm import KVM, MEMSLOT_POISON, NR_CPUS

EINTR = errno.EINTR
RESUME_GUEST = 0
RESUME_HOST = 2
"""kvm_book3s.h: what an exit handler tells the run loop."""

ENTER_NESTED = "H_ENTER_NESTED of L1 vCPU"
"""Liveness monitor (``Machine.hot``): every H_ENTER_NESTED returns to L1."""

# asm/reg.h: MSR
MSR_SF = 1 << 63
MSR_HV = 1 << 60
MSR_ME = 1 << 12
MSR_LE = 1 << 0

# asm/kvm_asm.h: the traps save_hv_return_state looks at
BOOK3S_INTERRUPT_H_DATA_STORAGE = 0xE00
BOOK3S_INTERRUPT_H_INST_STORAGE = 0xE20
BOOK3S_INTERRUPT_H_EMUL_ASSIST = 0xE40
BOOK3S_INTERRUPT_H_FAC_UNAVAIL = 0xF80

# asm/kvm_host.h: vcpu->arch.io_gpr
KVM_MMIO_REG_EXT_MASK = 0xFFC0
KVM_MMIO_REG_GPR = 0x0000
KVM_MMIO_REG_NESTED_GPR = 0xFFC0

HFSCR_DEFAULT = (nr.HFSCR_TAR | nr.HFSCR_EBB | nr.HFSCR_PM | nr.HFSCR_BHRB | nr.HFSCR_DSCR
                 | nr.HFSCR_VECVSX | nr.HFSCR_FP)
"""What kvmppc_core_vcpu_create_hv grants (before TM and the host's own HFSCR)."""

PT_REGS_BYTES = 8 * hgs.PT_REGS_WORDS
_V1_SIZE = len(hgs.encode(hgs.HvGuestState(), big_endian=True, version=1))
_V2_SIZE = len(hgs.encode(hgs.HvGuestState(), big_endian=True, version=2))

NO_SRCU = "enter-nested-no-srcu"
NO_TM_SANITISE = "no-tm-sanitise"
NO_HFSCR_SANITISE = "no-hfscr-sanitise"

_QUIRKS = (NO_SRCU, NO_TM_SANITISE, NO_HFSCR_SANITISE)


def bugs(release: str | None) -> tuple[str, ...]:
    """The H_ENTER_NESTED quirks ``release`` has, sorted (none for None: the newest)."""
    return tuple(q for q in nested_releases.bugs(release) if q in _QUIRKS)


def _release(l1: L1Host) -> tuple[int, ...] | None:
    name = l1.kvm.release
    return None if name is None else version(name)


def _since(rel: tuple[int, ...] | None, tag: tuple[int, ...]) -> bool:
    return rel is None or rel >= tag


def _pcr_mask(rel: tuple[int, ...] | None) -> int:
    return hgs.PCR_MASK if _since(rel, (5, 4)) else 0


def _s64(value: int) -> int:
    value &= MASK64
    return value - (1 << 64) if value >> 63 else value


# ------------------------------------------------------------------ struct kvm_vcpu
@attrs.define(eq=False)
class KvmppcVcore:
    """struct kvmppc_vcore: the per-virtual-core registers (one vCPU a vcore on POWER9+)."""

    lpcr: int = 0
    """L0's LPCR for this L1: every bit L1 may not choose for L2 comes from here."""
    pcr: int = 0
    dpdes: int = 0
    tb_offset: int = 0
    """u64: guest timebase - host timebase."""
    vtb: int = 0


@attrs.define(eq=False)
class KvmVcpu:
    """struct kvm_vcpu of an L1 vCPU, as far as H_ENTER_NESTED reads and writes it.

    While L2 runs (inside ``run_l2``) the register fields hold L2's values: ``regs`` its
    pt_regs, ``msr`` its MSR, the hv registers as ``load_l2_hv_regs`` left them; between
    hcalls they are L1's. ``regs`` is the pt_regs as ``PT_REGS_WORDS`` u64 words (gpr[n] is
    word n; r3..r5 carry the hcall)."""

    vcpu_id: int = 0
    vcore: KvmppcVcore = attrs.Factory(KvmppcVcore)
    msr: int = MSR_SF | MSR_ME | MSR_LE
    """shregs.msr. MSR_LE against L0's order is kvmppc_need_byteswap; MSR[TS] is L1's TM
    state at the hcall."""
    regs: tuple[int, ...] = (0,) * hgs.PT_REGS_WORDS
    hfscr: int = HFSCR_DEFAULT
    """vcpu->arch.hfscr: the facilities enabled now (bits 63:56 the last interrupt's cause)."""
    hfscr_permitted: int = HFSCR_DEFAULT
    """The facilities L0 grants this vCPU (the kernel's field from v5.15)."""
    dawr0: int = 0
    dawrx0: int = 0
    dawr1: int = 0
    dawrx1: int = 0
    ciabr: int = 0
    purr: int = 0
    spurr: int = 0
    ic: int = 0
    srr0: int = 0
    srr1: int = 0
    sprg: tuple[int, int, int, int] = (0, 0, 0, 0)
    pid: int = 0
    cfar: int = 0
    ppr: int = 0
    dec_expires: int = 0
    # nested state
    nested: KvmNestedGuest | None = None
    nested_vcpu_id: int = 0
    nested_hfscr: int = 0
    """The HFSCR L1 asked for (unmasked): the exit handler's test for reflecting an HFAC."""
    # the exit
    ret: int = RESUME_GUEST
    trap: int = 0
    fault_dar: int = 0
    fault_dsisr: int = 0
    fault_gpa: int = 0
    emul_inst: int = 0
    mmio_needed: bool = False
    mmio_is_write: bool = False
    io_gpr: int = 0
    nested_io_gpr: int = 0
    hcall_needed: int = 0
    # the L0 host it runs on
    l0_big_endian: bool = False
    """MSR_KERNEL & MSR_LE of L0 (False: a little-endian host)."""
    radix_prefetch_bug: bool = False
    """A POWER9 DD2.1 or earlier host (kvmppc_filter_lpcr_hv drops AIL)."""
    # model bookkeeping
    l2_entry: L2Entry | None = None
    """What L2 was last entered with (for the sanitisation invariant)."""


def kvmppc_get_gpr(vcpu: KvmVcpu, n: int) -> int:
    return vcpu.regs[n]


def kvmppc_set_gpr(vcpu: KvmVcpu, n: int, value: int) -> None:
    vcpu.regs = _with_word(vcpu.regs, n, value & MASK64)


def _with_word(regs: tuple[int, ...], n: int, value: int) -> tuple[int, ...]:
    return (*regs[:n], value, *regs[n + 1:])


def kvmppc_need_byteswap(vcpu: KvmVcpu) -> bool:
    return bool(vcpu.msr & MSR_LE) == vcpu.l0_big_endian


def _l1_big_endian(vcpu: KvmVcpu) -> bool:
    return not vcpu.msr & MSR_LE


# ------------------------------------------------------------------ L1 memory, byte-wise
def _segments(gpa: int, n: int) -> Iterator[tuple[int, int, int]]:
    """next_segment: (gfn, offset in the page, length) for each page of [gpa, gpa + n)."""
    gfn, offset = gpa >> PAGE_SHIFT, gpa & (PAGE_SIZE - 1)
    while n:
        seg = min(n, PAGE_SIZE - offset)
        yield gfn, offset, seg
        gfn, offset, n = gfn + 1, 0, n - seg


async def _copy_page(kvm: KVM, gfn: int, op: str) -> bool:
    """kvm_vcpu_gfn_to_memslot and the copy's fault window: False if no visible memslot
    holds ``gfn``. The slot is looked up before the copy may fault and used after: a slot
    freed meanwhile is a use-after-free."""
    slot = kvm.gfn_to_memslot(gfn)
    if slot is None:
        return False
    m = kvm.m
    await m.point(f"{op} gfn {gfn:#x}")
    if slot.flags & MEMSLOT_POISON:
        actor = m.ctl.current
        where = "inside" if kvm.srcu.held_by(actor) else "outside"
        m.fail("use-after-free", About(
            f"{actor.name}: {op} of gfn {gfn:#x} through memslot {slot.id}, which "
            f"kvm_delete_memslot freed while this copy ({where} kvm->srcu) held it",
            kvm.object("memslots")))
    return True


async def kvm_vcpu_read_guest(l1: L1Host, gpa: int, n: int) -> bytes | None:
    """``n`` bytes of L1 memory at ``gpa`` (any alignment), page by page; None (-EFAULT) at
    the first page no visible memslot holds. (The vCPU only picks the memslot address
    space; there is one.)"""
    out = bytearray()
    for gfn, offset, seg in _segments(gpa & MASK64, n):
        if not await _copy_page(l1.kvm, gfn, "__copy_from_user"):
            return None
        data = l1.copy_from_user((gfn << PAGE_SHIFT) + offset, seg)
        if data is None:
            return None
        out += data
    return bytes(out)


async def kvm_vcpu_write_guest(l1: L1Host, gpa: int, data: bytes) -> bool:
    """Write ``data`` at ``gpa`` page by page; False (-EFAULT) at the first page no visible
    (writable) memslot holds, the pages before it written."""
    done = 0
    for gfn, offset, seg in _segments(gpa & MASK64, len(data)):
        if not await _copy_page(l1.kvm, gfn, "__copy_to_user"):
            return False
        if not l1.copy_to_user((gfn << PAGE_SHIFT) + offset, data[done:done + seg]):
            return False
        done += seg
    return True


async def _srcu_read_lock(l1: L1Host) -> int | None:
    """vcpu->srcu_idx = srcu_read_lock(&kvm->srcu); nothing under ``enter-nested-no-srcu``."""
    return None if NO_SRCU in l1.quirks else await l1.kvm.srcu.read_lock()


def _srcu_read_unlock(l1: L1Host, idx: int | None) -> None:
    if idx is not None:
        l1.kvm.srcu.read_unlock(idx)


# ------------------------------------------------------------------ the blocks
def _l0_view(raw: bytes, vcpu: KvmVcpu, pcr_mask: int) -> hgs.HvGuestState:
    """``l2_hv = {0}`` filled with ``raw`` as L0 loads it, then byteswap_hv_regs when L1's
    order differs."""
    state = hgs.decode(raw.ljust(_V2_SIZE, b"\0"), big_endian=vcpu.l0_big_endian)
    return hgs.byteswap_hv_regs(state, pcr_mask=pcr_mask) if kvmppc_need_byteswap(vcpu) \
        else state


def _version_ok(state: hgs.HvGuestState, rel: tuple[int, ...] | None) -> bool:
    if _since(rel, (5, 12)):
        return state.version <= hgs.HV_GUEST_STATE_VERSION
    return state.version == 1


async def kvmhv_read_guest_state_and_regs(l1: L1Host, vcpu: KvmVcpu, hv_ptr: int,
                                          regs_ptr: int) -> tuple[bytes, bytes] | int:
    """The raw hv_guest_state and pt_regs, or the hcall's return code (H_PARAMETER; H_P2
    before v5.9, whose version check came before the pt_regs read). From v5.12 the version
    is read first (swapped to L1's order) and sizes the state; before, 232 bytes."""
    rel = _release(l1)
    if _since(rel, (5, 12)):
        raw = await kvm_vcpu_read_guest(l1, hv_ptr, 8)
        if raw is None:
            return H_PARAMETER
        size = hgs.size_for_version(
            int.from_bytes(raw, "big" if _l1_big_endian(vcpu) else "little"))
        if size is None:
            return H_PARAMETER
    else:
        size = _V1_SIZE
    state = await kvm_vcpu_read_guest(l1, hv_ptr, size)
    if state is None:
        return H_PARAMETER
    if not _since(rel, (5, 9)) and not _version_ok(_l0_view(state, vcpu, _pcr_mask(rel)), rel):
        return H_P2
    regs = await kvm_vcpu_read_guest(l1, regs_ptr, PT_REGS_BYTES)
    return H_PARAMETER if regs is None else (state, regs)


async def kvmhv_write_guest_state_and_regs(l1: L1Host, hv_ptr: int, state: bytes | None,
                                           regs_ptr: int, regs: bytes) -> bool:
    """Write the blocks back; ``state`` None is a negative hv_guest_state_size (nothing
    written). False on any failure."""
    if state is None:
        return False
    return await kvm_vcpu_write_guest(l1, hv_ptr, state) and \
        await kvm_vcpu_write_guest(l1, regs_ptr, regs)


# ------------------------------------------------------------------ hv registers
def kvmhv_save_hv_regs(vcpu: KvmVcpu, rel: tuple[int, ...] | None) -> hgs.HvGuestState:
    vc = vcpu.vcore
    return hgs.HvGuestState(
        pcr=vc.pcr | _pcr_mask(rel), dpdes=vc.dpdes, hfscr=vcpu.hfscr,
        tb_offset=_s64(vc.tb_offset), dawr0=vcpu.dawr0, dawrx0=vcpu.dawrx0, ciabr=vcpu.ciabr,
        purr=vcpu.purr, spurr=vcpu.spurr, ic=vcpu.ic, vtb=vc.vtb, srr0=vcpu.srr0,
        srr1=vcpu.srr1, sprg=vcpu.sprg, pidr=vcpu.pid, cfar=vcpu.cfar, ppr=vcpu.ppr,
        dawr1=vcpu.dawr1, dawrx1=vcpu.dawrx1)


def restore_hv_regs(vcpu: KvmVcpu, hr: hgs.HvGuestState, rel: tuple[int, ...] | None) -> None:
    vc = vcpu.vcore
    vc.pcr = hr.pcr | _pcr_mask(rel)
    vc.dpdes = hr.dpdes
    vc.vtb = hr.vtb
    vcpu.hfscr, vcpu.dawr0, vcpu.dawrx0, vcpu.ciabr = hr.hfscr, hr.dawr0, hr.dawrx0, hr.ciabr
    vcpu.purr, vcpu.spurr, vcpu.ic = hr.purr, hr.spurr, hr.ic
    vcpu.srr0, vcpu.srr1, vcpu.sprg = hr.srr0, hr.srr1, hr.sprg
    vcpu.pid, vcpu.cfar, vcpu.ppr = hr.pidr, hr.cfar, hr.ppr
    vcpu.dawr1, vcpu.dawrx1 = hr.dawr1, hr.dawrx1


def load_l2_hv_regs(l1: L1Host, vcpu: KvmVcpu, l2_hv: hgs.HvGuestState,
                    l1_hv: hgs.HvGuestState) -> tuple[hgs.HvGuestState, int]:
    """Load L2's hv registers, sanitised (emu/kvm/nested_regs.py has the rules): the block
    L1 will get back and the LPCR to run L2 with. Before v5.15 ``sanitise_hv_regs``
    rewrote the block itself, so L1 reads the sanitised values back."""
    rel = _release(l1)
    san = nr.load_l2_hv_regs(
        nr.HvRegs(l2_hv.lpcr, l2_hv.hfscr, l2_hv.dawrx0, l2_hv.dawrx1, l2_hv.ciabr),
        vcore_lpcr=vcpu.vcore.lpcr, hfscr_permitted=vcpu.hfscr_permitted,
        l1_hfscr=l1_hv.hfscr, release=rel, radix_prefetch_bug=vcpu.radix_prefetch_bug)
    hfscr = l2_hv.hfscr if NO_HFSCR_SANITISE in l1.quirks else san.hfscr
    if not _since(rel, (5, 15)):
        lpcr = {"lpcr": san.lpcr} if _since(rel, (5, 13)) else {}
        l2_hv = attrs.evolve(l2_hv, hfscr=hfscr, dawrx0=san.dawrx0, dawrx1=san.dawrx1,
                             ciabr=san.ciabr, **lpcr)
    restore_hv_regs(vcpu, l2_hv, rel)
    vcpu.hfscr, vcpu.dawrx0, vcpu.dawrx1, vcpu.ciabr = hfscr, san.dawrx0, san.dawrx1, \
        san.ciabr
    return l2_hv, san.lpcr


def save_hv_return_state(vcpu: KvmVcpu, hr: hgs.HvGuestState,
                         rel: tuple[int, ...] | None) -> hgs.HvGuestState:
    """The block L1 gets back: L2's registers now, and the exit's own fields."""
    vc = vcpu.vcore
    out = {"dpdes": vc.dpdes, "purr": vcpu.purr, "spurr": vcpu.spurr, "ic": vcpu.ic,
           "vtb": vc.vtb, "srr0": vcpu.srr0, "srr1": vcpu.srr1, "sprg": vcpu.sprg,
           "pidr": vcpu.pid, "cfar": vcpu.cfar, "ppr": vcpu.ppr}
    new_form = _since(rel, (5, 15))
    if not new_form:  # the running HFSCR, whatever the exit
        out["hfscr"] = vcpu.hfscr
    trap = vcpu.trap
    if trap == BOOK3S_INTERRUPT_H_DATA_STORAGE:
        out.update(hdar=vcpu.fault_dar, hdsisr=vcpu.fault_dsisr, asdr=vcpu.fault_gpa)
    elif trap == BOOK3S_INTERRUPT_H_INST_STORAGE:
        out["asdr"] = vcpu.fault_gpa
    elif trap == BOOK3S_INTERRUPT_H_FAC_UNAVAIL and new_form:
        out["hfscr"] = (hr.hfscr & ~nr.HFSCR_INTR_CAUSE) | (vcpu.hfscr & nr.HFSCR_INTR_CAUSE)
    elif trap == BOOK3S_INTERRUPT_H_EMUL_ASSIST:
        out["heir"] = vcpu.emul_inst
    return attrs.evolve(hr, **out)


def kvmhv_nested_mmio_needed(vcpu: KvmVcpu, regs_ptr: int) -> None:
    """The L2 load completes later, into L1 memory: remember where its GPR lives."""
    vcpu.trap = 0
    if vcpu.io_gpr & KVM_MMIO_REG_EXT_MASK == KVM_MMIO_REG_GPR and not vcpu.mmio_is_write:
        vcpu.nested_io_gpr = (regs_ptr + 8 * vcpu.io_gpr) & MASK64
        vcpu.io_gpr = KVM_MMIO_REG_NESTED_GPR


# ------------------------------------------------------------------ the sanitisation invariant
@attrs.frozen
class L2Entry:
    """What ``run_l2`` was entered with, and what it is judged against."""

    hv: nr.HvRegs
    """LPCR (as passed to run_l2), HFSCR, DAWRX0/1, CIABR as loaded for L2."""
    msr: int
    l1_msr: int
    """L1's MSR at the hcall (its TM state)."""
    vcore_lpcr: int
    hfscr_permitted: int
    release: tuple[int, ...] | None


def l2_entry_violations(entry: L2Entry) -> tuple[str, ...]:
    """Why L2 must not have run as ``entry`` says (empty: it may): an LPCR bit outside the
    release's mask (or TC / AIL 1-2 from v5.13), an HFSCR facility L0 does not permit,
    DAWRX_HYP, CIABR[PRIV] = HYPER (emu/kvm/nested_regs.py), MSR[HV], or a TM state the
    d9c57d3ed52a checks forbid (the hrfid into L2 would be a TM Bad Thing in L0)."""
    out = list(nr.l2_regs_violations(entry.hv, vcore_lpcr=entry.vcore_lpcr,
                                     hfscr_limit=entry.hfscr_permitted, release=entry.release))
    if entry.msr & MSR_HV:
        out.append("MSR[HV] set: L2 in hypervisor state")
    if nr.check_l1_not_transactional(entry.l1_msr) or nr.check_tm_state(entry.l1_msr,
                                                                         entry.msr):
        out.append(f"MSR[TS] {(entry.msr & nr.MSR_TS_MASK) >> 33:#04b} with L1's "
                   f"{(entry.l1_msr & nr.MSR_TS_MASK) >> 33:#04b}: L0 cannot recheckpoint")
    return tuple(out)


def l2_sanitisation(vcpu: KvmVcpu) -> str | None:
    """The sanitisation invariant for ``m.invariant``: None, or why the L2 last entered from
    this vCPU ran with register values L0 forbade."""
    found = l2_entry_violations(vcpu.l2_entry) if vcpu.l2_entry is not None else ()
    return f"L2 of vcpu{vcpu.vcpu_id} entered with " + "; ".join(found) if found else None


# ------------------------------------------------------------------ the hcall
RunL2 = Callable[[KvmVcpu, int, int], Awaitable[int]]
"""``run_l2(vcpu, hdec_exp, lpcr)``: the pCPU entry path and ``kvmhv_run_single_vcpu`` while
it says RESUME_GUEST. ``vcpu`` holds L2's state (``nested``, ``nested_vcpu_id``, ``regs``,
``msr``, the hv registers), ``hdec_exp`` is the HDEC expiry in L0's timebase, ``lpcr`` the
sanitised LPCR. It returns the exit's trap number, or -EINTR (a signal ended the run),
having left L2's state in ``vcpu`` and set the exit's details: ``fault_dar``,
``fault_dsisr``, ``fault_gpa`` (HDSI, HISI), ``emul_inst`` (HEAI), the cause byte of
``hfscr`` (HFAC), and for an access that needs MMIO emulation ``mmio_needed`` (with
``io_gpr`` and ``mmio_is_write``)."""


async def kvmhv_enter_nested_guest(l1: L1Host, vcpu: KvmVcpu, run_l2: RunL2) -> int:
    """H_ENTER_NESTED (r4 = GPA of the hv_guest_state, r5 = GPA of the pt_regs): the
    hcall's return code (or the L2 trap number), in the order of the module's table."""
    rel = _release(l1)
    pcr_mask = _pcr_mask(rel)
    tm_checks = NO_TM_SANITISE not in l1.quirks
    if accesses.current.on:
        accesses.current.touch(f"ptcr:{l1.kvm.lpid}")
    if l1.l1_ptcr == 0:
        return H_NOT_AVAILABLE
    if tm_checks and nr.check_l1_not_transactional(vcpu.msr):
        return H_BAD_MODE

    hv_ptr, regs_ptr = kvmppc_get_gpr(vcpu, 4), kvmppc_get_gpr(vcpu, 5)
    idx = await _srcu_read_lock(l1)
    blocks = await kvmhv_read_guest_state_and_regs(l1, vcpu, hv_ptr, regs_ptr)
    _srcu_read_unlock(l1, idx)
    if isinstance(blocks, int):
        return blocks
    l2_hv = _l0_view(blocks[0], vcpu, pcr_mask)
    if not _version_ok(l2_hv, rel):
        return H_P2
    l2_regs = hgs.decode_pt_regs(blocks[1], big_endian=_l1_big_endian(vcpu))  # + byteswap
    if l2_hv.vcpu_token >= NR_CPUS:
        return H_PARAMETER
    if tm_checks and nr.check_tm_state(vcpu.msr, l2_regs[hgs.PT_MSR]):
        return H_BAD_MODE

    l2 = await kvmhv_get_nested(l1, l2_hv.lpid, True)  # translate lpid
    if l2 is None:
        return H_PARAMETER
    if not l2.l1_gr_to_hr:
        await l2.tlb_lock.lock()
        await kvmhv_update_ptbl_cache(l2)
        l2.tlb_lock.unlock()

    # save L1's state; convert the timebase values to L0's
    vc = vcpu.vcore
    l1_msr = vcpu.msr
    saved_l1_regs = vcpu.regs = _with_word(vcpu.regs, hgs.PT_MSR, vcpu.msr)
    saved_l1_hv = kvmhv_save_hv_regs(vcpu, rel)
    hdec_exp = (l2_hv.hdec_expiry - vc.tb_offset) & MASK64
    vc.tb_offset = (vc.tb_offset + l2_hv.tb_offset) & MASK64
    dec_relative = _since(rel, (5, 16))
    if dec_relative:
        vcpu.dec_expires = (vcpu.dec_expires + l2_hv.tb_offset) & MASK64

    # L1's state becomes L2's
    vcpu.nested = l2
    vcpu.nested_vcpu_id = l2_hv.vcpu_token
    vcpu.nested_hfscr = l2_hv.hfscr
    vcpu.regs = l2_regs
    vcpu.msr = (l2_regs[hgs.PT_MSR] | MSR_ME) & ~MSR_HV  # always ME, never HV
    l2_hv, lpcr = load_l2_hv_regs(l1, vcpu, l2_hv, saved_l1_hv)

    vcpu.ret = RESUME_GUEST
    vcpu.trap = 0
    entry = L2Entry(nr.HvRegs(lpcr, vcpu.hfscr, vcpu.dawrx0, vcpu.dawrx1, vcpu.ciabr),
                    vcpu.msr, l1_msr, vc.lpcr, vcpu.hfscr_permitted, rel)
    if entry != vcpu.l2_entry:  # (an equal record stays: the invariant's key is its identity)
        vcpu.l2_entry = entry
    r = await run_l2(vcpu, hdec_exp, lpcr)
    if r != -EINTR:
        vcpu.trap = r

    # save L2's state for L1
    l2_regs = _with_word(vcpu.regs, hgs.PT_MSR, vcpu.msr)
    delta_purr, delta_spurr = vcpu.purr - l2_hv.purr, vcpu.spurr - l2_hv.spurr
    delta_ic, delta_vtb = vcpu.ic - l2_hv.ic, vc.vtb - l2_hv.vtb
    l2_hv = save_hv_return_state(vcpu, l2_hv, rel)

    # restore L1's state
    vcpu.nested = None
    vcpu.regs = saved_l1_regs
    vcpu.msr = saved_l1_regs[hgs.PT_MSR] & ~nr.MSR_TS_MASK
    if l2_regs[hgs.PT_MSR] & nr.MSR_TS_MASK:  # L2 was in a transaction: L1 is suspended
        vcpu.msr |= nr.MSR_TS_S
    vc.tb_offset = saved_l1_hv.tb_offset & MASK64
    if dec_relative:
        vcpu.dec_expires = (vcpu.dec_expires - l2_hv.tb_offset) & MASK64
    restore_hv_regs(vcpu, saved_l1_hv, rel)
    vcpu.purr = (vcpu.purr + delta_purr) & MASK64
    vcpu.spurr = (vcpu.spurr + delta_spurr) & MASK64
    vcpu.ic = (vcpu.ic + delta_ic) & MASK64
    vc.vtb = (vc.vtb + delta_vtb) & MASK64

    await kvmhv_put_nested(l2)

    # copy the state and regs back to L1 (byteswap_hv_regs / byteswap_pt_regs first)
    l1_be = _l1_big_endian(vcpu)
    state = hgs.write_guest_state(l2_hv, l1_big_endian=l1_be,
                                  l0_big_endian=vcpu.l0_big_endian, release=rel,
                                  pcr_mask=pcr_mask)
    idx = await _srcu_read_lock(l1)
    ok = await kvmhv_write_guest_state_and_regs(
        l1, hv_ptr, state, regs_ptr, hgs.encode_pt_regs(l2_regs, big_endian=l1_be))
    _srcu_read_unlock(l1, idx)
    if not ok:
        return H_AUTHORITY
    if r == -EINTR:
        return H_INTERRUPT
    if vcpu.mmio_needed:
        kvmhv_nested_mmio_needed(vcpu, regs_ptr)
        return H_TOO_HARD
    return vcpu.trap


async def h_enter_nested(l1: L1Host, vcpu: KvmVcpu, run_l2: RunL2, *,
                         nesting_enabled: bool) -> int:
    """The H_ENTER_NESTED case of kvmppc_pseries_do_hcall: H_FUNCTION unless
    ``nesting_enabled`` (kvm->arch.nested_enable and a radix guest). Sets r3 and clears
    hcall_needed; returns what the run loop gets: -EINTR for H_INTERRUPT and RESUME_HOST
    (exit to userspace) for H_TOO_HARD, both with r3 = 0; else RESUME_GUEST with r3 = the
    return code."""
    l1.m.hot(ENTER_NESTED, vcpu.vcpu_id, "H_ENTER_NESTED")
    ret = await kvmhv_enter_nested_guest(l1, vcpu, run_l2) if nesting_enabled \
        else H_FUNCTION
    l1.m.cold(ENTER_NESTED, vcpu.vcpu_id)
    vcpu.hcall_needed = 0
    if ret in (H_INTERRUPT, H_TOO_HARD):
        kvmppc_set_gpr(vcpu, 3, 0)
        return -EINTR if ret == H_INTERRUPT else RESUME_HOST
    kvmppc_set_gpr(vcpu, 3, ret)
    return RESUME_GUEST
