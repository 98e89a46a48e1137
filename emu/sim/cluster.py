"""Hunting on a Dask distributed cluster (``hunt(..., cluster=ADDRESS)``, ``--cluster``).

The cluster is only another ``concurrent.futures`` executor for ``parallel.Pool``: Dask's
``Client.get_executor()``. Each worker thread of the cluster is one slot; a worker should
have one thread (``emu worker`` starts them so), since schedules are pure Python and threads
of one process share its interpreter lock. A scheduler that queues tasks (Dask's default
``worker-saturation`` of 1.1) hands a worker its next chunk only once it has finished one:
start it with ``DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION=inf`` and the next chunk is
already waiting (a fifth faster measured on a LocalCluster). Dask is optional (``pip install
'emu[cluster]'``) and imported only when a cluster is asked for.
"""

from __future__ import annotations

import os
import socket
import sys

from ..errors import EmuError
from .parallel import Workers

CONNECT_TIMEOUT = "10s"
CHUNK = 64
"""Seeds per chunk: a Dask task costs a round trip through the scheduler (16 seeds a chunk
ran 0.6-0.7x as fast as 64 on a LocalCluster)."""
PROBE_TIMEOUT = 5.0
"""Seconds to wait for the scheduler's port to answer."""
INSTALL = "pip install 'emu[cluster]'"
WORKER_ENV = {"DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False"}
"""Dask samples a worker's stacks every 10 ms by default: a third of a hunt's time."""
CLUSTER_CONFIG = {"distributed.worker.profile.enabled": False,
                  "distributed.scheduler.worker-saturation": float("inf")}
"""The same settings, and the scheduler's (the module docstring), for a ``LocalCluster``
made in this process: ``with dask.config.set(CLUSTER_CONFIG), LocalCluster(...)``."""


def _client_class() -> type:
    try:
        from distributed import Client
    except ImportError:
        raise EmuError(f"--cluster needs Dask's distributed package: {INSTALL}") from None
    return Client


def connect(address: str) -> Workers:
    """The cluster at ``address``: its executor, one slot per worker thread."""
    client_class = _client_class()
    _check_reachable(address)
    try:
        client = client_class(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise EmuError(f"cannot reach a Dask scheduler at {address!r}: {exc}") from None
    slots = sum(client.nthreads().values())
    if slots == 0:
        client.close()
        raise EmuError(f"the Dask cluster at {address} has no workers: start some with "
                       f"'emu worker {address}'")
    return Workers(client.get_executor(pure=False), slots, client.close, chunk=CHUNK)


def check_address(address: str) -> tuple[str, str]:
    """``address`` as Dask reads it, (scheme, location); EmuError if it cannot."""
    _client_class()
    from distributed.comm.addressing import parse_address, parse_host_port
    from distributed.comm.registry import backends
    try:
        scheme, location = parse_address(address)
        if scheme not in backends:
            raise ValueError(f"unknown scheme {scheme!r} (known: {', '.join(backends)})")
        if scheme == "tcp":
            parse_host_port(location)
    except (ValueError, TypeError) as exc:
        raise EmuError(f"bad Dask scheduler address {address!r}: {exc} (expected "
                       "tcp://HOST:PORT, the address 'dask scheduler' prints)") from None
    return scheme, location


def _check_reachable(address: str) -> None:
    """EmuError, at once, for an address Dask cannot parse or a TCP scheduler that does not
    answer (a Dask client would retry until its timeout, then fail again as it exits)."""
    from distributed.comm.addressing import parse_host_port
    scheme, location = check_address(address)
    if scheme != "tcp":
        return
    try:
        socket.create_connection(parse_host_port(location), timeout=PROBE_TIMEOUT).close()
    except OSError as exc:
        raise EmuError(f"cannot reach a Dask scheduler at {address}: "
                       f"{exc.strerror or exc}") from None


def worker_command(address: str, processes: int) -> tuple[list[str], dict[str, str]]:
    """The command (and its environment) that joins ``processes`` one-thread Dask workers
    to the scheduler at ``address`` (which need not be up yet: a worker waits for it)."""
    check_address(address)
    argv = [sys.executable, "-m", "distributed.cli.dask_worker", address,
            "--nworkers", str(processes), "--nthreads", "1"]
    return argv, {**os.environ, **WORKER_ENV}
