"""Replay files: everything needed to re-run one schedule bit-identically.

JSON with a format tag and version, the emu version, the scenario and its parameters, the
quirks, the strategy and seed, the step budget, the decision list ``[step, actor, op]``,
the violation found and the trace hash. ``replay`` re-runs the decisions and says whether
the trace hash matched.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs

from ..errors import EmuError
from .runner import RunResult, run_decisions

FORMAT = "emu-replay"
FORMAT_VERSION = 1
_REQUIRED = {"scenario": str, "params": dict, "quirks": list, "strategy": dict, "seed": int,
             "max_steps": int, "decisions": list, "trace_hash": str}


def replay_data(result: RunResult) -> dict[str, Any]:
    from .. import __version__

    v = result.violation
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "emu_version": __version__,
        "scenario": result.scenario,
        "params": result.params,
        "quirks": list(result.quirks),
        "strategy": result.strategy,
        "seed": result.seed,
        "max_steps": result.max_steps,
        "violation": v.to_json() if v else None,
        "trace_hash": result.trace_hash,
        "decisions": [list(d) for d in result.decisions],
    }


def save(path: str | Path, result: RunResult) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(replay_data(result), indent=1) + "\n")
    return path


def load(path: str | Path) -> dict[str, Any]:
    """Read and validate a replay file; every problem is one clear EmuError."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise EmuError(f"no replay file {str(path)!r}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EmuError(f"cannot read replay file {str(path)!r}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise EmuError(f"{path} is not a replay file: invalid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise EmuError(f"{path} is not a replay file (no \"format\": \"{FORMAT}\")")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise EmuError(f"{path} has replay format version {version!r}; this emu reads "
                       f"version {FORMAT_VERSION}")
    for key, kind in _REQUIRED.items():
        if not isinstance(data.get(key), kind):
            raise EmuError(f"{path} is a corrupt replay file: {key!r} missing or not a "
                           f"{kind.__name__}")
    strategy = data["strategy"]
    if strategy.get("name") not in ("random", "pct") or (
            strategy["name"] == "pct" and not all(isinstance(strategy.get(k), int) and
                                                 strategy[k] >= 1 for k in ("depth", "k"))):
        raise EmuError(f"{path} is a corrupt replay file: bad strategy {strategy!r}")
    for d in data["decisions"]:
        if not (isinstance(d, list) and len(d) == 3 and isinstance(d[0], int)
                and isinstance(d[1], str) and isinstance(d[2], str)):
            raise EmuError(f"{path} is a corrupt replay file: bad decision {d!r}")
    return data


@attrs.frozen
class ReplayResult:
    result: RunResult
    expected_hash: str

    @property
    def matched(self) -> bool:
        return self.result.trace_hash == self.expected_hash


def replay(data: dict[str, Any]) -> ReplayResult:
    """Re-run the decision list of a loaded replay file."""
    decisions = [(d[0], d[1], d[2]) for d in data["decisions"]]
    result = run_decisions(data["scenario"], decisions, seed=data["seed"],
                           params=data["params"], quirks=data["quirks"],
                           strategy=data["strategy"], max_steps=data["max_steps"])
    return ReplayResult(result, data["trace_hash"])
