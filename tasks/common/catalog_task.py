"""The Prefect task through which a flow resolves the catalog once: a pool and its latest runs.

``resolve_pool_task`` returns a :class:`~tasks.common.catalog.PoolSnapshot` as a dict; the flow
passes it to every task that reads the pool, so each task's cache key and the data it reads come
from this one resolution, even if a pool refresh publishes new runs while the flow is going.
"""

from __future__ import annotations

from prefect import get_run_logger, task

from tasks.common.catalog import Catalog
from tasks.common.prefect_support import RETRY_DELAYS, retry_unless_input_error
from tasks.common.store import Store


@task(name="resolve_pool", retries=2, retry_delay_seconds=RETRY_DELAYS[:2], retry_condition_fn=retry_unless_input_error)
def resolve_pool_task(store: Store, pool_name: str) -> dict:
    snapshot = Catalog(store).snapshot(pool_name)
    get_run_logger().info("pool %r: manifest %s, filters %s", pool_name, snapshot.pool.content_hash[:16],
                          snapshot.filters.content_hash[:16] if snapshot.filters else "none")
    return snapshot.to_dict()
