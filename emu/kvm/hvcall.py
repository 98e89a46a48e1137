"""Hcall and ucall numbers, flags and return codes (asm/hvcall.h, asm/ultravisor-api.h).

Every U_* return code equals the H_* code of the same name, so one table serves both.
``describe_hcall`` and ``describe_ucall`` name a call with its decoded arguments, for the
explained timeline.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..hw.memory import PAGE_SHIFT, PAGE_SIZE  # re-exported: the hcall ABI's page size

MASK64 = (1 << 64) - 1
"""A 64-bit register: what a guest passes in r3, r4, ... is its argument modulo 2**64."""

# return codes
H_SUCCESS = 0
H_BUSY = 1
H_NOT_AVAILABLE = 3
H_HARDWARE = -1
H_FUNCTION = -2
H_PRIVILEGE = -3
H_PARAMETER = -4
H_BAD_MODE = -5
H_NOT_FOUND = -7
H_NO_MEM = -9
H_AUTHORITY = -10
H_PERMISSION = -11
H_P2 = -55
H_P3 = -56
H_P4 = -57
H_UNSUPPORTED = -67
H_INTERRUPT = -69
H_STATE = -75
H_IN_USE = -77
H_TOO_HARD = 9999
U_SUCCESS = H_SUCCESS

# hcalls the Ultravisor issues to the HV on behalf of an SVM
H_SVM_PAGE_IN = 0xEF00
H_SVM_PAGE_OUT = 0xEF04
H_SVM_INIT_START = 0xEF08
H_SVM_INIT_DONE = 0xEF0C
H_SVM_INIT_ABORT = 0xEF14

H_PAGE_IN_SHARED = 0x1

H_REGISTER_VPA = 0xDC

# ucalls
UV_WRITE_PATE = 0xF104
UV_ESM = 0xF110
UV_RETURN = 0xF11C
UV_REGISTER_MEM_SLOT = 0xF120
UV_UNREGISTER_MEM_SLOT = 0xF124
UV_PAGE_IN = 0xF128
UV_PAGE_OUT = 0xF12C
UV_SHARE_PAGE = 0xF130
UV_UNSHARE_PAGE = 0xF134
UV_PAGE_INVAL = 0xF138
UV_SVM_TERMINATE = 0xF13C
UV_UNSHARE_ALL_PAGES = 0xF140

# Nested virtualisation (asm/hvcall.h): H_FUNCTION unless the VM may run nested guests.
H_SET_PARTITION_TABLE = 0xF800
H_ENTER_NESTED = 0xF804
"""r4 = GPA of the hv_guest_state, r5 = GPA of the pt_regs."""
H_TLB_INVALIDATE = 0xF808

# kvm->arch.secure_guest
KVMPPC_SECURE_INIT_START = 0x1
KVMPPC_SECURE_INIT_DONE = 0x2

# GFN state flags in kvmppc_uvmem_slot.pfns[] (651a63101134)
KVMPPC_GFN_UVMEM_PFN = 1 << 63
KVMPPC_GFN_MEM_PFN = 1 << 62
KVMPPC_GFN_SHARED = 1 << 61
KVMPPC_GFN_SECURE = KVMPPC_GFN_UVMEM_PFN | KVMPPC_GFN_MEM_PFN
KVMPPC_GFN_FLAG_MASK = KVMPPC_GFN_SECURE | KVMPPC_GFN_SHARED
KVMPPC_GFN_PFN_MASK = ~KVMPPC_GFN_FLAG_MASK & ((1 << 64) - 1)

EBUSY = 16
EINVAL = 22
EFAULT = 14

NAMES = {v: k for k, v in list(globals().items())
         if k.startswith(("H_SVM", "UV_", "H_SET_PART", "H_ENTER_NE", "H_TLB_INV"))
         and isinstance(v, int)}
RETURN_NAMES = {H_SUCCESS: "H_SUCCESS", H_BUSY: "H_BUSY", H_NOT_AVAILABLE: "H_NOT_AVAILABLE",
                H_HARDWARE: "H_HARDWARE", H_FUNCTION: "H_FUNCTION", H_PRIVILEGE: "H_PRIVILEGE",
                H_PARAMETER: "H_PARAMETER", H_BAD_MODE: "H_BAD_MODE",
                H_NOT_FOUND: "H_NOT_FOUND", H_NO_MEM: "H_NO_MEM", H_AUTHORITY: "H_AUTHORITY",
                H_PERMISSION: "H_PERMISSION", H_P2: "H_P2", H_P3: "H_P3", H_P4: "H_P4",
                H_UNSUPPORTED: "H_UNSUPPORTED", H_INTERRUPT: "H_INTERRUPT", H_STATE: "H_STATE",
                H_IN_USE: "H_IN_USE", H_TOO_HARD: "H_TOO_HARD"}


def rc_name(rc: int) -> str:
    return RETURN_NAMES.get(rc, str(rc))


_ARGUMENTS = {
    "H_SVM_PAGE_IN": ("gpa", "flags", "page_shift"),
    "H_SVM_PAGE_OUT": ("gpa", "flags", "page_shift"),
    "H_SVM_INIT_START": (),
    "H_SVM_INIT_DONE": (),
    "H_SVM_INIT_ABORT": (),
    "H_REGISTER_VPA": ("flags", "vcpuid", "vpa"),
    "UV_PAGE_IN": ("lpid", "src_ra", "gpa", "flags?", "page_shift"),
    "UV_PAGE_OUT": ("lpid", "dst_ra", "gpa", "flags?", "page_shift"),
    "UV_PAGE_INVAL": ("lpid", "gpa", "page_shift"),
    "UV_REGISTER_MEM_SLOT": ("lpid", "gpa", "size", "flags?", "slot"),
    "UV_UNREGISTER_MEM_SLOT": ("lpid", "slot"),
    "UV_SVM_TERMINATE": ("lpid",),
    "UV_ESM": ("gfn", "npages", "share_gfn", "share_npages"),
    "UV_SHARE_PAGE": ("gfn", "npages"),
    "UV_UNSHARE_PAGE": ("gfn", "npages"),
    "UV_UNSHARE_ALL_PAGES": (),
}
"""The registers of each call, in order: a ``gpa`` is shown as its GFN (with a standard
``page_shift``, which is then not shown), a ``size`` as pages, a ``*_ra`` (the HV's page) not
at all, a ``flags?`` only when set, UV_ESM's pages to share only if there are any."""
_DECIMAL = ("lpid", "slot", "vcpuid", "npages", "share_npages", "page_shift")


def describe_hcall(req: int, args: Sequence[int]) -> str:
    """``H_SVM_PAGE_IN(gfn=0x5, flags=H_PAGE_IN_SHARED)``: an hcall (from its number and its
    argument registers) in kernel terms."""
    name = "H_REGISTER_VPA" if req == H_REGISTER_VPA else NAMES.get(req)
    return _describe(name or f"hcall {req & MASK64:#x}", args)


def describe_ucall(call: int | str, args: Sequence[int]) -> str:
    """``UV_PAGE_IN(lpid=1, gfn=0x5)``: a ucall (by number or name) in kernel terms."""
    name = call if isinstance(call, str) else NAMES.get(call, f"ucall {call & MASK64:#x}")
    return _describe(name, args)


def _describe(name: str, args: Sequence[int]) -> str:
    regs = [a & MASK64 for a in args]
    fields = _ARGUMENTS.get(name)
    if fields is None:  # a call the model does not know: its raw registers
        more = ", ..." if len(regs) > 6 else ""
        return f"{name}({', '.join(f'{r:#x}' for r in regs[:6])}{more})"
    value = dict(zip(fields, regs + [0] * len(fields), strict=False))
    standard = value.get("page_shift", PAGE_SHIFT) == PAGE_SHIFT
    shown = []
    for field in fields:
        v, key = value[field], field.rstrip("?")
        if field.endswith("_ra") or (field.endswith("?") and not v) or \
                (key == "page_shift" and standard) or \
                (key.startswith("share_") and not value["share_npages"]):
            continue
        if key == "gpa" and standard:
            shown.append(f"gfn={v >> PAGE_SHIFT:#x}")
        elif key == "size" and not v % PAGE_SIZE:
            shown.append(f"npages={v >> PAGE_SHIFT}")
        elif key == "flags" and name == "H_SVM_PAGE_IN" and v == H_PAGE_IN_SHARED:
            shown.append("flags=H_PAGE_IN_SHARED")
        elif key in _DECIMAL or (key == "flags" and not v):
            shown.append(f"{key}={v}")
        else:
            shown.append(f"{key}={v:#x}")
    return f"{name}({', '.join(shown)})"
