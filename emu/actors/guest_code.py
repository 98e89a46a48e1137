"""Guest code: the instructions an L2 vCPU executes, addressed like memory.

An L2's program is not a Python coroutine that L0 calls into: its state is its registers,
which L1 keeps in memory and hands L0 with every H_ENTER_NESTED (pt_regs), and L0 runs it
from ``nip`` until an exit and writes the registers back. So an L2 program is a list of
instructions loaded at an address, and whoever runs the L2 vCPU (any pCPU, any L1 vCPU
holding its vcpu_token) fetches the next one at ``nip`` and advances ``nip`` by 4.

| instruction        | what it does                                                        |
|--------------------|---------------------------------------------------------------------|
| ``St(ea, value)``  | store ``value`` to the page at effective address ``ea``             |
| ``Ld(ea, expect)`` | load it (``expect``: the value the program wrote there, if any)     |
| ``Map(ea, gpa)``   | write the guest's own process-scoped PTE: ``ea``'s page -> ``gpa``  |
| ``Tlbiel(ea)``     | the guest's local invalidation of ``ea`` (process-scoped, PRS=1)    |
| ``Tlbie(ea)``      | the same, broadcast to every TLB group                              |
| ``Hcall(nr)``      | an hcall: the L2 exits to L1 (BOOK3S_INTERRUPT_SYSCALL)              |

An address that holds no instruction is a program check (the L2 exits to L1 with
BOOK3S_INTERRUPT_PROGRAM). The last instruction of every program is ``Hcall(H_CEDE)``.
Loading a program allocates its address: a write of the access relation's ``code`` (a
loaded program never changes, so running it reads nothing shared).
"""

from __future__ import annotations

import attrs

from ..sim import accesses

H_CEDE = 0xE0
CODE_BASE = 0x0000_1000_0000_0000
"""Where programs live: program p's i-th instruction is at CODE_BASE | p << 24 | 4 * i."""


@attrs.frozen
class St:
    ea: int
    value: int


@attrs.frozen
class Ld:
    ea: int
    expect: int | None = None


@attrs.frozen
class Map:
    ea: int
    gpa: int


@attrs.frozen
class Tlbiel:
    ea: int


@attrs.frozen
class Tlbie:
    ea: int


@attrs.frozen
class Hcall:
    nr: int


Instruction = St | Ld | Map | Tlbiel | Tlbie | Hcall


class GuestCode:
    """Every program loaded so far."""

    def __init__(self) -> None:
        self.programs: list[tuple[Instruction, ...]] = []

    def load(self, program: list[Instruction] | tuple[Instruction, ...]) -> int:
        """Load a program (an ``Hcall(H_CEDE)`` is appended); its entry point."""
        if accesses.current.on:
            accesses.current.touch("code", True)
        self.programs.append((*program, Hcall(H_CEDE)))
        return CODE_BASE | (len(self.programs) - 1) << 24

    def fetch(self, nip: int) -> Instruction | None:
        """The instruction at ``nip``, or None (a program check)."""
        offset = nip - CODE_BASE
        if offset < 0 or offset & 3 or offset >> 24 >= len(self.programs):
            return None
        program = self.programs[offset >> 24]
        index = (offset & 0xFF_FFFF) >> 2
        return program[index] if index < len(program) else None
