"""Every example runs from a fresh process and says what it should."""

from __future__ import annotations

import os
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
    "nested_two_l2.py": "hunt: 200 schedules with thread migrations, max",
    "pkvm_page_walk.py": "every invariant held after every call",
}


def test_every_example_is_checked():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECT)


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_example_runs(name, tmp_path):
    p = subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr
    assert EXPECT[name] in p.stdout


def test_the_nested_example_prints_the_same_every_time(tmp_path):
    """Its output (the radix file, the rmap, the decoded shadow PTEs) is a function of the
    code alone, whatever the hash seed."""
    runs = [subprocess.run([sys.executable, str(EXAMPLES / "nested_two_l2.py")],
                           capture_output=True, text=True, cwd=tmp_path, timeout=300,
                           env={**os.environ, "PYTHONHASHSEED": seed}) for seed in ("1", "2")]
    assert runs[0].returncode == 0, runs[0].stderr
    assert runs[0].stdout == runs[1].stdout
    assert "\nNested LPID 2: pgdir: " in runs[0].stdout and "no violation" in runs[0].stdout
