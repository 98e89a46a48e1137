"""Physical memory: normal and secure page frames with symbolic contents.

A frame holds a small value (what the guest last wrote there, not 64 KiB of bytes), whether
it is encrypted, and whether the value is an SVM's secret (written while its GFN was
secure). Frames are allocated on first use and tracked sparsely, so a 100 GB guest costs
memory only for the pages it touches.
"""

from __future__ import annotations

import attrs


@attrs.define(slots=True)
class Frame:
    value: int = 0
    encrypted: bool = False
    secret: bool = False
    """The plaintext (or ciphertext) of a Secure GFN: the HV must never see it unencrypted."""

    def copy_from(self, src: Frame, *, encrypt: bool) -> None:
        self.value, self.secret = src.value, src.secret
        self.encrypted = encrypt and src.secret


class FramePool:
    """One kind of memory (normal RAM, or the Ultravisor's secure memory)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.frames: dict[int, Frame] = {}
        self._free: list[int] = []
        self._next = 1  # pfn 0 is never handed out: 0 means "no page" in the tables

    def alloc(self) -> int:
        pfn = self._free.pop() if self._free else self._next
        if pfn == self._next:
            self._next += 1
        self.frames[pfn] = Frame()
        return pfn

    def free(self, pfn: int) -> None:
        del self.frames[pfn]
        self._free.append(pfn)

    def __getitem__(self, pfn: int) -> Frame:
        return self.frames[pfn]

    def __len__(self) -> int:
        return len(self.frames)


class PhysicalMemory:
    def __init__(self) -> None:
        self.normal = FramePool("normal")
        self.secure = FramePool("secure")
