"""The layer contract of pyproject.toml ([tool.importlinter]): scenarios -> machines ->
actors -> kvm | pkvm -> hw, all on the engine (sim), which knows no hypervisor; POWER's kvm and
arm64's pkvm are siblings that never import each other. Checked here, by import-linter, not
by review; and shown to fire on a package that breaks it."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parent.parent


def test_emu_keeps_its_layers(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True,
                        no_logo=True) == 0


def _fake_emu(tmp_path: Path, monkeypatch, importer: str, imported: str) -> int:
    """Lint a package with emu's layers where module ``importer`` imports ``imported``."""
    config = (ROOT / "pyproject.toml").read_text()
    contract = config[config.index("[tool.importlinter]"):].replace('"emu"', '"fake"')
    pkg = tmp_path / "fake"
    for layer in tomllib.loads(config)["tool"]["importlinter"]["contracts"][0]["layers"]:
        for name in layer.split("|"):
            (pkg / name.strip()).mkdir(parents=True)
            (pkg / name.strip() / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / f"{imported.replace('.', '/')}.py").write_text("PAGE_SHIFT = 16\n")
    (pkg / f"{importer.replace('.', '/')}.py").write_text(
        f"from fake.{imported} import PAGE_SHIFT\n")
    (tmp_path / "setup.toml").write_text(contract)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        return lint_imports(config_filename=str(tmp_path / "setup.toml"), no_cache=True,
                            no_logo=True)
    finally:
        for name in [m for m in sys.modules if m == "fake" or m.startswith("fake.")]:
            sys.modules.pop(name)


def test_the_contract_fires_on_an_upward_import(tmp_path, monkeypatch, capsys):
    """hw importing kvm (what hw/hostmm.py once did for PAGE_SHIFT) breaks the contract."""
    assert _fake_emu(tmp_path, monkeypatch, "hw.hostmm", "kvm.hvcall") == 1
    assert "fake.hw.hostmm -> fake.kvm.hvcall" in capsys.readouterr().out


def test_the_contract_fires_between_the_two_hypervisors(tmp_path, monkeypatch, capsys):
    """kvm (POWER) and pkvm (arm64) are siblings: neither may import the other."""
    assert _fake_emu(tmp_path, monkeypatch, "pkvm.mem_protect", "kvm.hvcall") == 1
    assert "fake.pkvm.mem_protect -> fake.kvm.hvcall" in capsys.readouterr().out
