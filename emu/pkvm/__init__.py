"""arm64 pKVM at EL2: page ownership between the host, the hypervisor and guests.

- ``memory``: page states, ``struct hyp_page`` / ``hyp_vmemmap``, the ``hyp_pool`` allocator;
- ``pgtable``: the page-table code (walks, map, set_owner, unmap, the guest helpers);
- ``mem_protect``: the EL2 state (``Hyp``) and every ownership transition, the host abort
  path;
- ``hyp_main``: the host's hypercalls;
- ``invariants``: the ownership invariants and ``may_access``;
- ``releases``: which release has which bug and behaviour;
- ``api``: ``Pkvm``, the direct API.
"""

from .api import PageInfo, Pkvm, ownership_table
from .invariants import HOST, HYP, INVARIANTS, check_all, may_access, register
from .mem_protect import Hyp, PkvmHypVcpu, PkvmHypVm
from .memory import (
    PKVM_NOPAGE,
    PKVM_PAGE_OWNED,
    PKVM_PAGE_SHARED_BORROWED,
    PKVM_PAGE_SHARED_OWNED,
)

__all__ = [
    "HOST",
    "HYP",
    "INVARIANTS",
    "PKVM_NOPAGE",
    "PKVM_PAGE_OWNED",
    "PKVM_PAGE_SHARED_BORROWED",
    "PKVM_PAGE_SHARED_OWNED",
    "Hyp",
    "PageInfo",
    "Pkvm",
    "PkvmHypVcpu",
    "PkvmHypVm",
    "check_all",
    "may_access",
    "ownership_table",
    "register",
]
