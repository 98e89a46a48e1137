"""Hardware threads, cores and TLB groups (arch/powerpc/include/asm/cputhreads.h).

CPU numbers are hardware thread ids, ``threads_per_core`` of them per core, core ``c``
owning ``c * threads_per_core .. c * threads_per_core + threads_per_core - 1`` (the kernel
requires a power of two). A *TLB group* is the set of threads that share one TLB, so a
``tlbiel`` executed by one thread invalidates for all of them and for no other thread.

Which threads share a TLB (``cpu_first_tlb_thread_sibling`` and friends; the header says it
is not architected, PowerNV only):

| processor (as the kernel runs it)         | threads/core | TLB groups of core 0       |
|-------------------------------------------|--------------|----------------------------|
| POWER9 SMT4 (scale-out, PowerNV)           | 4            | {0,1,2,3}: the whole core  |
| POWER9 SMT8 ("big core": two fused SMT4)   | 8            | {0,2,4,6} and {1,3,5,7}    |
| POWER10 SMT8                               | 8            | {0,2,4,6} and {1,3,5,7}    |
| POWER8 SMT8 (no CPU_FTR_ARCH_300)          | 8            | {0..7}: the whole core     |

The kernel's rule is ``CPU_FTR_ARCH_300 && threads_per_core == 8`` -> big core: first TLB
sibling ``cpu & ~6``, last ``cpu | 6``, step 2 (even threads are one half's TLB, odd threads
the other's); otherwise first/last thread sibling of the core, step 1.
"""

from __future__ import annotations

import attrs


def cpu_thread_in_core(cpu: int, threads_per_core: int) -> int:
    """cpu_thread_in_core()."""
    return cpu & (threads_per_core - 1)


def cpu_first_thread_sibling(cpu: int, threads_per_core: int) -> int:
    """cpu_first_thread_sibling(): the core's thread 0."""
    return cpu & ~(threads_per_core - 1)


def cpu_last_thread_sibling(cpu: int, threads_per_core: int) -> int:
    """cpu_last_thread_sibling()."""
    return cpu | (threads_per_core - 1)


def is_big_core(threads_per_core: int, arch_300: bool = True) -> bool:
    """The test cputhreads.h makes: ISA 3.0 (POWER9 and later) with 8 threads per core."""
    return arch_300 and threads_per_core == 8


def cpu_first_tlb_thread_sibling(cpu: int, threads_per_core: int, arch_300: bool = True) -> int:
    """cpu_first_tlb_thread_sibling(); the group's id in this model."""
    if is_big_core(threads_per_core, arch_300):
        return cpu & ~0x6
    return cpu_first_thread_sibling(cpu, threads_per_core)


def cpu_last_tlb_thread_sibling(cpu: int, threads_per_core: int, arch_300: bool = True) -> int:
    """cpu_last_tlb_thread_sibling()."""
    if is_big_core(threads_per_core, arch_300):
        return cpu | 0x6
    return cpu_last_thread_sibling(cpu, threads_per_core)


def cpu_tlb_thread_sibling_step(threads_per_core: int, arch_300: bool = True) -> int:
    """cpu_tlb_thread_sibling_step()."""
    return 2 if is_big_core(threads_per_core, arch_300) else 1


def tlb_siblings(cpu: int, threads_per_core: int, arch_300: bool = True) -> range:
    """The threads sharing ``cpu``'s TLB, iterated the way radix_flush_cpu and
    check_need_tlb_flush loop over them (first .. last by step)."""
    return range(
        cpu_first_tlb_thread_sibling(cpu, threads_per_core, arch_300),
        cpu_last_tlb_thread_sibling(cpu, threads_per_core, arch_300) + 1,
        cpu_tlb_thread_sibling_step(threads_per_core, arch_300),
    )


@attrs.frozen
class Topology:
    """A machine's cores and how their threads share TLBs.

    ``split_tlb`` is the big-core layout (two interleaved TLB groups per 8-thread core);
    the presets follow the kernel's rule, and setting it by hand models a kernel that
    gets the rule wrong (the pre-fix code assumed one TLB per core everywhere: bug B10).
    """

    cores: int
    threads_per_core: int
    split_tlb: bool

    def __attrs_post_init__(self) -> None:
        tpc = self.threads_per_core
        if tpc < 1 or tpc & (tpc - 1):
            raise ValueError(f"threads_per_core must be a power of two, not {tpc}")
        if self.split_tlb and tpc != 8:
            raise ValueError("interleaved TLB groups exist only on 8-thread cores")

    @classmethod
    def kernel_rule(cls, cores: int, threads_per_core: int, arch_300: bool = True) -> Topology:
        return cls(cores, threads_per_core, is_big_core(threads_per_core, arch_300))

    @classmethod
    def power9_smt4(cls, cores: int = 2) -> Topology:
        return cls(cores, 4, False)

    @classmethod
    def power9_smt8(cls, cores: int = 2) -> Topology:
        return cls(cores, 8, True)

    @classmethod
    def power10(cls, cores: int = 2) -> Topology:
        return cls(cores, 8, True)

    @property
    def nr_cpus(self) -> int:
        return self.cores * self.threads_per_core

    def check(self, cpu: int) -> int:
        if not 0 <= cpu < self.nr_cpus:
            raise ValueError(f"no cpu {cpu} on {self.nr_cpus} threads")
        return cpu

    # The helpers below pass ``split_tlb`` where cputhreads.h tests CPU_FTR_ARCH_300: with
    # 8 threads per core the two are the same test, and it lets a topology break the rule.

    def first_thread_sibling(self, cpu: int) -> int:
        return cpu_first_thread_sibling(self.check(cpu), self.threads_per_core)

    def first_tlb_sibling(self, cpu: int) -> int:
        return cpu_first_tlb_thread_sibling(self.check(cpu), self.threads_per_core, self.split_tlb)

    def last_tlb_sibling(self, cpu: int) -> int:
        return cpu_last_tlb_thread_sibling(self.check(cpu), self.threads_per_core, self.split_tlb)

    @property
    def tlb_step(self) -> int:
        return cpu_tlb_thread_sibling_step(self.threads_per_core, self.split_tlb)

    def group_of(self, cpu: int) -> int:
        """The TLB group's id: its first TLB sibling."""
        return self.first_tlb_sibling(cpu)

    def members(self, cpu: int) -> range:
        """Every thread sharing ``cpu``'s TLB, ``cpu`` included."""
        return tlb_siblings(self.check(cpu), self.threads_per_core, self.split_tlb)

    def same_group(self, a: int, b: int) -> bool:
        """What kvmppc_prepare_radix_vcpu compares before calling radix_flush_cpu."""
        return self.group_of(a) == self.group_of(b)

    def groups(self) -> list[int]:
        """Every group id, ascending."""
        return sorted({self.group_of(cpu) for cpu in range(self.nr_cpus)})
