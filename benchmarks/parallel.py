"""Hunt throughput with 1 and 2 worker processes and on a 2-worker Dask LocalCluster,
measured in the same run, and the same findings from all three; then emu against frontrun
and simloom on their own workload (``peers.py``).

For each scenario (default: the svm suite), random-walk hunts of ``--schedules`` schedules
from the same seed with ``workers=1`` (the serial hunt), ``workers=2`` and ``cluster=`` a
LocalCluster of two one-thread worker processes on loopback (started once, before the
first hunt: a cluster outlives its hunts), run in the order 1, 2, C, C, 2, 1 so that a drift
in the machine's load hits all alike; schedules per second is wall time, everything included
(forking the workers, connecting to the cluster, the parent's bookkeeping). Each hunt's
result must be the same (schedules, first finding, its trace hash, violating count, steps);
then a quirk hunted with ``keep_going`` must report the same findings. Target (issue 11): a
ratio of at least 1.7 for 2 workers. The machine's load (``os.getloadavg``) is printed
before and after, and the cores the local hunts actually got (CPU seconds of the process
and its workers over wall seconds): on a machine shared with other work, two workers get
less than two cores, and the ratio says as much about the machine as about emu. (A
cluster's workers outlive the hunt, so their CPU time is not counted: no cores column.)
Run: python benchmarks/parallel.py [--schedules N] [--scenario NAME ...] [--no-cluster]
     [--peer-schedules N] [--simloom-python PYTHON3.12]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Iterator

import emu
from emu.sim.cluster import CLUSTER_CONFIG
from emu.sim.scenario import suites

QUIRK = ("share-vs-pageout", "page-out-lock-leak")
WAYS = ("1", "2", "C")
"""One worker, two workers, the cluster."""


def where_to(way: str, cluster: str | None) -> dict:
    """``emu.hunt``'s keyword for one of ``WAYS``."""
    return {"cluster": cluster} if way == "C" else {"workers": int(way)}


def hunt(scenario: str, way: str, schedules: int,
         cluster: str | None) -> tuple[emu.HuntResult, float, float]:
    """The hunt, its wall seconds and the CPU seconds it used (with its local workers)."""
    where = where_to(way, cluster)
    before, start = os.times(), time.perf_counter()
    h = emu.hunt(scenario, schedules=schedules, shrink=False, **where)
    after, wall = os.times(), time.perf_counter() - start
    cpu = sum(getattr(after, f) - getattr(before, f)
              for f in ("user", "system", "children_user", "children_system"))
    return h, wall, cpu


def same(a: emu.HuntResult, b: emu.HuntResult) -> bool:
    def key(h: emu.HuntResult) -> tuple:
        found = (h.found.seed, h.found.trace_hash) if h.found else None
        return h.schedules, found, h.violating, h.steps_total, h.steps_max
    return key(a) == key(b)


@contextlib.contextmanager
def local_cluster(wanted: bool) -> Iterator[tuple[str | None, str]]:
    """A LocalCluster of two one-thread workers on loopback (its address), or None and why
    not."""
    if not wanted:
        yield None, "--no-cluster"
        return
    try:
        import dask
        from distributed import LocalCluster
    except ImportError:
        yield None, "distributed is not installed (pip install 'emu[cluster]')"
        return
    with dask.config.set(CLUSTER_CONFIG), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                         dashboard_address=":0") as c:
        yield c.scheduler_address, ""


def rate(row: list) -> float:
    return row[0] / row[1] if row[1] else 0.0


def line(name: str, rows: dict[str, list], agree: bool, cluster: str | None) -> str:
    one, two, c = (rate(rows[w]) for w in WAYS)
    on_cluster = f"{c:>10,.0f} {c / one:>6.2f}" if cluster else f"{'n/a':>10} {'':>6}"
    return (f"{name:<28} {one:>10,.0f} {two:>11,.0f} {two / one:>6.2f} {on_cluster} "
            f"{rows['1'][2] / rows['1'][1]:>7.2f} {rows['2'][2] / rows['2'][1]:>7.2f}  "
            f"{'yes' if agree else 'NO'}")


def throughput(names: list[str], schedules: int, cluster: str | None) -> tuple[float, bool]:
    """The table of hunt rates; the overall 2-worker ratio and whether all results agree."""
    print(f"{'scenario':<28} {'1 worker/s':>10} {'2 workers/s':>11} {'ratio':>6} "
          f"{'cluster/s':>10} {'ratio':>6} {'cores 1':>7} {'cores 2':>7}  same")
    ways = ("1", "2", "C", "C", "2", "1") if cluster else ("1", "2", "2", "1")
    totals = {w: [0, 0.0, 0.0] for w in WAYS}
    all_same = True
    for name in names:
        rows = {w: [0, 0.0, 0.0] for w in WAYS}
        results = []
        for way in ways:
            h, wall, cpu = hunt(name, way, schedules, cluster)
            results.append(h)
            for row in (rows[way], totals[way]):
                row[0] += h.schedules
                row[1] += wall
                row[2] += cpu
        agree = all(same(results[0], h) for h in results[1:])
        all_same &= agree
        print(line(name, rows, agree, cluster))
    print(line("all", totals, all_same, cluster))
    return rate(totals["2"]) / rate(totals["1"]), all_same


def findings(schedules: int, cluster: str | None) -> bool:
    """A quirk hunted with keep_going everywhere: the same findings?"""
    name, quirk = QUIRK
    found = {}
    for way in WAYS if cluster else WAYS[:2]:
        seeds: list[int] = []
        where = where_to(way, cluster)
        h = emu.hunt(name, schedules=schedules, quirks=[quirk], keep_going=True, shrink=False,
                     on_finding=lambda r, s=seeds: s.append(r.seed), **where)
        found[way] = (sorted(seeds), h.found.seed if h.found else None, h.violating)
    agree = all(f == found["1"] for f in found.values())
    print(f"{name} --quirk {quirk} --keep-going: "
          + ", ".join(f"{'cluster' if w == 'C' else w + ' worker(s)'} {len(f[0])} findings"
                      for w, f in found.items())
          + f"; the same seeds and first finding: {'yes' if agree else 'NO'}")
    return agree


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schedules", type=int, default=200, help="schedules per hunt")
    ap.add_argument("--scenario", action="append", help="only these (repeatable)")
    ap.add_argument("--no-cluster", action="store_true", help="skip the LocalCluster column")
    ap.add_argument("--peer-schedules", type=int, default=500,
                    help="schedules per tool on the peers' workload (0: skip it)")
    ap.add_argument("--simloom-python", default=None, metavar="PYTHON",
                    help="a Python >= 3.12 with simloom installed (simloom needs 3.12)")
    args = ap.parse_args()
    names = args.scenario or suites()["svm"][1]
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    with local_cluster(not args.no_cluster) as (cluster, why):
        if cluster is None:
            print(f"no cluster column: {why}")
        ratio, all_same = throughput(names, args.schedules, cluster)
        print(f"ratio {ratio:.2f} (target 1.7: {'met' if ratio >= 1.7 else 'NOT met'})")
        agree = findings(args.schedules, cluster)
    if args.peer_schedules:
        from peers import compare, table  # (beside this file)
        print(table(compare(args.peer_schedules, args.simloom_python)))
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    if not all_same or not agree:
        raise SystemExit("the hunts with 1 and 2 workers (or the cluster) differ")


if __name__ == "__main__":
    main()
