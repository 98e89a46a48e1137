"""Watch the GFN state table of a secure VM as it boots, shares, unshares and terminates.

Run it:  python examples/svm_gfn_table.py

One vCPU drives the life cycle step by step (the Ultravisor issuing each H_SVM_* hcall on
its behalf), and QEMU resets the VM at the end (KVM_PPC_SVM_OFF, which makes the UV
terminate it). After each step the HV's pfns[] word of every GFN is decoded:
    S  Secure, paged in (KVMPPC_GFN_UVMEM_PFN | device pfn)
    s  Secure, paged out (KVMPPC_GFN_MEM_PFN: the HV holds the encrypted copy)
    H  Shared (KVMPPC_GFN_SHARED)
    .  Normal
"""

from __future__ import annotations

import emu
from emu.kvm.hvcall import (
    H_PAGE_IN_SHARED,
    KVMPPC_GFN_MEM_PFN,
    KVMPPC_GFN_UVMEM_PFN,
    PAGE_SHIFT,
    rc_name,
)
from emu.kvm.uvmem import hv_gfn_state, kvmppc_uvmem_slot_lookup, vm_state
from emu.machines.svm import SvmMachine

GFNS = 12
rows: list[str] = []


def snapshot(kvm, what: str, rc: int | None = None) -> None:
    letters = []
    for gfn in range(GFNS):
        word, state = kvmppc_uvmem_slot_lookup(kvm, gfn), hv_gfn_state(kvm, gfn)
        letters.append("S" if word & KVMPPC_GFN_UVMEM_PFN else "s" if word & KVMPPC_GFN_MEM_PFN
                       else "H" if state == "Shared" else ".")
    result = "" if rc is None else f" -> {rc_name(rc)}"
    rows.append(f"{(what + result):<48} {vm_state(kvm):<10} {' '.join(letters)}")


@emu.scenario()
def gfn_table(m: emu.Machine) -> None:
    """One SVM through its whole life, step by step."""
    sm = SvmMachine(m)
    kvm = sm.vm(1, ((0, GFNS),))
    done = m.completion("guest done")

    async def guest(g) -> None:
        for gfn in range(3):  # the image
            await g.write(gfn << PAGE_SHIFT, 100 + gfn)
        snapshot(kvm, "boot as a normal VM")
        snapshot(kvm, "H_SVM_INIT_START", await g.uv_hcall("H_SVM_INIT_START"))
        for gfn in range(3):
            rc = await g.uv_hcall("H_SVM_PAGE_IN", gfn << PAGE_SHIFT, 0, PAGE_SHIFT)
        snapshot(kvm, "H_SVM_PAGE_IN GFN 0-2 (the image)", rc)
        rc = await g.uv_hcall("H_SVM_PAGE_IN", 3 << PAGE_SHIFT, H_PAGE_IN_SHARED, PAGE_SHIFT)
        snapshot(kvm, "share GFN 3 during ESM", rc)
        snapshot(kvm, "H_SVM_INIT_DONE", await g.uv_hcall("H_SVM_INIT_DONE"))
        snapshot(kvm, "UV_SHARE_PAGE GFN 5", await g.share(5))
        snapshot(kvm, "UV_UNSHARE_PAGE GFN 3", await g.unshare(3))
        await g.write(7 << PAGE_SHIFT, 0x5EC)
        snapshot(kvm, "store a secret to GFN 7")
        done.complete()

    async def qemu(h) -> None:
        await done.wait_for_completion()
        await h.read(1, 7)  # the host fault pages GFN 7 out: encrypted, not readable
        snapshot(kvm, "QEMU reads GFN 7 (page-out)")
        snapshot(kvm, "KVM_PPC_SVM_OFF (UV terminates)", await h.svm_off(1))

    sm.vcpu(kvm, guest)
    sm.host(qemu)


if __name__ == "__main__":
    result = emu.run(gfn_table, seed=1)
    print(f"{'step':<48} {'VM':<10} " + " ".join(f"{g:x}" for g in range(GFNS)))
    print("\n".join(rows))
    print(f"\n{result.steps} steps, {'clean' if result.ok else result.violation.describe()}")
