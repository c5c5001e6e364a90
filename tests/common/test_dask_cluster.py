"""Which Dask cluster a stage gets: local by default, or an existing scheduler."""

import dask
import pytest
from distributed import LocalCluster

from tasks.common.dask_cluster import dask_client


def _where(x):
    import os

    return os.getpid()


def test_local_cluster_by_default():
    with dask_client(n_workers=2, gpu=False) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        assert len(set(client.gather(client.map(_where, range(20), pure=False)))) >= 1


@pytest.mark.parametrize("how", ["argument", "dask config"])
def test_existing_scheduler(how):
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster:
        if how == "argument":
            context = dask_client(cluster.scheduler_address)
        else:
            dask.config.set({"scheduler-address": cluster.scheduler_address})
            context = dask_client()
        try:
            with context as client:
                assert client.scheduler.address == cluster.scheduler_address
                assert client.submit(sum, [1, 2]).result() == 3
        finally:
            dask.config.set({"scheduler-address": None})
        assert len(cluster.scheduler_info["workers"]) == 1  # the user's cluster is left running
