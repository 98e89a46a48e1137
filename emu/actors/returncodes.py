"""The return codes a scenario accepts, call by call, and the check that fails a schedule
on any other (``return-code``): every code a guest program or QEMU receives is checked."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

import attrs

from ..kvm.hvcall import EBUSY, EFAULT, EINVAL, rc_name
from ..sim.violations import About

if TYPE_CHECKING:
    from ..sim import Machine

ERRNO_NAMES = {0: "0", -EBUSY: "-EBUSY", -EINVAL: "-EINVAL", -EFAULT: "-EFAULT"}
RETURN_CODES = "return-code"
"""The coverage kind of the (call, code) pairs a guest program or QEMU receives."""


def code_name(call: str, rc: int) -> str:
    """A return code by name: an errno for the host's ioctls and accesses, else hvcall's."""
    if call.startswith(("KVM_", "qemu ")):
        return ERRNO_NAMES.get(rc, str(rc))
    return rc_name(rc)


CodeName = Callable[[str, int], str]
"""(call, code) -> the code's name in messages."""


@attrs.frozen
class Accept:
    """The return codes a scenario accepts from one call: ``codes`` always, ``contended``
    only when the call was contended: another vCPU (or QEMU) had a call on an overlapping
    GFN range in flight at some moment of this one, or, for an unshare, the guest's books
    did not say the page was still shared when it started (another vCPU unshared it): a
    race the scenario means to lose sometimes."""

    codes: frozenset[int]
    contended: frozenset[int] = frozenset()

    @classmethod
    def of(cls, spec: AcceptSpec) -> Accept:
        if isinstance(spec, Accept):
            return spec
        return cls(frozenset(spec))

    def allows(self, rc: int, contended: bool) -> bool:
        return rc in self.codes or (contended and rc in self.contended)

    def describe(self, call: str, name: CodeName = code_name) -> str:
        text = ", ".join(name(call, c) for c in sorted(self.codes)) or "nothing"
        if self.contended - self.codes:
            text += " (and when contended " + ", ".join(
                name(call, c) for c in sorted(self.contended - self.codes)) + ")"
        return text


AcceptSpec = Accept | Iterable[int]


def accept(*codes: int, contended: Iterable[int] = ()) -> Accept:
    """``accept(H_SUCCESS, contended=[H_PARAMETER])``: the codes a call may return."""
    return Accept(frozenset(codes), frozenset(contended))


class ReturnCodes:
    """The return codes a scenario accepts, call by call: ``table`` maps a call name (an
    hcall or ucall name such as ``"UV_UNSHARE_PAGE"``, ``"read"`` and ``"write"`` for a
    guest's loads and stores, ``"qemu read"``, ``"qemu write"``, ``"KVM_PPC_SVM_OFF"``,
    ``"KVM_SET_USER_MEMORY_REGION"`` and ``"UV_PAGE_INVAL"`` (reclaim) for QEMU) to the
    codes it accepts; ``"*"`` is the default for a call the table does not name. Anything
    else is a violation of kind ``return-code``. ``None``: the program checks its codes
    itself (a hand-built machine; the scenarios of ``emu/scenarios/svm.py`` declare)."""

    def __init__(self, m: Machine, table: Mapping[str, AcceptSpec] | None,
                 name: CodeName = code_name) -> None:
        """``name``: how the platform names a code in messages (POWER: hcall codes and
        errnos; arm64 pKVM: errnos)."""
        self.m = m
        self.name = name
        self.table = None if table is None else {k: Accept.of(v) for k, v in table.items()}
        self._declare()

    def _declare(self) -> None:
        """Coverage: every (call, code) the table names is one the scenario can receive; a
        code accepted only when contended stays unreached until some schedule loses that
        race."""
        if not self.m.coverage.on:
            return
        for call, allowed in (self.table or {}).items():
            if call != "*":
                self.m.declare(RETURN_CODES, [f"{call}|{self.name(call, c)}"
                                              for c in sorted(allowed.codes)])
                self.m.declare(RETURN_CODES, [f"{call}|{self.name(call, c)}" for c in
                                              sorted(allowed.contended - allowed.codes)],
                               "accepted only when contended: no schedule lost that race")

    def check(self, who: str, call: str, args: Iterable[int], rc: int, contended: bool,
              override: AcceptSpec | None = None,
              cause: tuple[str, int] | None = None) -> None:
        """``cause``: the object whose state decided the code and the step that decided it,
        when the kernel function that returned it named one (``KVM.rc_causes``): the
        violation is about it."""
        if self.m.coverage.on:
            self.m.cover(RETURN_CODES, f"{call}|{self.name(call, rc)}")
        if override is not None:
            allowed = Accept.of(override)
        elif self.table is None:
            return
        else:
            allowed = self.table.get(call, self.table.get("*"))
            if allowed is None:
                return
        if allowed.allows(rc, contended):
            return
        shown = ", ".join(hex(a) if isinstance(a, int) else str(a) for a in args)
        race = "contended" if contended else "uncontended"
        self.m.fail("return-code", About(
            f"{who}: {call}({shown}) returned {self.name(call, rc)} ({race}); the scenario "
            f"accepts {allowed.describe(call, self.name)}",
            *(() if cause is None else (cause[0],)), at=None if cause is None else cause[1]))
