"""Every quirk of every platform: its first failing schedule shrinks to at most 3 preemptions,
and the shrunk replay file, replayed strictly, ends in the same violation.

``finding(quirk)`` (a hunt from seed 0 with a small budget, then its shrunk schedule) is
computed once per test session; ``test_replay_labels`` replays the same shrunk files in a
changed model.
"""

from __future__ import annotations

import functools
from collections import Counter

import pytest

from emu.scenarios import nested, pkvm, svm
from emu.sim import replay as replay_file
from emu.sim.runner import HuntResult, hunt

CLAIMS = {quirk: (scenario, suite.QUIRK_PARAMS.get(quirk, {}))
          for suite in (svm, nested, pkvm) for quirk, scenario in suite.QUIRK_SCENARIO.items()}
"""quirk -> (the scenario that claims it, the parameters it needs), every platform's."""

PCT_FIRST = {"busy-page-fails", "init-start-unserialised", "idr-alloc-unlocked"}
"""Quirks hunted with PCT depth 3, the others with a random walk: the first two a random walk
from seed 0 does not find in 5,000 schedules (PCT in 14 and 23); the random walk's finding
of the third takes the whole shrink budget (``benchmarks/hunt.py --part shrink`` measures
it: 3 preemptions), its PCT finding a few dozen replays."""

SCHEDULES = 60
BAR = 3


@functools.cache
def finding(quirk: str) -> HuntResult:
    """The hunt for ``quirk`` from seed 0, its finding shrunk."""
    scenario, params = CLAIMS[quirk]
    h = hunt(scenario, quirks=[quirk], params=params, schedules=SCHEDULES, seed=0,
             strategy="pct" if quirk in PCT_FIRST else "random")
    assert h.found is not None, f"{quirk}: nothing found in {SCHEDULES} schedules"
    assert h.shrunk is not None and not h.shrunk.note
    return h


def test_every_platform_s_quirks_are_claimed():
    assert len(CLAIMS) == len(svm.QUIRK_SCENARIO) + len(nested.QUIRK_SCENARIO) + \
        len(pkvm.QUIRK_SCENARIO) and PCT_FIRST <= CLAIMS.keys()


@pytest.mark.parametrize("quirk", list(CLAIMS))
def test_the_first_finding_shrinks_to_at_most_3_preemptions_and_replays(tmp_path, quirk):
    h = finding(quirk)
    s = h.shrunk
    assert s.after[0] <= BAR, s.line()
    assert s.after <= s.before
    data = replay_file.load(replay_file.save(tmp_path / "s.replay.json", s.result, s.record()))
    assert data["shrunk"]["preemptions"] == [s.before[0], s.after[0]]
    again = replay_file.replay(data)
    assert again.matched and again.reproduced
    assert replay_file.violation_key(again.result.violation) == \
        replay_file.violation_key(h.found.violation)


def test_the_distribution_of_shrunk_preemptions(capsys):
    after = Counter(min(finding(q).shrunk.after[0], BAR + 1) for q in CLAIMS)
    with capsys.disabled():
        print("\nshrunk preemptions: " + ", ".join(
            f"{k if k <= BAR else '>' + str(BAR)}: {after[k]}" for k in range(BAR + 2)))
    assert sum(after.values()) == len(CLAIMS) and after[BAR + 1] == 0
