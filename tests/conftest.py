from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from emu.cli import main
from emu.sim import machine

ROOT = Path(__file__).resolve().parent.parent

pytest_plugins = ["pytester"]  # (the emu pytest plugin is tested by running pytest)


machine.VERIFY_KEYS = True
"""Every keyed invariant skipped in a test is recomputed: a key that misses a change fails."""


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


RACE = (
    "async def _w(c):\n"
    "    v = await c.read()\n"
    "    await c.write(v + 1)\n"
    "def race(m, workers=2):\n"
    "    c = m.shared('c', 0)\n"
    "    for i in range(workers):\n"
    "        m.spawn(f'w{i}', _w, c)\n"
    "    m.final('sum', lambda: None if c.value == workers else f'c={c.value}')\n"
    "def other(m, workers=2):\n"
    "    race(m, workers)\n")


@pytest.fixture
def race_file(tmp_path) -> Path:
    """A scenario file outside the package: ``race`` (and ``other``, the same race) lose an
    update."""
    path = tmp_path / "mine.py"
    path.write_text(RACE)
    return path


@pytest.fixture
def changed_model(monkeypatch):
    """Every model changed at once (inert until set): an extra scheduling point before
    actor ``who``'s operation ``at``, and the operation ``rename`` renamed (what a replay
    file written before a model change meets)."""
    from emu.sim.controller import Controller

    change: dict[str, str | None] = {"who": None, "at": None, "rename": None}
    point = Controller.point

    async def changed(self, op, enabled=None, waits_for=None):
        if self.current.name == change["who"] and op == change["at"]:
            await point(self, f"extra before {op}")
        if op == change["rename"]:
            op = f"renamed {op}"
        await point(self, op, enabled, waits_for)

    monkeypatch.setattr(Controller, "point", changed)
    return change


def start_hunt(tmp_path: Path, *args: str) -> subprocess.Popen:
    """``emu hunt lost-update --keep-going`` for a million schedules (``args`` appended), in
    the background: a hunt to interrupt or kill once it has found something."""
    return subprocess.Popen(
        [sys.executable, "-m", "emu.cli", "hunt", "lost-update", "--keep-going",
         "--schedules", "1000000", "--out", str(tmp_path / "out"), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)


def first_finding(proc: subprocess.Popen) -> str:
    """The first ``finding:`` line the background hunt prints."""
    for line in proc.stdout:
        if line.startswith("finding:"):
            return line
    raise AssertionError(f"the hunt ended without a finding: {proc.stderr.read()}")


def replay_saved(line: str, tmp_path: Path) -> tuple[str, subprocess.CompletedProcess]:
    """Replay the file a ``finding:`` line says it saved (``emu replay``, in ``tmp_path``):
    the file and the replay's outcome."""
    saved = line.rsplit("(saved ", 1)[1].rstrip(")\n")
    return saved, subprocess.run([sys.executable, "-m", "emu.cli", "replay", saved],
                                 capture_output=True, text=True, cwd=tmp_path)


def interrupt(proc: subprocess.Popen, sig: int, status: int,
              tmp_path: Path) -> tuple[str, str, list[str]]:
    """Send the background hunt ``sig``; it must end with ``status``, no traceback, and a
    last line saying it was interrupted. Returns its output, that line, and the lines of
    its findings.jsonl."""
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert "Traceback" not in out + err
    summary = out.strip().splitlines()[-1]
    assert summary.startswith(f"interrupted by {signal.Signals(sig).name}: ")
    index = (tmp_path / "out" / "findings.jsonl").read_text().splitlines()
    assert f"{len(index)} finding(s)" in summary
    return out, summary, index
