from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from emu.cli import main

ROOT = Path(__file__).resolve().parent.parent


@attrs.frozen
class CliResult:
    status: int
    out: str
    err: str


@pytest.fixture
def cli(capsys):
    """Run the emu command in-process: ``cli("hunt", "abba")`` -> status, stdout, stderr."""

    def invoke(*argv: str) -> CliResult:
        try:
            main(list(argv))
        except SystemExit as exc:
            status = exc.code
        else:  # pragma: no cover - main always exits
            status = 0
        captured = capsys.readouterr()
        return CliResult(status, captured.out, captured.err)

    return invoke


@pytest.fixture
def emu_proc():
    """Run ``python -m emu.cli`` in a fresh process (for PYTHONHASHSEED checks)."""

    def invoke(*argv: str, env: dict | None = None, cwd: Path | None = None):
        return subprocess.run([sys.executable, "-m", "emu.cli", *argv], capture_output=True,
                              text=True, env=env, cwd=cwd)

    return invoke
