"""Physical memory: normal and secure page frames with symbolic contents.

A frame holds a small value (what the guest last wrote there, not 64 KiB of bytes), whether
it is encrypted, and whether the value is an SVM's secret (written while its GFN was
secure). Only touched frames have an object, so a 100 GB guest costs memory only for the
pages it touches. A frame is an object of the access relation (``sim.accesses``),
``frame:<kind>:<pfn>``: taking it (``FramePool.get``, ``[pfn]``) counts as a write, since
the caller may change its contents; allocating and freeing write the pool, ``frames:<kind>``.
A page's references (``PageRefs``) are ``page:<kind>:<pfn>``: taking or dropping one, or the
mapping going, writes it; counting them (``count``, ``unmapped``) reads it.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from ..sim import accesses
from ..sim.explain import numbered

PAGE_SHIFT = 16
"""The base page size of a 64-bit POWER server kernel (CONFIG_PPC_64K_PAGES): 64 KiB."""
PAGE_SIZE = 1 << PAGE_SHIFT


@attrs.define(slots=True)
class Frame:
    value: int = 0
    encrypted: bool = False
    secret: bool = False
    """The plaintext (or ciphertext) of a Secure GFN: the HV must never see it unencrypted."""
    zero: bool = False
    """The Ultravisor's zero page for a GFN whose content never reached it (a GFN that
    H_SVM_INIT_DONE moved to secure memory without a copy), or a copy of one."""

    def copy_from(self, src: Frame, *, encrypt: bool) -> None:
        self.value, self.secret, self.zero = src.value, src.secret, src.zero
        self.encrypted = encrypt and src.secret


class PageRefs:
    """Page references beyond the one a page's mapping holds (get_user_pages, a long-term
    pin, a fault's reference on a device page), and the pages whose mapping went while one
    was held: the last ``put_page`` frees those, through ``free``."""

    def __init__(self, free: Callable[[int], None], kind: str) -> None:
        self.counts: dict[int, int] = {}
        """pfn -> references held beyond its mapping (read it through ``count``)."""
        self._unmapped: dict[int, bool] = {}
        self._free = free
        self._name = f"page:{kind}:"

    def touch(self, pfn: int, write: bool = False) -> None:
        """This step reads (writes) the page's references, ``page:<kind>:<pfn>``."""
        if accesses.current.on:
            accesses.current.touch(f"{self._name}{pfn:#x}", write)

    def count(self, pfn: int) -> int:
        """The references held beyond the page's mapping (page_count less the mapping's)."""
        self.touch(pfn)
        return self.counts.get(pfn, 0)

    def get_page(self, pfn: int) -> None:
        self.touch(pfn, True)
        self.counts[pfn] = self.counts.get(pfn, 0) + 1

    def put_page(self, pfn: int) -> None:
        self.touch(pfn, True)
        left = self.counts[pfn] - 1
        if left:
            self.counts[pfn] = left
            return
        del self.counts[pfn]
        if self._unmapped.pop(pfn, False):
            self._free(pfn)

    def release(self, pfn: int) -> None:
        """The page's mapping went: free it now, or at its last ``put_page``."""
        self.touch(pfn, True)
        if pfn in self.counts:
            self._unmapped[pfn] = True
        else:
            self._free(pfn)

    def unmapped(self, pfn: int) -> bool:
        """Its mapping went: the next ``put_page`` may be the last reference."""
        self.touch(pfn)
        return self._unmapped.get(pfn, False)


class FramePool:
    """One kind of memory (normal RAM, or the Ultravisor's secure memory).

    Which pfns are allocated is a bitmap; a frame's contents exist only once touched (a
    zero page until then), so preallocating 100 GB costs 1.6 MB, not 1.6 M objects.

    ``refs`` counts the references beyond a page's mapping (get_user_pages, a long-term
    pin); a page whose mapping goes (``refs.release``: migrated away, unmapped, reclaimed)
    while one is held is freed by the last ``refs.put_page``.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.frames: dict[int, Frame] = {}
        self._live = bytearray(1)  # pfn 0 is never handed out: 0 means "no page"
        self._free: list[int] = []
        self.refs = PageRefs(self.free, kind)

    def name(self, pfn: int) -> str:
        """The access relation's name of the frame ``pfn``, ``frame:<kind>:<pfn>``."""
        return f"frame:{self.kind}:{pfn:#x}"

    def alloc(self) -> int:
        if accesses.current.on:
            accesses.current.touch(f"frames:{self.kind}", True)
        if self._free:
            pfn = self._free.pop()
        else:
            pfn = len(self._live)
            self._live.append(0)
        self._live[pfn] = 1
        return pfn

    def alloc_range(self, n: int) -> range:
        """``n`` fresh consecutive pfns (QEMU populating a whole memory region)."""
        if accesses.current.on:
            accesses.current.touch(f"frames:{self.kind}", True)
        first = len(self._live)
        self._live.extend(b"\x01" * n)
        return range(first, first + n)

    def free(self, pfn: int) -> None:
        if accesses.current.on:
            accesses.current.touch(f"frames:{self.kind}", True)
            accesses.current.touch(f"frame:{self.kind}:{pfn:#x}", True)
        self._live[pfn] = 0
        self.frames.pop(pfn, None)
        self._free.append(pfn)

    def get(self, pfn: int) -> Frame | None:
        """The frame, or None if the pfn is not allocated (freed under someone's feet)."""
        if accesses.current.on:
            accesses.current.touch(f"frame:{self.kind}:{pfn:#x}", True)
        if 0 < pfn < len(self._live) and self._live[pfn]:
            return self[pfn]
        return None

    def __getitem__(self, pfn: int) -> Frame:
        if accesses.current.on:
            accesses.current.touch(f"frame:{self.kind}:{pfn:#x}", True)
        frame = self.frames.get(pfn)
        if frame is None:
            if not (0 < pfn < len(self._live) and self._live[pfn]):
                raise KeyError(f"{self.kind} pfn {pfn} is not allocated")
            frame = self.frames[pfn] = Frame()
        return frame


numbered("frame", "pfn", "frame")  # "pfn 0x5" in a message numbers frames and pages
numbered("page", "pfn")


class PhysicalMemory:
    def __init__(self) -> None:
        self.normal = FramePool("normal")
        self.secure = FramePool("secure")
