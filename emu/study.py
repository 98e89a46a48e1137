"""Scripted measurements (``emu study NAME``).

``esm-scaling`` reproduces seed 004's observation: the simulated time to make a VM secure
grows with its size when the Ultravisor pages in every GFN (about 7 minutes for 100 GB),
and stays nearly flat when it pages in only the GFNs the guest needs and the HV migrates
the rest at H_SVM_INIT_DONE without a copy. Each point is one schedule of ``svm-boot`` under
the ``seed-004`` cost model (emu/hw/costs.py), with the guest's memory populated before boot
(as firmware and QEMU's -mem-prealloc leave it: an unpopulated page has nothing to copy);
the time is the virtual time at which the guest's UV_ESM returns. Sizes above
``max_full_gb`` are not simulated page by page in the every-GFN mode (1.6 M page-ins at
100 GB take minutes of wall time): they are extrapolated from a least-squares line through
the simulated points, and marked so.

``releases`` hunts every secure-VM scenario (and ``abort-on-register-failure`` once more with
the other slot failing, since the memslot walk order decides which slot fails first) on
every modelled kernel release and on the default model, with a small budget, and tabulates
what each finds first.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import attrs

from .errors import EmuError
from .kvm.releases import RELEASES
from .scenarios.svm import ESM_COUNTER
from .sim.runner import hunt, run
from .sim.scenario import suites

SIZES_GB = (1, 2, 4, 8, 16, 32, 64, 100)
MODES = {"all": "UV pages in every GFN",
         "necessary": "UV pages in the image, HV migrates the rest at INIT_DONE"}


@attrs.frozen
class Point:
    gb: float
    mode: str
    seconds: float
    simulated: bool
    """False: extrapolated from the simulated points of the same mode."""


def esm_seconds(gb: float, mode: str) -> float:
    """Simulated seconds until UV_ESM returns for a ``gb`` GB SVM."""
    result = run("svm-boot", params={"mem_mb": int(gb * 1024), "vcpus": 1, "esm": mode,
                                     "costs": "seed-004", "prealloc": True})
    if not result.ok:
        raise EmuError(f"esm-scaling: svm-boot at {gb} GB ({mode}) found "
                       f"{result.violation.describe()}")
    stamps = [d for _, _, kind, text, d in result.trace.events
              if kind == "counter" and text == ESM_COUNTER]
    return stamps[0] / 1e9


def esm_scaling(sizes: tuple[float, ...] = SIZES_GB, max_full_gb: float = 8,
                progress=None) -> list[Point]:
    points: list[Point] = []
    for mode in MODES:
        measured = []
        for gb in sizes:
            if mode == "all" and gb > max_full_gb:
                continue
            seconds = esm_seconds(gb, mode)
            measured.append((gb, seconds))
            points.append(Point(gb, mode, seconds, True))
            if progress:
                progress(f"{mode:>9} {gb:>6g} GB: {seconds:9.2f} s simulated")
        slope, intercept = _fit(measured)
        points += [Point(gb, mode, slope * gb + intercept, False)
                   for gb in sizes if mode == "all" and gb > max_full_gb]
    return sorted(points, key=lambda p: (p.mode, p.gb))


def _fit(xy: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares (slope, intercept); with one point, the line through the origin."""
    if len(xy) < 2:
        return (xy[0][1] / xy[0][0], 0.0) if xy else (0.0, 0.0)
    return tuple(statistics.linear_regression([x for x, _ in xy], [y for _, y in xy]))


def table(points: list[Point]) -> str:
    sizes = sorted({p.gb for p in points})
    by = {(p.mode, p.gb): p for p in points}
    head = f"{'VM size':>8} | " + " | ".join(f"{MODES[m]:>58}" for m in MODES)
    lines = [head, "-" * len(head)]
    for gb in sizes:
        cells = []
        for mode in MODES:
            p = by.get((mode, gb))
            text = "" if p is None else \
                f"{p.seconds:8.1f} s ({p.seconds / 60:5.1f} min){'' if p.simulated else ' *'}"
            cells.append(f"{text:>58}")
        lines.append(f"{gb:>5g} GB | " + " | ".join(cells))
    lines.append("* extrapolated (least squares through the simulated sizes of that mode)")
    return "\n".join(lines)


def plot(points: list[Point], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode, style in zip(MODES, ("o-", "s-"), strict=True):
        ps = [p for p in points if p.mode == mode]
        ax.plot([p.gb for p in ps], [p.seconds / 60 for p in ps], style, label=MODES[mode])
        extra = [p for p in ps if not p.simulated]
        if extra:
            ax.plot([p.gb for p in extra], [p.seconds / 60 for p in extra], "x", color="grey",
                    label="extrapolated")
    ax.set_xlabel("VM size (GB)")
    ax.set_ylabel("simulated time to become secure (min)")
    ax.set_title("ESM scaling (seed 004): page in everything vs migrate at INIT_DONE")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


DEFAULT_COLUMN = "default"


@attrs.frozen
class Cell:
    scenario: str
    params: tuple[tuple[str, int], ...]
    release: str
    kind: str | None
    """The violation kind found first (None: clean)."""
    seed: int | None
    message: str = ""

    @property
    def row(self) -> str:
        return self.scenario + "".join(f" -p {k}={v}" for k, v in self.params)


def release_rows() -> list[tuple[str, tuple[tuple[str, int], ...]]]:
    """Every svm scenario with its defaults, and abort-on-register-failure with slot 1
    failing (before v5.17 slot 1 is walked first, from v5.17 slot 0 is)."""
    rows = [(name, ()) for name in suites()["svm"][1]]
    i = rows.index(("abort-on-register-failure", ()))
    rows.insert(i + 1, ("abort-on-register-failure", (("fail_slot", 1),)))
    return rows


def releases_study(schedules: int = 200, progress=None) -> list[Cell]:
    """Hunt each row of ``release_rows`` on the default model and on every release."""
    cells = []
    for scenario, params in release_rows():
        for release in (DEFAULT_COLUMN, *RELEASES):
            h = hunt(scenario, schedules=schedules, seed=0, params=dict(params),
                     release=None if release == DEFAULT_COLUMN else release)
            v = h.found.violation if h.found else None
            cell = Cell(scenario, params, release, v.kind if v else None,
                        h.found.seed if h.found else None, v.message if v else "")
            cells.append(cell)
            if progress:
                progress(f"{cell.row:<46} {release:>8}: "
                         + (f"{cell.kind} (seed {cell.seed})" if v else "clean"))
    return cells


def releases_table(cells: list[Cell], schedules: int) -> str:
    columns = [DEFAULT_COLUMN, *RELEASES]
    rows = list(dict.fromkeys(c.row for c in cells))
    by = {(c.row, c.release): c for c in cells}
    width = max(len(r) for r in rows) + 1
    cell = 2 + max([len(c) for c in columns] + [len(v.kind or "-") for v in by.values()])
    lines = [f"{'scenario':<{width}}" + "".join(f"{c:>{cell}}" for c in columns)]
    for r in rows:
        text = "".join(f"{(by[r, c].kind or '-') if (r, c) in by else '':>{cell}}"
                       for c in columns)
        lines.append(f"{r:<{width}}{text}")
    failing = {c.release for c in cells if c.kind}
    lines.append(f"cells: the kind of the first violation in {schedules} random schedules "
                 "(seeds 0..), '-' none; releases with a finding: "
                 + (", ".join(c for c in columns if c in failing) or "none"))
    return "\n".join(lines)


STUDIES = {"esm-scaling": "simulated time to make a VM secure against its size, for two ESM "
                          "strategies (seed 004)",
           "releases": "which modelled kernel releases fail which secure-VM scenario"}
