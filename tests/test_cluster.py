"""Hunts on a Dask cluster (``--cluster``) equal the local hunt: a LocalCluster of two
one-thread worker processes on loopback, and a worker joined with ``emu worker``."""

from __future__ import annotations

import subprocess
import sys

import dask
import pytest
from distributed import Client, LocalCluster

import emu
from emu.errors import EmuError
from emu.sim.cluster import CLUSTER_CONFIG


def _key(h: emu.HuntResult) -> tuple:
    found = (h.found.seed, h.found.trace_hash, h.found.violation.message) if h.found else None
    return h.schedules, found, h.violating, h.steps_total, h.steps_max, h.actors


@pytest.fixture(scope="module")
def cluster():
    with dask.config.set(CLUSTER_CONFIG), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                         dashboard_address=":0") as c:
        yield c.scheduler_address


@pytest.mark.parametrize(("name", "quirks", "schedules"), [
    ("share-vs-pageout", ("page-out-lock-leak",), 100),
    ("donate-vs-abort", ("set-owner-no-tlbi",), 100),
    ("nested-teardown-vs-enter", ("idr-alloc-unlocked",), 60),
    ("svm-boot", (), 60),
])
def test_a_cluster_hunt_finds_what_a_local_one_does(cluster, name, quirks, schedules):
    local = emu.hunt(name, quirks=quirks, schedules=schedules, shrink=False)
    remote = emu.hunt(name, quirks=quirks, schedules=schedules, shrink=False, cluster=cluster)
    assert _key(remote) == _key(local)
    assert (local.found is None) == (not quirks)


def test_every_finding_of_a_keep_going_hunt_comes_back(cluster):
    saved: list[int] = []
    local = emu.hunt("lost-update", schedules=80, keep_going=True, shrink=False)
    remote = emu.hunt("lost-update", schedules=80, keep_going=True, shrink=False,
                      cluster=cluster, on_finding=lambda r: saved.append(r.seed))
    assert _key(remote) == _key(local) and local.violating > 5
    assert len(saved) == local.violating == len(set(saved))


def test_a_scenario_file_travels_by_its_path(cluster, tmp_path):
    f = tmp_path / "race.py"
    f.write_text("def race(m, n: int = 2):\n"
                 "    c = m.shared('c', 0)\n"
                 "    async def inc():\n"
                 "        v = await c.read()\n"
                 "        await c.write(v + 1)\n"
                 "    for i in range(n):\n"
                 "        m.spawn(f'w{i}', inc)\n"
                 "    m.final('sum', lambda: None if c.value == n else f'c is {c.value}')\n")
    local = emu.hunt(f"{f}:race", schedules=40, shrink=False)
    remote = emu.hunt(f"{f}:race", schedules=40, shrink=False, cluster=cluster)
    assert _key(remote) == _key(local) and local.found is not None
    assert remote.found.scenario == f"{f}:race"


def test_the_cli_hunts_on_a_cluster(cli, cluster, tmp_path):
    args = ("hunt", "share-vs-pageout", "--quirk", "page-out-lock-leak", "--schedules", "50",
            "--no-shrink")
    local = cli(*args, "--out", str(tmp_path / "a"))
    remote = cli(*args, "--out", str(tmp_path / "b"), "--cluster", cluster)
    assert local.status == remote.status == 1

    def said(r) -> list[str]:  # the summary but its speed; the report (a few later findings
        # may be saved too, as --workers documents)
        lines = r.out.replace(str(tmp_path / "b"), str(tmp_path / "a")).splitlines()
        summary = next(i for i, line in enumerate(lines) if line.startswith("hunt "))
        return [lines[summary].rpartition(";")[0], *lines[summary + 1:]]

    assert said(remote) == said(local) and "seed 1" in said(local)[1]


@pytest.mark.parametrize(("address", "says"), [
    ("nonsense", "bad Dask scheduler address 'nonsense': missing port number"),
    ("foo://x:1", "unknown scheme 'foo'"),
    ("tcp://127.0.0.1:1", "cannot reach a Dask scheduler at tcp://127.0.0.1:1"),
])
def test_a_bad_address_is_a_clear_error_at_once(cli, tmp_path, address, says):
    r = cli("hunt", "lost-update", "--cluster", address, "--out", str(tmp_path))
    assert r.status == 2 and says in r.err and len(r.err.strip().splitlines()) == 1


def test_cluster_and_learning_strategies_or_workers_are_refused(cli, tmp_path):
    r = cli("hunt", "lost-update", "--strategy", "guided", "--cluster", "tcp://h:1",
            "--out", str(tmp_path))
    assert r.status == 2 and "--strategy guided cannot run with --cluster tcp://h:1" in r.err
    with pytest.raises(EmuError, match="--workers and --cluster do not go together"):
        emu.hunt("lost-update", workers=2, cluster="tcp://h:1")


def test_emu_worker_joins_a_scheduler():
    with dask.config.set(CLUSTER_CONFIG), \
            LocalCluster(n_workers=0, processes=True, host="127.0.0.1",
                         dashboard_address=":0") as scheduler:
        address = scheduler.scheduler_address
        worker = subprocess.Popen([sys.executable, "-m", "emu.cli", "worker", address],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            with Client(address) as client:
                client.wait_for_workers(1, timeout=60)
                assert list(client.nthreads().values()) == [1]
            local = emu.hunt("lost-update", schedules=30, shrink=False)
            assert _key(emu.hunt("lost-update", schedules=30, shrink=False,
                                 cluster=address)) == _key(local)
        finally:
            worker.terminate()
            out, _ = worker.communicate(timeout=30)
        assert f"joining {address} with 1 one-thread worker process(es)" in out


def test_emu_worker_refuses_a_bad_address_before_starting(cli):
    r = cli("worker", "nonsense")
    assert r.status == 2 and "bad Dask scheduler address 'nonsense'" in r.err


def test_coverage_comes_back_from_the_cluster(cluster):
    local = emu.hunt("share-storm", schedules=30, coverage=True, shrink=False)
    remote = emu.hunt("share-storm", schedules=30, coverage=True, shrink=False, cluster=cluster)
    assert remote.coverage.table() == local.coverage.table()
    assert "share-races-page-out" in local.coverage.table()
