"""Linux's errno values (include/uapi/asm-generic/errno-base.h), as the kernel returns them.

Fixed here rather than taken from Python's ``errno``, whose values are the host OS's (EAGAIN
is 35 on macOS): a return code, and every trace that records one, must not depend on where
emu runs."""

EPERM = 1
ENOENT = 2
E2BIG = 7
EAGAIN = 11
ENOMEM = 12
EFAULT = 14
EBUSY = 16
EEXIST = 17
EINVAL = 22
ERANGE = 34

NAMES = {v: f"-{k}" for k, v in sorted(globals().items()) if k.startswith("E")}
"""An errno by its name as a return code: NAMES[EPERM] == "-EPERM"."""


def code_name(rc: int) -> str:
    """A return code by name: "0", "-EPERM", or the number if it is no errno."""
    return NAMES.get(-rc, str(rc)) if rc else "0"
