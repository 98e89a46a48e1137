"""The layer contract of pyproject.toml ([tool.importlinter]): scenarios -> machines ->
actors -> kvm -> hw, all on the engine (sim), which knows no hypervisor. Checked here, by
import-linter, not by review; and shown to fire on a package that breaks it."""

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


def test_the_contract_fires_on_an_upward_import(tmp_path, monkeypatch, capsys):
    """hw importing kvm (what hw/hostmm.py once did for PAGE_SHIFT) breaks the contract."""
    config = (ROOT / "pyproject.toml").read_text()
    contract = config[config.index("[tool.importlinter]"):].replace('"emu"', '"fake"')
    pkg = tmp_path / "fake"
    for layer in tomllib.loads(config)["tool"]["importlinter"]["contracts"][0]["layers"]:
        (pkg / layer).mkdir(parents=True)
        (pkg / layer / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "kvm" / "hvcall.py").write_text("PAGE_SHIFT = 16\n")
    (pkg / "hw" / "hostmm.py").write_text("from ..kvm.hvcall import PAGE_SHIFT\n")
    (tmp_path / "setup.toml").write_text(contract)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert lint_imports(config_filename=str(tmp_path / "setup.toml"), no_cache=True,
                        no_logo=True) == 1
    assert "fake.hw.hostmm -> fake.kvm.hvcall" in capsys.readouterr().out
    sys.modules.pop("fake", None)
