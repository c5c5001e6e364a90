"""The Dask cluster a stage computes on.

In:  an optional scheduler address; otherwise Dask's own ``scheduler-address`` setting
     (``DASK_SCHEDULER_ADDRESS``); otherwise a new local cluster: ``dask_cuda.LocalCUDACluster``
     (one worker per GPU) when ``gpu`` is true, or left to detection
     (:func:`~tasks.common.gpu.gpu_available`; a broken CUDA install raises GpuSetupError) and a
     GPU is there, else ``distributed.LocalCluster`` with one single-threaded worker process per core.
Out: a connected ``distributed.Client`` (a context manager that also closes a cluster it made).
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Iterator

import dask
from distributed import Client, LocalCluster

from tasks.common.gpu import gpu_available
from tasks.common.process import restore_environment


def quiet_dask_logs() -> None:
    """Workers log at WARNING: their INFO lines (connections, start-up) drown the flow's own logs."""
    dask.config.set({"logging.distributed": "warning"})
    logging.getLogger("distributed").setLevel(logging.WARNING)


def scheduler_address(address: str | None = None) -> str | None:
    return address or dask.config.get("scheduler-address", None) or None


@contextmanager
def dask_client(address: str | None = None, n_workers: int | None = None, gpu: bool | None = None,
                memory_limit: str | None = None) -> Iterator[Client]:
    """A client on an existing scheduler, or on a local (CUDA) cluster made for the duration."""
    address = scheduler_address(address)
    if address:
        with Client(address) as client:
            yield client
        return
    if gpu is None:
        gpu = gpu_available()
    if gpu:
        from dask_cuda import LocalCUDACluster

        with LocalCUDACluster(dashboard_address=None) as cluster, Client(cluster) as client:
            restore_environment()
            yield client
        return
    workers = n_workers or os.cpu_count() or 1
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit=memory_limit or "auto", silence_logs=logging.WARNING) as cluster, \
            Client(cluster) as client:
        restore_environment()  # the workers are single-threaded, not this process (see tasks/common/process.py)
        yield client


@contextmanager
def shared_dask_address(address: str | None = None) -> Iterator[str]:
    """The scheduler address that several tasks of one flow share: ``address`` (or Dask's
    setting) as it is, else a local cluster (as :func:`dask_client` makes) started once for them all."""
    address = scheduler_address(address)
    if address:
        yield address
        return
    with dask_client() as client:
        yield client.scheduler.address


@contextmanager
def task_client() -> Iterator[Client | None]:
    """A client on the Dask cluster the calling task runs on, or None outside a Dask worker.

    A task that Prefect's DaskTaskRunner placed on a worker fans its own work out on the same
    cluster; ``worker_client`` takes the task out of the worker's thread pool meanwhile, so its
    sub-tasks never wait for the thread the task holds. Outside a worker, stage code given None
    runs the same task graph on Dask's local scheduler.
    """
    from distributed import get_worker, worker_client

    try:
        get_worker()
    except ValueError:
        yield None
        return
    with worker_client() as client:
        yield client


def dask_task_runner(address: str | None = None, n_workers: int | None = None, gpu: bool | None = None):
    """A Prefect ``DaskTaskRunner`` on the same cluster :func:`dask_client` would use.

    Tasks submitted by a flow with this runner run on the Dask workers (one model per worker
    process stays loaded between tasks).
    """
    from prefect_dask import DaskTaskRunner

    quiet_dask_logs()
    address = scheduler_address(address)
    if address:
        return DaskTaskRunner(address=address)
    if gpu is None:
        gpu = gpu_available()
    if gpu:
        return DaskTaskRunner(cluster_class="dask_cuda.LocalCUDACluster", cluster_kwargs={"dashboard_address": None})
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs={
        "n_workers": n_workers or os.cpu_count() or 1, "threads_per_worker": 1, "processes": True,
        "dashboard_address": None, "silence_logs": logging.WARNING})
