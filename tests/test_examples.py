"""Every example runs from a fresh process and says what it should."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EXPECT = {
    "engine_quickstart.py": "without it: found in seed",
    "svm_gfn_table.py": "KVM_PPC_SVM_OFF (UV terminates) -> H_SUCCESS",
    "svm_share_race.py": "without the quirk: 500 schedules, no violation",
    "svm_multi_vcpu.py": "hunt: 300 schedules",
}


def test_every_example_is_checked():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECT)


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_example_runs(name, tmp_path):
    p = subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr
    assert EXPECT[name] in p.stdout
