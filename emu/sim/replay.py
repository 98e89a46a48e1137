"""Replay files: everything needed to re-run one schedule bit-identically.

JSON with a format tag and version, the emu version, the scenario and its parameters, the
quirks, the strategy and seed, the step budget, the decision list ``[step, actor, op]``,
the violation found, the trace hash, and a checksum over all of it; a schedule run as a
named release (``--kernel``) also records it as ``"kernel"`` (absent: the default model,
which is what files without the key, and older files, replay as). A scenario loaded from
a file is recorded by its path (relative to the working directory, to the replay file, and
absolute) and the SHA-256 of its content, so the file is found from anywhere and a change
to it is named before it can show up as a divergence.

Format 3 identifies a decision by its label ``(actor, op, n)``, the n-th time that actor
steps at that operation (``strategies.labelled``, counted along the list, so the list reads
as before), which ``replay(..., tolerant=True)`` realigns on when the model has changed
since; a shrunk schedule (``shrink``) also records ``"shrunk"``: the preemptions, steps and
actors before and after, the replays it took, and the trace hash of the schedule it came
from. Formats 1 and 2 read as format 3 (their decisions have the same labels).

``load`` refuses, in one line, anything that is not a file this emu wrote and nobody
edited (bounded size, nesting and numbers; steps counting 1, 2, 3...; the checksum), unless
edits are accepted, in which case the file is replayed exactly as it now reads.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import attrs
import trio

from ..errors import EmuError
from .coverage import mask_numbers
from .files import read_bounded, write_atomic
from .runner import MAX_DEPTH, MAX_STEPS, RunResult, prepare, run_decisions, run_schedule
from .strategies import RandomWalk, Tolerant
from .violations import Violation

FORMAT = "emu-replay"
FORMAT_VERSION = 3
READS = (1, 2, 3)
"""Format 1 (emu 0.1.0) has no checksum and no scenario-file record, format 2 no shrink
record; both are still read."""
MAX_BYTES = 256 * 2**20
MAX_SEED = 2**64
_REQUIRED = {"scenario": str, "params": dict, "quirks": list, "strategy": dict, "seed": int,
             "max_steps": int, "decisions": list, "trace_hash": str}


def _checksum(data: dict[str, Any]) -> str:
    body = {k: v for k, v in data.items() if k != "checksum"}
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _scenario_file(result: RunResult, replay_path: Path) -> dict[str, str] | None:
    if result.source is None:
        return None
    absolute, digest = result.source
    return {"path": os.path.relpath(absolute), "from_replay_file":
            os.path.relpath(absolute, replay_path.resolve().parent), "absolute": absolute,
            "sha256": digest}


def replay_data(result: RunResult, path: Path,
                shrunk: dict[str, Any] | None = None) -> dict[str, Any]:
    from .. import __version__

    v = result.violation
    data = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "emu_version": __version__,
        "scenario": result.scenario,
        "scenario_file": _scenario_file(result, path),
        "params": result.params,
        "quirks": list(result.quirks),
        "strategy": result.strategy,
        "seed": result.seed,
        "max_steps": result.max_steps,
        "violation": v.to_json() if v else None,
        "trace_hash": result.trace_hash,
        "decisions": [list(d) for d in result.decisions],
    }
    if result.release is not None:
        data["kernel"] = result.release
    if shrunk is not None:
        data["shrunk"] = shrunk
    data["checksum"] = _checksum(data)
    return data


def save(path: str | Path, result: RunResult, shrunk: dict[str, Any] | None = None) -> Path:
    """Write ``result``'s replay file (with ``shrunk``, the record of a shrunk schedule)."""
    path = Path(path)
    return write_atomic(path, json.dumps(replay_data(result, path, shrunk), indent=1) + "\n")


def load(path: str | Path, *, accept_edits: bool = False) -> dict[str, Any]:
    """Read and validate a replay file; every problem is one clear EmuError."""
    path = Path(path)
    raw = read_bounded(path, MAX_BYTES, "replay file")
    try:
        data = json.loads(raw)
    except RecursionError:
        raise EmuError(f"{path} is not a replay file: JSON nested too deeply") from None
    except UnicodeDecodeError:
        raise EmuError(f"{path} is not a replay file: not UTF-8 text") from None
    except ValueError as exc:  # JSONDecodeError, or an integer of thousands of digits
        raise EmuError(f"{path} is not a replay file: invalid JSON "
                       f"({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise EmuError(f"{path} is not a replay file (no \"format\": \"{FORMAT}\")")
    version = data.get("format_version")
    if version not in READS:
        raise EmuError(f"{path} has replay format version {version!r}; this emu reads "
                       f"versions {', '.join(map(str, READS))}")
    edited = "checksum" in data and data["checksum"] != _checksum(data)
    if edited and not accept_edits:
        raise EmuError(f"{path} was edited after emu wrote it (its checksum does not match); "
                       "'emu replay --accept-edits' replays it as it now reads")
    _validate(path, data)
    if version >= 2 and "checksum" not in data and not accept_edits:
        raise _corrupt(path, "no checksum")
    return data


def _corrupt(path: Path, what: str) -> EmuError:
    return EmuError(f"{path} is a corrupt replay file: {what}")


def _int_in(value: Any, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _validate(path: Path, data: dict[str, Any]) -> None:
    for key, kind in _REQUIRED.items():
        if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
            raise _corrupt(path, f"{key!r} missing or not a {kind.__name__}")
    if not _int_in(data["seed"], 0, MAX_SEED - 1):
        raise _corrupt(path, f"seed {data['seed']} out of range (0 to 2^64-1)")
    if not _int_in(data["max_steps"], 1, MAX_STEPS):
        raise _corrupt(path, f"max_steps {data['max_steps']} out of range")
    strategy = data["strategy"]
    if strategy.get("name") not in ("random", "pct", "explore", "guided") or (
            strategy["name"] == "pct" and not (_int_in(strategy.get("depth"), 1, MAX_DEPTH)
                                               and _int_in(strategy.get("k"), 1, MAX_STEPS))):
        raise _corrupt(path, f"bad strategy {json.dumps(strategy)[:80]}")
    if not all(isinstance(q, str) for q in data["quirks"]):
        raise _corrupt(path, "quirks must be names")
    if "kernel" in data and not (isinstance(data["kernel"], str) and data["kernel"]):
        raise _corrupt(path, "kernel must be a release name")
    decisions = data["decisions"]
    if len(decisions) > data["max_steps"]:
        raise _corrupt(path, f"{len(decisions)} decisions, more than max_steps "
                             f"{data['max_steps']}")
    for i, d in enumerate(decisions, 1):
        if not (isinstance(d, list) and len(d) == 3 and type(d[0]) is int
                and isinstance(d[1], str) and isinstance(d[2], str)):
            raise _corrupt(path, f"decision {i} is not [step, actor, operation]")
        if d[0] != i:
            raise _corrupt(path, f"decision {i} is numbered step {d[0]}")
    digest = data["trace_hash"]
    if len(digest) != 16 or any(c not in "0123456789abcdef" for c in digest):
        raise _corrupt(path, f"trace_hash {digest[:40]!r} is not 16 hex digits")
    record = data.get("scenario_file")
    if record is not None and not (isinstance(record, dict) and all(
            isinstance(record.get(k), str) for k in ("path", "absolute", "sha256"))):
        raise _corrupt(path, "bad scenario_file record")
    if "shrunk" in data and not isinstance(data["shrunk"], dict):
        raise _corrupt(path, "bad shrunk record")


def scenario_spec(data: dict[str, Any], path: str | Path) -> tuple[str, str | None]:
    """The scenario to replay (a name, or ``file.py:function`` located afresh) and a note
    when its file changed since the replay file was written."""
    record = data.get("scenario_file")
    if record is None:
        return data["scenario"], None
    func = data["scenario"].rpartition(":")[2]
    here = Path(path).resolve().parent
    candidates = [here / record.get("from_replay_file", record["path"]),
                  Path(record["absolute"]), Path(record["path"])]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise EmuError(f"scenario file {record['path']!r} of this replay file is gone (looked "
                       f"beside the replay file, at {record['absolute']}, and in the working "
                       "directory)")
    note = None
    digest = hashlib.sha256(found.read_bytes()).hexdigest()
    if digest != record["sha256"]:
        note = (f"note: {found} changed since the replay file was written (SHA-256 "
                f"{record['sha256'][:12]} then, {digest[:12]} now): a divergence may come "
                "from that")
    return f"{os.path.relpath(found)}:{func}", note


def violation_key(v: Violation | dict[str, Any] | None) -> tuple[str, str] | None:
    """What makes two violations the same finding: the kind and the message with every
    number masked (``coverage.mask_numbers``: the object a message names keeps its kind of
    name, ``GFN #``; the step counts and values around it may differ)."""
    if v is None:
        return None
    kind, message = (v["kind"], v["message"]) if isinstance(v, dict) else (v.kind, v.message)
    return kind, mask_numbers(message)


@attrs.frozen
class ReplayResult:
    result: RunResult
    expected_hash: str
    expected: tuple[str, str] | None = None
    """The violation key (``violation_key``) the file records."""
    tolerant: Tolerant | None = None
    """The realignment of a tolerant replay (its counts, ``summary``)."""

    @property
    def matched(self) -> bool:
        return self.result.trace_hash == self.expected_hash

    @property
    def reproduced(self) -> bool:
        """The replay found the violation the file records (or, like it, none)."""
        return violation_key(self.result.violation) == self.expected


def replay(data: dict[str, Any], spec: str | None = None, *, detail: bool = False,
           tolerant: bool = False) -> ReplayResult:
    """Re-run the decision list of a loaded replay file (against ``spec`` if given);
    ``detail`` records the model function of every step, for an explanation. Strict by
    default (``ReplayDivergence`` at the first decision that does not fit); ``tolerant``
    realigns by label and goes on with a random walk seeded by the file's seed."""
    decisions = [(d[0], d[1], d[2]) for d in data["decisions"]]
    expected = violation_key(data.get("violation"))
    scenario = spec or data["scenario"]
    if not tolerant:
        result = run_decisions(scenario, decisions, seed=data["seed"],
                               params=data["params"], quirks=data["quirks"],
                               strategy=data["strategy"], max_steps=data["max_steps"],
                               release=data.get("kernel"), detail=detail)
        return ReplayResult(result, data["trace_hash"], expected)
    sc, values, chosen = prepare(scenario, data["params"], data["quirks"], data.get("kernel"))
    follow = Tolerant(decisions, RandomWalk(data["seed"], timers=True))
    result = trio.run(lambda: run_schedule(sc, values, chosen, follow, data["seed"],
                                           data["max_steps"], data.get("kernel"), detail,
                                           views=True))
    return ReplayResult(attrs.evolve(result, strategy=data["strategy"]), data["trace_hash"],
                        expected, follow)
