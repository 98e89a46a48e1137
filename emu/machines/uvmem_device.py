"""The uvmem device as a machine builds it: its ``kvmppc_uvmem_page_pvt`` arrays report a
use after ``page_free`` (``use-after-free``), and grow only as far as device pages are used
(a 1 TB guest has 33.6 M device pages, of which at most half are ever used)."""

from __future__ import annotations

from array import array
from typing import Any

from ..kvm.uvmem import PVT_VALID, UvmemDevice
from ..sim import Machine


class _CheckedPvt:
    """One array of ``kvmppc_uvmem_page_pvt`` fields, indexed by device pfn - 1, that
    reports a use after ``page_free``: a pvt is live from ``kvmppc_uvmem_get_page`` (the
    bitmap bit set) until ``page_free`` clears both the bit and PVT_VALID. Slices (the
    INIT_DONE runs, the end-of-schedule checks) are not checked.

    The storage grows on demand: it reads as ``npages`` zeros, but only the prefix up to
    the highest device page ever written is allocated (a 1 TB guest has 33.6 M device pages
    of which at most half are ever used). ``compact`` starts the storage with a smaller
    item type than the values it is given (the VM's lpid: one byte while lpids are small)
    and widens it the first time a value does not fit; reads return the same ints."""

    def __init__(self, dev: CheckedUvmemDevice, field: str, typecode: str, npages: int,
                 compact: str | None = None) -> None:
        self._dev, self._field, self._n = dev, field, npages
        self._wide = typecode
        self._data: Any = bytearray() if typecode == "B" and compact is None else \
            array(compact or typecode)

    def _ensure(self, stop: int) -> Any:
        """Allocate the storage up to index ``stop`` (exclusive), zero-filled."""
        data = self._data
        have = len(data)
        if stop > have:
            want = min(self._n, max(stop, have + (have >> 3) + 4096))
            zeros = bytes((want - have) * (data.itemsize if isinstance(data, array) else 1))
            if isinstance(data, array):
                data.frombytes(zeros)
            else:
                data.extend(zeros)
        return data

    def _widen(self) -> None:
        self._data = array(self._wide, self._data)

    def _index(self, i: int) -> int:
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError("array index out of range")
        return i

    def _live(self, i: int, what: str) -> None:
        dev = self._dev
        raw = dev.raw_flags
        if not (dev.bitmap[i] or (i < len(raw) and raw[i] & PVT_VALID)):
            dev.m.fail("use-after-free", f"{what} pvt->{self._field} of device page {i + 1}, "
                       "freed by kvmppc_uvmem_page_free")

    def get(self, i: int) -> int:
        """The raw value at a valid index ``i`` (no use-after-free check)."""
        data = self._data
        return data[i] if i < len(data) else 0

    def __getitem__(self, i):
        if isinstance(i, int):  # (the checks only called when they may have work to do)
            if not 0 <= i < self._n:
                i = self._index(i)
            if not self._dev.bitmap[i]:
                self._live(i, "read of")
            data = self._data
            return data[i] if i < len(data) else 0
        start, stop, _ = i.indices(self._n)
        return self._ensure(max(start, stop))[i]

    def __setitem__(self, i, value) -> None:
        if isinstance(i, int):
            if not 0 <= i < self._n:
                i = self._index(i)
            if not self._dev.bitmap[i]:
                self._live(i, "write to")
            data = self._data
            if i >= len(data):
                data = self._ensure(i + 1)
            try:
                data[i] = value
            except OverflowError:
                if data.typecode == self._wide:
                    raise
                self._widen()
                self._data[i] = value
            return
        start, stop, _ = i.indices(self._n)
        data = self._ensure(max(start, stop))
        if isinstance(value, array) and isinstance(data, array) and \
                value.typecode != data.typecode:
            try:
                if value and value.count(value[0]) == len(value):  # one lpid: the usual
                    value = array(data.typecode, [value[0]]) * len(value)
                else:
                    value = array(data.typecode, value)
            except OverflowError:
                self._widen()
                self._data[i] = value
                return
        data[i] = value

    def __len__(self) -> int:
        return self._n


class CheckedUvmemDevice(UvmemDevice):
    """The uvmem device with its pvt arrays checked for use after free (and allocated as
    far as device pages are used: see ``_CheckedPvt``)."""

    def __init__(self, m: Machine, npages: int) -> None:
        # The base allocates its arrays for npages up front (600 MB at 1 TB, for a moment):
        # build it empty, then give it the full bitmap and the growing pvt arrays. An array
        # the base class adds must be sized here too.
        super().__init__(0)
        self.npages = npages
        self.bitmap = bytearray(npages)
        self.m = m
        self.pvt_gpa = _CheckedPvt(self, "gpa", "Q", npages)  # type: ignore[assignment]
        self.pvt_lpid = _CheckedPvt(self, "kvm", "L", npages,  # type: ignore[assignment]
                                    compact="B")
        self.pvt_flags = _CheckedPvt(self, "flags", "B", npages)  # type: ignore[assignment]
        self.raw_flags = self.pvt_flags._data
