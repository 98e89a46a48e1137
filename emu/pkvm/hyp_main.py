"""The host's hypercalls into pKVM (arch/arm64/kvm/hyp/nvhe/hyp-main.c, v6.16):
``handle_host_hcall`` decodes the SMCCC function id as the kernel does and runs the
handler, which reads its arguments from the host's registers x1.. and writes its return
code to x1; x0 says whether the call was supported at all.

| x0 after the call        | when                                                        |
|--------------------------|-------------------------------------------------------------|
| SMCCC_RET_SUCCESS (0)    | the id names a handler available after pKVM finalisation    |
| SMCCC_RET_NOT_SUPPORTED  | an id below __pkvm_prot_finalize (init-only calls, refused  |
|                          | once pKVM is up), past the table, or not vendor-hyp at all  |

The ids are ``KVM_HOST_SMCCC_ID(n)`` where ``n`` is the position in enum
__kvm_host_smccc_func (asm/kvm_asm.h), reconstructed for v6.16 from the patches of the
v6.14-v6.16 pulls (the order of entries the model does not handle is not load-bearing).
Handlers of calls that have nothing to do with ownership (vCPU run, vGIC, timers, VM
creation) are not modelled: calling one raises EmuError (a scenario's mistake, not the
host's). pKVM is always initialised here (is_protected_kvm_enabled()).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ..errors import EmuError
from .errno_base import EINVAL, EPERM
from .mem_protect import (
    Hyp,
    __pkvm_host_mkyoung_guest,
    __pkvm_host_relax_perms_guest,
    __pkvm_host_share_guest,
    __pkvm_host_share_hyp,
    __pkvm_host_test_clear_young_guest,
    __pkvm_host_unshare_guest,
    __pkvm_host_unshare_hyp,
    __pkvm_host_wrprotect_guest,
    get_np_pkvm_hyp_vm,
    pkvm_load_hyp_vcpu,
    pkvm_put_hyp_vcpu,
    pkvm_refill_memcache,
)
from .pgtable import __kvm_tlb_flush_vmid

SMCCC_RET_SUCCESS = 0
SMCCC_RET_NOT_SUPPORTED = -1
ARM_SMCCC_CALL_HINTS = 1 << 16
"""The SVE hint bit (ARM_SMCCC_1_3_SVE_HINT), masked off the id."""
ARM_SMCCC_FAST_CALL = 1 << 31
ARM_SMCCC_SMC_64 = 1 << 30
ARM_SMCCC_OWNER_VENDOR_HYP = 6
ARM_SMCCC_OWNER_SHIFT = 24

HOST_SMCCC_FUNCS = (
    # available only before pKVM finalisation
    "__kvm_hyp_init",
    "__pkvm_init",
    "__pkvm_create_private_mapping",
    "__pkvm_cpu_set_vector",
    "__kvm_enable_ssbs",
    "__vgic_v3_init_lrs",
    "__vgic_v3_get_gic_config",
    "__pkvm_prot_finalize",
    # available after it
    "__pkvm_host_share_hyp",
    "__pkvm_host_unshare_hyp",
    "__pkvm_host_share_guest",
    "__pkvm_host_unshare_guest",
    "__pkvm_host_relax_perms_guest",
    "__pkvm_host_wrprotect_guest",
    "__pkvm_host_test_clear_young_guest",
    "__pkvm_host_mkyoung_guest",
    "__kvm_adjust_pc",
    "__kvm_vcpu_run",
    "__kvm_flush_vm_context",
    "__kvm_tlb_flush_vmid_ipa",
    "__kvm_tlb_flush_vmid_ipa_nsh",
    "__kvm_tlb_flush_vmid",
    "__kvm_tlb_flush_vmid_range",
    "__kvm_flush_cpu_context",
    "__kvm_timer_set_cntvoff",
    "__vgic_v3_save_vmcr_aprs",
    "__vgic_v3_restore_vmcr_aprs",
    "__pkvm_init_vm",
    "__pkvm_init_vcpu",
    "__pkvm_teardown_vm",
    "__pkvm_vcpu_load",
    "__pkvm_vcpu_put",
    "__pkvm_tlb_flush_vmid",
)
"""enum __kvm_host_smccc_func, in order: a name's index is its function number."""

HCALL_MIN = HOST_SMCCC_FUNCS.index("__pkvm_prot_finalize")
"""Once pKVM is initialised, lower numbers are refused."""


def KVM_HOST_SMCCC_ID(n: int) -> int:
    return (ARM_SMCCC_FAST_CALL | ARM_SMCCC_SMC_64
            | (ARM_SMCCC_OWNER_VENDOR_HYP << ARM_SMCCC_OWNER_SHIFT) | n)


def KVM_HOST_SMCCC_FUNC(name: str) -> int:
    """The SMCCC function id the host puts in x0 to call ``name``."""
    return KVM_HOST_SMCCC_ID(HOST_SMCCC_FUNCS.index(name))


Regs = list[int]
"""x0..x7 of the host's context."""
Handler = Callable[[Hyp, int, Regs], Awaitable[None]]


async def handle___pkvm_prot_finalize(hyp: Hyp, cpu: int, regs: Regs) -> None:
    # HCR_EL2.VM is already set on every CPU
    regs[1] = -EPERM


async def handle___pkvm_host_share_hyp(hyp: Hyp, cpu: int, regs: Regs) -> None:
    regs[1] = await __pkvm_host_share_hyp(hyp, regs[1])


async def handle___pkvm_host_unshare_hyp(hyp: Hyp, cpu: int, regs: Regs) -> None:
    regs[1] = await __pkvm_host_unshare_hyp(hyp, regs[1])


async def handle___pkvm_host_share_guest(hyp: Hyp, cpu: int, regs: Regs) -> None:
    pfn, gfn, nr_pages, prot = regs[1], regs[2], regs[3], regs[4]
    hyp_vcpu = hyp.loaded_hyp_vcpu[cpu]
    ret = -EINVAL
    if hyp_vcpu is not None and not hyp_vcpu.vm.is_protected:
        ret = await pkvm_refill_memcache(hyp, hyp_vcpu)
        if not ret:
            ret = await __pkvm_host_share_guest(hyp, pfn, gfn, nr_pages, hyp_vcpu, prot)
    regs[1] = ret


async def handle___pkvm_host_unshare_guest(hyp: Hyp, cpu: int, regs: Regs) -> None:
    handle, gfn, nr_pages = regs[1], regs[2], regs[3]
    vm = await get_np_pkvm_hyp_vm(hyp, handle)
    regs[1] = -EINVAL if vm is None else \
        await __pkvm_host_unshare_guest(hyp, gfn, nr_pages, vm)


async def handle___pkvm_host_relax_perms_guest(hyp: Hyp, cpu: int, regs: Regs) -> None:
    gfn, prot = regs[1], regs[2]
    hyp_vcpu = hyp.loaded_hyp_vcpu[cpu]
    regs[1] = -EINVAL if hyp_vcpu is None or hyp_vcpu.vm.is_protected else \
        await __pkvm_host_relax_perms_guest(hyp, gfn, hyp_vcpu, prot)


async def handle___pkvm_host_wrprotect_guest(hyp: Hyp, cpu: int, regs: Regs) -> None:
    handle, gfn, nr_pages = regs[1], regs[2], regs[3]
    vm = await get_np_pkvm_hyp_vm(hyp, handle)
    regs[1] = -EINVAL if vm is None else \
        await __pkvm_host_wrprotect_guest(hyp, gfn, nr_pages, vm)


async def handle___pkvm_host_test_clear_young_guest(hyp: Hyp, cpu: int, regs: Regs) -> None:
    handle, gfn, nr_pages, mkold = regs[1], regs[2], regs[3], regs[4]
    vm = await get_np_pkvm_hyp_vm(hyp, handle)
    regs[1] = -EINVAL if vm is None else \
        await __pkvm_host_test_clear_young_guest(hyp, gfn, nr_pages, bool(mkold), vm)


async def handle___pkvm_host_mkyoung_guest(hyp: Hyp, cpu: int, regs: Regs) -> None:
    hyp_vcpu = hyp.loaded_hyp_vcpu[cpu]
    regs[1] = -EINVAL if hyp_vcpu is None or hyp_vcpu.vm.is_protected else \
        await __pkvm_host_mkyoung_guest(hyp, regs[1], hyp_vcpu)


async def handle___pkvm_vcpu_load(hyp: Hyp, cpu: int, regs: Regs) -> None:
    # returns nothing: x1 keeps the handle the host passed
    await pkvm_load_hyp_vcpu(hyp, cpu, regs[1], regs[2])


async def handle___pkvm_vcpu_put(hyp: Hyp, cpu: int, regs: Regs) -> None:
    pkvm_put_hyp_vcpu(hyp, cpu)


async def handle___pkvm_tlb_flush_vmid(hyp: Hyp, cpu: int, regs: Regs) -> None:
    vm = await get_np_pkvm_hyp_vm(hyp, regs[1])
    if vm is not None:
        await __kvm_tlb_flush_vmid(vm.pgt)


HOST_HCALL: dict[str, Handler] = {
    "__pkvm_prot_finalize": handle___pkvm_prot_finalize,
    "__pkvm_host_share_hyp": handle___pkvm_host_share_hyp,
    "__pkvm_host_unshare_hyp": handle___pkvm_host_unshare_hyp,
    "__pkvm_host_share_guest": handle___pkvm_host_share_guest,
    "__pkvm_host_unshare_guest": handle___pkvm_host_unshare_guest,
    "__pkvm_host_relax_perms_guest": handle___pkvm_host_relax_perms_guest,
    "__pkvm_host_wrprotect_guest": handle___pkvm_host_wrprotect_guest,
    "__pkvm_host_test_clear_young_guest": handle___pkvm_host_test_clear_young_guest,
    "__pkvm_host_mkyoung_guest": handle___pkvm_host_mkyoung_guest,
    "__pkvm_vcpu_load": handle___pkvm_vcpu_load,
    "__pkvm_vcpu_put": handle___pkvm_vcpu_put,
    "__pkvm_tlb_flush_vmid": handle___pkvm_tlb_flush_vmid,
}
"""host_hcall[]: the handlers the model has, by name."""

_BY_NUMBER: tuple[Handler | None, ...] = tuple(HOST_HCALL.get(n) for n in HOST_SMCCC_FUNCS)

_FEATURES = {
    "__pkvm_host_share_guest": "has_guest_share",
    "__pkvm_host_unshare_guest": "has_guest_share",
    "__pkvm_host_relax_perms_guest": "has_guest_share",
    "__pkvm_host_wrprotect_guest": "has_guest_share",
    "__pkvm_host_test_clear_young_guest": "has_guest_share",
    "__pkvm_host_mkyoung_guest": "has_guest_share",
}
"""Calls a release may lack (Behaviour field): before it, the id is not in the table."""


async def host_hcall(hyp: Hyp, cpu: int, func_id: int, *args: int) -> tuple[int, int]:
    """The host's ``hvc #0`` on ``cpu`` with x0 = ``func_id`` and x1.. = ``args``: (x0, x1)
    after EL2 returns (handle_host_hcall)."""
    regs: Regs = [func_id, *args, *([0] * (7 - len(args)))]
    n = (func_id & ~ARM_SMCCC_CALL_HINTS) - KVM_HOST_SMCCC_ID(0)
    if not HCALL_MIN <= n < len(HOST_SMCCC_FUNCS):
        return SMCCC_RET_NOT_SUPPORTED, regs[1]
    name = HOST_SMCCC_FUNCS[n]
    feature = _FEATURES.get(name)
    if feature is not None and not getattr(hyp.behaviour, feature):
        return SMCCC_RET_NOT_SUPPORTED, regs[1]
    handler = _BY_NUMBER[n]
    if handler is None:
        raise EmuError(f"hypercall {name} is not modelled (only the ownership calls are: "
                       f"{', '.join(HOST_HCALL)})")
    regs[0] = SMCCC_RET_SUCCESS
    await handler(hyp, cpu, regs)
    return regs[0], regs[1]


async def handle_host_hcall(hyp: Hyp, cpu: int, func_id: int, *args: int) -> int:
    """``host_hcall`` as the host kernel's kvm_call_hyp_nvhe() sees it: x1 (the handler's
    return code) when the call was supported, else x0 (SMCCC_RET_NOT_SUPPORTED)."""
    x0, x1 = await host_hcall(hyp, cpu, func_id, *args)
    return x1 if x0 == SMCCC_RET_SUCCESS else x0
