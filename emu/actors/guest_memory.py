"""What a guest believes of its own memory (the values it last wrote, what it shared), and
the calls in flight on GFN ranges that make a return code *contended*.

The calls and shares in flight are shared by the guest's vCPUs and QEMU, and the verdict on
a return code depends on which overlapped which: starting or ending one (and looking at
those in flight) writes the object ``check:guestcalls:<lpid>`` of the access relation (the
checks' own state). What the guest believes of one GFN (the value it last wrote, written
before ESM, shared) is ``check:guest:<lpid>:<gfn>``; reading or writing it also reads
``check:guest:<lpid>``, which a walk or a reset of all of them writes.
"""

from __future__ import annotations

import attrs

from ..sim import accesses

ALL_GFNS = range(0, 1 << 64)
"""What a VM-wide call (UV_ESM, UV_UNSHARE_ALL_PAGES, an H_SVM_INIT_*, a reset) covers."""


@attrs.define(eq=False)
class _Call:
    """A call in flight on a range of GFNs, for contention: as a context manager, it is
    among ``calls`` while it lasts, and marks every call of someone else it overlaps as
    raced (and itself, if there is one)."""

    calls: list[_Call]
    gfns: range
    who: str
    raced: bool = False
    name: str = "guestcalls"
    """The access relation's name of the calls in flight (``check:guestcalls:<lpid>``)."""

    def __enter__(self) -> _Call:
        _touch(self.name)
        for other in self.calls:
            if other.who != self.who and _overlap(other.gfns, self.gfns):
                other.raced = self.raced = True
        self.calls.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _touch(self.name)
        self.calls.remove(self)


class _Sharing:
    """A share of ``gfns`` in flight (``GuestMemory.sharing_range``)."""

    def __init__(self, memory: GuestMemory, gfns: range) -> None:
        self.memory, self.gfns = memory, gfns

    def __enter__(self) -> None:
        memory, gfns = self.memory, self.gfns
        memory.touch_calls()
        for gfn in [g for g in memory.expected if g in gfns] if gfns else ():
            memory.forget(gfn)
        for raced in memory.watchers:
            raced.append(gfns)
        memory.sharing.append(gfns)

    def __exit__(self, *exc: object) -> None:
        self.memory.touch_calls()
        self.memory.sharing.remove(self.gfns)


def _touch(name: str) -> None:
    if accesses.current.on:
        accesses.current.touch(name, True)


def _overlap(a: range, b: range) -> bool:
    return max(a.start, b.start) < min(a.stop, b.stop)


@attrs.define(eq=False)
class GuestMemory:
    """What the guest believes of its own memory (shared by its vCPUs)."""

    expected: dict[int, int] = attrs.Factory(dict)
    """GFN -> the value last written (absent: undefined, e.g. after a share)."""
    insecure: dict[int, bool] = attrs.Factory(dict)
    """GFNs whose expected value was written while the VM was not secure: if the UV never
    received it (H_SVM_INIT_DONE moves the GFNs UV_ESM did not page in without a copy),
    the secure VM finds the UV's zero page there (``Frame.zero``), and that is no
    integrity violation."""
    shared: dict[int, bool] = attrs.Factory(dict)
    """GFNs the guest itself asked to share."""
    sharing: list[range] = attrs.Factory(list)
    """GFN ranges with a share in flight (UV_SHARE_PAGE, or the shares of a UV_ESM): their
    content is undefined from the moment a share starts (it drops the secure content, even
    if the share then fails). Kept as ranges: a guest may name any range."""
    watchers: list[list[range]] = attrs.Factory(list)
    """One list per UV_UNSHARE_ALL_PAGES in flight, collecting the shares that start
    meanwhile: a page shared during it may or may not be unshared by it."""
    calls: list[_Call] = attrs.Factory(list)
    """The calls of the VM's vCPUs and of QEMU in flight, with the GFNs each covers: a
    call is *contended* if a call of someone else on an overlapping range was in flight
    at some moment of it (``Accept.contended``)."""
    lpid: int = 0
    """The VM's LPID (for the access relation's names)."""
    calls_name: str = attrs.field(init=False)
    """The checks' object for the calls in flight (``check:guestcalls:<lpid>``)."""

    def __attrs_post_init__(self) -> None:
        self.calls_name = f"{accesses.CHECK}guestcalls:{self.lpid}"

    def touch_calls(self) -> None:
        """This step starts or ends a call or share in flight, or looks at those in flight
        (``check:guestcalls:<lpid>``, written: the verdicts depend on their order)."""
        _touch(self.calls_name)

    def call(self, gfns: range, who: str, raced: bool = False) -> _Call:
        """A call on ``gfns`` by ``who`` is in flight while the context lasts; it yields its
        record (``.raced``, set from the start if ``raced``)."""
        return _Call(self.calls, gfns, who, raced, self.calls_name)

    def touch_gfn(self, gfn: int, write: bool = False) -> None:
        """This step reads (writes) what the guest believes of ``gfn``."""
        if accesses.current.on:
            accesses.current.touch(f"{accesses.CHECK}guest:{self.lpid}")
            accesses.current.touch(f"{accesses.CHECK}guest:{self.lpid}:{gfn:#x}", write)

    def touch_all(self) -> None:
        """This step walks or resets what the guest believes of every GFN."""
        if accesses.current.on:
            accesses.current.touch(f"{accesses.CHECK}guest:{self.lpid}", True)

    def forget(self, gfn: int) -> None:
        self.touch_gfn(gfn, True)
        self.expected.pop(gfn, None)
        self.insecure.pop(gfn, None)

    def in_flight(self, gfn: int) -> bool:
        self.touch_calls()
        return any(gfn in r for r in self.sharing)

    def sharing_range(self, gfns: range) -> _Sharing:
        """A share of ``gfns`` is in flight while the context lasts: forget their content
        now and meanwhile."""
        return _Sharing(self, gfns)
