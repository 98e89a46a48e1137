"""Conformance to the seed-000 life-cycle tables.

The tables are checked against the ground truth, not against the HV's own bookkeeping (which
is what a bug corrupts): a GFN is *Shared* if the Ultravisor maps the HV's page as shared,
*Secure* if its content is out of the HV's reach (a device page on the HV side, a frame in
secure memory, or an encrypted paged-out copy), and *Normal* otherwise.

A cell with a next state must be reached when the operation succeeds (H_SVM_INIT_ABORT
"succeeds" with H_PARAMETER, by design); a failed operation must leave the state as it was,
except that a failed H_SVM_INIT_START may leave the VM Transient: since B5's fix the flag is
set first so that the error returns through UV_RETURN, and the UV then aborts. An "Error"
cell must fail and change nothing.

Coverage (``sim.coverage``): a cell is *exercised* when its operation is applied to a GFN
(a VM) in its row's state: ``check_gfn`` and ``check_vm`` report theirs, and the VM-wide
operations report, on entry, the states their GFNs were in (``cover_gfn_states``).
``declare_tables`` declares all of them, with the seed's "start VM" column (a VM starts
Normal; a Secure VM is not started again before it is terminated; Transient is N/A).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..sim import coverage
from .hvcall import (
    H_PARAMETER,
    H_SUCCESS,
    KVMPPC_GFN_MEM_PFN,
    KVMPPC_GFN_SHARED,
    KVMPPC_GFN_UVMEM_PFN,
    rc_name,
)
from .uvmem import vm_state

if TYPE_CHECKING:
    from ..sim import Machine
    from .uvmem import UvmemSlot
    from .vm import KVM

GFN_TABLE = {  # from -> {operation: to}
    "Secure": {"share": "Shared", "unshare": "Secure", "terminate": "Normal",
               "init_done": "Secure"},
    "Shared": {"share": "Shared", "unshare": "Secure", "terminate": "Normal",
               "init_done": "Shared"},
    "Normal": {"share": "Shared", "unshare": "Secure", "terminate": "Normal",
               "init_done": "Secure"},
}

MAY_FAIL = ("INIT_START", "INIT_DONE")
"""Legal operations with documented error paths (slot registration, migration); any other
legal operation must succeed."""

VM_TABLE: dict[str, dict[str, str | None]] = {
    "Normal": {"INIT_START": "Transient", "INIT_DONE": None, "INIT_ABORT": None,
               "TERMINATE": "Normal"},
    "Transient": {"INIT_START": None, "INIT_DONE": "Secure", "INIT_ABORT": "Normal",
                  "TERMINATE": "Normal"},
    "Secure": {"INIT_START": None, "INIT_DONE": None, "INIT_ABORT": None,
               "TERMINATE": "Normal"},
}


GFN_CELLS, VM_CELLS = "gfn-table", "vm-table"
"""The coverage kinds of the two tables' cells (keys ``state|operation``)."""
START_VM = "start VM"
VM_COLUMNS = {"INIT_DONE": "init_done", "INIT_ABORT": "terminate", "TERMINATE": "terminate"}
"""The GFN-table column of each VM-wide operation (an abort, like a terminate, leaves every
GFN Normal)."""
_UV_REFUSES = ("an Error cell the Ultravisor refuses itself (U_STATE: it issues INIT_START "
               "only for a VM it does not know, the others only for an SVM in transition)")
_REFUSED = _UV_REFUSES + (", and a guest's own call of it (no MSR_S) gets H_UNSUPPORTED "
                          "before any state is read")
_ABORT = _UV_REFUSES + (", and a guest's own H_SVM_INIT_ABORT (no MSR_S needed since "
                        "e3326ae3d59e) is checked by its return code, not against the table")
UNREACHABLE = {
    f"Secure|{START_VM}": "not modelled: a VM starts once, Normal, and a secure VM boots "
                          "again only after KVM_PPC_SVM_OFF terminated it (Normal)",
    f"Transient|{START_VM}": "N/A in the seed's table",
    "Normal|INIT_DONE": _REFUSED,
    "Normal|INIT_ABORT": _ABORT,
    "Transient|INIT_START": _REFUSED,
    "Secure|INIT_ABORT": _ABORT,
    "Secure|INIT_START": _REFUSED + "; a hostile one issues it (hostile-uv -p "
                                    "extra=init-start-secure: a known finding)",
    "Secure|INIT_DONE": _REFUSED + "; a hostile one issues it (hostile-uv -p "
                                   "extra=init-done-twice: a known finding)",
    "Normal|TERMINATE": "this hunt never resets (KVM_PPC_SVM_OFF) a VM before its ESM",
    "Transient|TERMINATE": "this hunt never resets a VM during its ESM (KVM_PPC_SVM_OFF's "
                           "guard refuses, -EBUSY, while the vCPU running UV_ESM is in the "
                           "guest)",
}
"""Why a cell may stay unreached (shown only for a cell a hunt did not reach)."""


def declare_tables(m: Machine) -> None:
    """Every cell of the seed-000 tables is one this machine can exercise (coverage)."""
    if not m.coverage.on:
        return
    m.declare(GFN_CELLS, [f"{state}|{op}" for state, row in GFN_TABLE.items() for op in row])
    for cell, why in UNREACHABLE.items():
        m.declare(VM_CELLS, [cell], why)
    m.declare(VM_CELLS, [f"{state}|{op}" for state, row in VM_TABLE.items() for op in row])
    m.declare(VM_CELLS, [f"Normal|{START_VM}"])
    m.cover(VM_CELLS, f"Normal|{START_VM}")  # "A VM always starts in Normal Mode"


def cover_gfn_states(kvm: KVM, op: str | None) -> None:
    """Coverage: the GFN cells ``(state, column)`` a VM-wide operation ``op`` (INIT_DONE,
    INIT_ABORT, TERMINATE; None: nothing) exercises, from the states the VM's registered
    GFNs are in as it starts (read from the firmware's books without touching them:
    coverage is no access)."""
    rec = coverage.current
    svm = kvm.uv.svms.get(kvm.lpid) if rec.on and op in VM_COLUMNS else None
    if svm is None or (op != "TERMINATE" and vm_state(kvm) != "Transient"):
        return
    column = VM_COLUMNS[op]
    secure = set(svm.frames) | set(svm.paged_out)
    known = secure | set(svm.shared)
    registered = sum(npages for _, npages in svm.slots.values())
    for state, present in (("Shared", svm.shared), ("Secure", secure),
                           ("Normal", registered > len(known))):
        if present:
            rec.cover(GFN_CELLS, f"{state}|{column}")


def true_gfn_state(kvm: KVM, gfn: int) -> str:
    svm = kvm.uv.svm(kvm.lpid)
    if svm is not None:
        svm.touch_gfn(gfn)
    if svm is not None and gfn in svm.shared:
        return "Shared"
    hva = kvm.gfn_to_hva(gfn)
    if hva is not None and kvm.mm.get_pte(hva) < 0:
        return "Secure"
    if svm is not None and (gfn in svm.frames or gfn in svm.paged_out):
        return "Secure"
    return "Normal"


def check_vm(kvm: KVM, op: str, before: str, rc: int) -> str | None:
    """What is wrong with a VM transition, or None."""
    after = vm_state(kvm)
    cell = VM_TABLE[before][op]
    coverage.current.cover(VM_CELLS, f"{before}|{op}")
    ok_rc = rc == (H_PARAMETER if op == "INIT_ABORT" else H_SUCCESS)
    if cell is None:
        if ok_rc or after != before:
            return (f"VM {before} --{op}--> {after} with {rc_name(rc)}: the table says Error "
                    "(an error code and no change)")
        return None
    if ok_rc and after != cell:
        return f"VM {before} --{op}--> {after} with {rc_name(rc)}: the table says {cell}"
    if not ok_rc and op not in MAY_FAIL:
        return f"VM {before} --{op}--> {after} failed with {rc_name(rc)}: the table says {cell}"
    if not ok_rc and after != before and not (op == "INIT_START" and after == "Transient"):
        return f"VM {before} --{op}--> {after} although it failed with {rc_name(rc)}"
    return None


def check_gfn(kvm: KVM, op: str, gfn: int, before: str, rc: int) -> str | None:
    """What is wrong with one GFN's transition, or None (``before`` is "" when another
    operation on the GFN overlapped this one)."""
    after = true_gfn_state(kvm, gfn)
    if before:
        coverage.current.cover(GFN_CELLS, f"{before}|{op}")
    if rc != H_SUCCESS and not before:
        return None  # failed while another operation on the GFN overlapped: nothing to hold
    expected = GFN_TABLE[before or "Normal"][op] if rc == H_SUCCESS else before
    if after != expected:
        how = "succeeded" if rc == H_SUCCESS else f"failed with {rc_name(rc)}"
        return f"GFN {gfn:#x} {before} --{op}--> {after} ({how}): the table says {expected}"
    return None


def check_init_done(kvm: KVM, shared_before: list[int], moved: set[int] = frozenset(),
                    in_flight: set[int] = frozenset()) -> str | None:
    """After H_SVM_INIT_DONE succeeded: every GFN of a slot registered with the UV is
    Secure, except the shared ones, which stay Shared. The only GFNs excused are those an
    operation overlapped: a GFN in ``moved`` had a share or unshare in flight during
    INIT_DONE, which may have moved it on (to Shared or Secure, never back to Normal), and
    a GFN in ``in_flight`` still has one in flight, which may have left it mid-way (a share
    between its page-out and its UV_PAGE_IN). (A slot being hot-plugged and not registered
    yet is not the SVM's memory.) Scans the page tables in bulk: a 100 GB guest has 1.6 M
    GFNs."""
    svm = kvm.uv.svm(kvm.lpid)
    for gfn in shared_before:
        if gfn in in_flight:
            continue
        state = true_gfn_state(kvm, gfn)
        if state != "Shared" and not (gfn in moved and state == "Secure"):
            return f"GFN {gfn:#x} Shared --init_done--> {state}: the table says Shared"
    shared = set(shared_before)
    for base, npages in svm.slots.values() if svm else ():
        hva = kvm.gfn_to_hva(base)
        vma = kvm.mm.vma_lookup(hva) if hva is not None else None
        first = vma.index(hva) if vma is not None else 0
        pte = vma.pte[first:first + npages] if vma is not None else None
        for i in range(npages) if pte is None else _non_device(pte):
            gfn = base + i
            if gfn not in shared and gfn not in in_flight and \
                    true_gfn_state(kvm, gfn) == "Normal":
                how = " (a share or unshare of it overlapped)" if gfn in moved else ""
                return (f"GFN {gfn:#x} Normal --init_done--> Normal{how}: after "
                        "H_SVM_INIT_DONE succeeds no registered GFN may be Normal (the table "
                        "says Secure)")
    return None


FLAG_NAMES = ((KVMPPC_GFN_UVMEM_PFN, "KVMPPC_GFN_UVMEM_PFN"),
              (KVMPPC_GFN_MEM_PFN, "KVMPPC_GFN_MEM_PFN"),
              (KVMPPC_GFN_SHARED, "KVMPPC_GFN_SHARED"))


def check_terminated(kvm: KVM, op: str) -> str | None:
    """After an abort or a terminate every GFN of the VM is Normal: no device page left in
    QEMU's page tables, nothing the UV still holds, and no state flag left in the pfns[]
    word of any uvmem slot (those that survive: the kernel does not free them)."""
    if kvm.uv.svm(kvm.lpid) is not None:
        return f"the UV still knows VM {kvm.lpid} after {op}"
    kvm.touch_memslots()
    for slot in kvm.memslots:
        vma = kvm.mm.vma_lookup(slot.userspace_addr)
        if vma is not None and len(vma.pte) and min(vma.pte) < 0:
            gfn = slot.base_gfn + next(i for i, v in enumerate(vma.pte) if v < 0)
            return f"GFN {gfn:#x} Secure --{op}--> Secure: the table says Normal"
    for p in kvm.uvmem_pfns:
        problem = check_words(p, op)
        if problem:
            return problem
    return None


def check_words(p: UvmemSlot, op: str) -> str | None:
    """After an abort or a terminate every pfns[] word of the uvmem slot is 0: no
    KVMPPC_GFN_UVMEM_PFN, MEM_PFN or SHARED flag left (the GFN is Normal)."""
    if not any(p.pfns):
        return None
    i = next(i for i, w in enumerate(p.pfns) if w)
    word = p.pfns[i]
    flags = "|".join(name for flag, name in FLAG_NAMES if word & flag) or hex(word)
    return (f"GFN {p.base_pfn + i:#x} keeps {flags} in its pfns[] word after {op}: the "
            "table says Normal (word 0)")


def _non_device(pte) -> list[int]:
    """Indices of the pages not backed by a device page."""
    return [i for i, v in enumerate(pte) if v >= 0]
