"""One page of an arm64 pKVM machine walked through every ownership state, call by call.

A scripted host with two CPUs and one non-protected guest, driven through the direct API
(``emu.pkvm.Pkvm``: the same model code the hunts run, one call at a time): CPU0 is the
host kernel, CPU1 runs the guest's vCPU. After each call, the return code the v6.16 kernel
gives and the page's row of the ownership table (host state, hypervisor state, pins,
host_share_guest_count, guest mappings). Every invariant is checked after every call.
Run: python examples/pkvm_page_walk.py
"""

from __future__ import annotations

from emu.pkvm import Pkvm
from emu.pkvm.errno_base import NAMES
from emu.sim.sequential import Finding

GFN = 0x10


def main() -> None:
    p = Pkvm(nr_cpus=2, nr_vms=1, nr_vcpus=1)
    page, tables = p.host_pfns[0], p.host_pfns[1:3]
    addr = page << 12
    print(p.table([page]).splitlines()[0])

    def show(call: str, rc: int | None = None) -> None:
        problem = p.check()
        assert problem is None, problem
        code = "" if rc is None else f" -> {NAMES.get(-rc, rc) if rc < 0 else rc}"
        print(f"{call}{code}")
        print(p.table([page]).splitlines()[1])

    show("boot")
    show(f"cpu0 writes {addr:#x} (stage-2 fault: EL2 idmaps it)",
         p.host_access(0, addr, write=True) - page)
    show("__pkvm_host_share_hyp", p.hcall(0, "__pkvm_host_share_hyp", page))
    show("hyp_pin_shared_mem (EL2 maps it on the first pin)", p.hyp_pin_shared_mem(page))
    show("__pkvm_host_unshare_hyp while pinned", p.hcall(0, "__pkvm_host_unshare_hyp", page))
    p.hyp_unpin_shared_mem(page)
    show("hyp_unpin_shared_mem")
    show("__pkvm_host_unshare_hyp", p.hcall(0, "__pkvm_host_unshare_hyp", page))
    handle = p.ffa_mem_share(page)
    show("FF-A MEM_SHARE to the secure world (__pkvm_host_share_ffa)")
    show("FF-A MEM_RECLAIM (__pkvm_host_unshare_ffa)", p.ffa_mem_reclaim(handle))
    p.host_topup_memcache(tables)
    show("cpu1 loads vm0's vCPU", 0 if p.vcpu_load(1) else -1)
    show(f"__pkvm_host_share_guest(gfn {GFN:#x}) on cpu1",
         p.hcall(1, "__pkvm_host_share_guest", page, GFN, 1, 7))
    show(f"the guest writes gfn {GFN:#x}", p.guest_access(1, 0, GFN, write=True) - page)
    show("__pkvm_host_share_hyp while the guest has it",
         p.hcall(0, "__pkvm_host_share_hyp", page))
    show("__pkvm_host_unshare_guest", p.hcall(0, "__pkvm_host_unshare_guest",
                                              p.hyp.vms[0].handle, GFN, 1))
    show("__pkvm_host_donate_hyp (a VM's metadata page)", p.host_donate_hyp(page))
    try:
        p.host_access(0, addr)
    except Finding as found:
        print(f"cpu0 reads {addr:#x} -> EL2 {found.kind}: the host touched a page it gave away")
    show("__pkvm_hyp_donate_host (the VM's teardown)", p.hyp_donate_host(page))
    show(f"cpu0 reads {addr:#x} again (the annotation is gone: it faults back in)",
         p.host_access(0, addr) - page)
    print("every invariant held after every call")


if __name__ == "__main__":
    main()
