"""What the HV sees of the Ultravisor: the ucalls it makes (asm/ultravisor.h), and the
firmware's books its per-hcall checks compare with its own.

A Protocol, so the kvm layer names the firmware's interface without importing the actor
that implements it (``emu.actors.ultravisor``): layers point down only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class UltravisorCalls(Protocol):
    svms: Mapping[int, Any]
    """lpid -> the UV's state of that secure VM (``SvmState``): its shared GFNs
    (``shared``), its secure frames (``frames``), the GFNs paged out (``paged_out``).
    Only the checks read it; the model's HV code never does."""

    def svm(self, lpid: int) -> Any:
        """``svms.get(lpid)``, reported as a read of that SVM's record (``uvsvm:<lpid>``):
        a check made inside an hcall reads the firmware's books in that step. Its
        ``touch_gfn(gfn)`` and ``touch_all()`` report the reads of one GFN's books and of
        all of them."""

    async def uv_register_mem_slot(self, lpid: int, start_gpa: int, size: int, flags: int,
                                   slot_id: int) -> int: ...

    async def uv_unregister_mem_slot(self, lpid: int, slot_id: int) -> int: ...

    async def uv_page_in(self, lpid: int, src_ra: int, dst_gpa: int, flags: int,
                         page_shift: int) -> int: ...

    async def uv_page_out(self, lpid: int, dst_ra: int, src_gpa: int, flags: int,
                          page_shift: int) -> int: ...

    async def uv_page_inval(self, lpid: int, gpa: int, page_shift: int) -> int: ...

    async def uv_svm_terminate(self, lpid: int) -> int: ...
