"""Prefect glue shared by the @task wrappers: caching in the store, retries, artifacts.

- :func:`cached_in_store`: a task configured to persist its (JSON) result in the store, under a
  cache key the task computes from content hashes, config and code version, so a new flow run
  with the same inputs gets a ``Cached`` state instead of running.
- :func:`retry_unless_input_error`: retry condition; bad input is not retried.
- :func:`store_from`: the :class:`~tasks.common.store.Store` for a flow parameter.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from prefect import Task
from prefect.filesystems import RemoteFileSystem

from tasks.common.catalog import RESULTS_FOLDER, Catalog
from tasks.common.errors import InputError
from tasks.common.store import Store

RETRY_DELAYS = [5, 20, 60]  # seconds: backoff for storage, network and worker failures


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes) from free-form names."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")


def store_from(store: str | Store, storage_options: dict[str, Any] | None = None) -> Store:
    """``store`` itself when it is a Store, else a Store for the URI (reads a credentials block once)."""
    return store if isinstance(store, Store) else Store(store, storage_options)


class StoreResults(RemoteFileSystem):
    """Prefect result storage in a store's results folder, saved with no secret.

    ``basepath`` is the results folder's URI and ``settings`` the store's ``storage_options``
    (an endpoint, the name of a credentials block: never a secret value). The filesystem comes
    from a :class:`~tasks.common.store.Store` built from them, so credentials are read from the
    environment or the Secret block by the process that uses the block, and only kept in memory.
    """

    _block_type_name = "Curation Store Results"

    @property
    def filesystem(self):
        if not self._filesystem:
            self._filesystem = Store(self.basepath, self.settings).fs
        return self._filesystem


def result_storage_for(store: Store):
    """Where Prefect keeps task results and cache records for this store.

    Local store: its results folder. Object store: a saved :class:`StoreResults` block (Prefect 3.8
    accepts only saved blocks as a task's result storage) holding the store's non-secret options;
    this process's instance uses the store's own filesystem, credentials included, in memory.
    """
    local = store.local_path(RESULTS_FOLDER)
    if local is not None:
        return Path(local)
    block = StoreResults(basepath=store.uri(RESULTS_FOLDER), settings=store.storage_options)
    block._filesystem = store.fs  # the credentials stay in this process (and travel pickled with the task)
    block.save("curation-results-" + hashlib.sha256(store.root.encode()).hexdigest()[:16], overwrite=True)
    return block


def cached_in_store(task: Task, store: Store) -> Task:
    """``task`` with its results and cache records persisted in ``store``."""
    return task.with_options(result_storage=result_storage_for(store), persist_result=True,
                             result_serializer="json")


def retry_unless_input_error(task, task_run, state) -> bool:
    """Retry storage, network and worker failures; never a bad input, which would fail again."""
    try:
        state.result()
    except InputError:
        return False
    except Exception:  # noqa: BLE001 - anything else is worth a retry
        return True
    return True


def run_bounded(task: Task, calls: list[tuple], limit: int) -> list:
    """Submit ``task`` once per argument tuple, at most ``limit`` running at a time; return final states.

    A slot is refilled as soon as any running call finishes, so one slow call never holds the
    others back. States come back in the order of ``calls``; failures are returned, not raised.
    """
    from prefect.futures import as_completed

    limit = max(1, limit)
    futures: dict[int, Any] = {}
    running: dict[Any, int] = {}
    queue = list(enumerate(calls))
    while queue or running:
        while queue and len(running) < limit:
            position, args = queue.pop(0)
            future = task.submit(*args)
            futures[position] = future
            running[future] = position
        finished = next(as_completed(list(running)))
        running.pop(finished)
    for future in futures.values():
        future.wait()  # records the final state on the future; without it .state asks the API, which may lag
    return [futures[i].state for i in range(len(calls))]


def validated_cache_key(catalog: Catalog, key: str, folder: str | None = None, files: list[str] | None = None) -> str:
    """``key``, after making sure a cache hit on it would be true: the stage run in ``folder`` finished
    and every output its manifest lists is still in the store (or, for per-shard work, every one
    of ``files`` exists).

    Otherwise the cache record stored under ``key`` (if any) is removed, so Prefect runs the task
    again instead of returning a result whose files are gone; the stage then redoes what is missing.
    """
    complete = catalog.finished(folder) is not None if folder else all(catalog.store.exists(f) for f in files or ())
    if not complete:
        catalog.store.remove(f"{RESULTS_FOLDER}/{key}")
    return key
