"""Prefect glue shared by the @task wrappers: caching in the store, retries, artifacts.

- :func:`cached_in_store`: a task configured to persist its (JSON) result in the store, under a
  cache key the task computes from content hashes, config and code version, so a new flow run
  with the same inputs gets a ``Cached`` state instead of running.
  Its cache records are written under a lock (Prefect's SERIALIZABLE isolation with a
  :class:`StoreLockManager`): when two runs reach the same task at once, the second waits for the
  first and then gets ``Cached``; no work is done twice.
- :func:`retry_unless_input_error`: retry condition; bad input is not retried.
- :func:`store_from`: the :class:`~tasks.common.store.Store` for a flow parameter.
- :func:`artifact_key`: the key of a stage's artifact on a pool in a store.
- :func:`untracked`: a subflow's result, so that the tasks it feeds stay visible in the UI.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

from prefect import Task
from prefect.cache_policies import NO_CACHE
from prefect.filesystems import RemoteFileSystem
from prefect.locking.protocol import LockManager
from prefect.utilities.annotations import NotSet

from tasks.common.catalog import LOCKS_FOLDER, RESULTS_FOLDER, Catalog
from tasks.common.errors import InputError
from tasks.common.store import Store

RETRY_DELAYS = [5, 20, 60]  # seconds: backoff for storage, network and worker failures


def artifact_key(store: Store | str, pool: str, stage: str, *details: str) -> str:
    """The Prefect artifact key of a stage's report on a pool: ``<pool>-<stage>[-<details>]-<store>``.

    ``store`` is a :class:`Store` or its root; ``<store>`` is 8 hex digits of a hash of its root, so
    a pool of the same name in another store has other keys. ``details`` tell apart reports of one
    stage on one pool (which tree, which subset). Runs of the same pool and stage in the same store
    add versions to one key (its history in the UI); a run writes each key once. Free-form names
    become lowercase letters, digits and dashes, as Prefect requires.
    """
    root = store.root if isinstance(store, Store) else str(store)
    suffix = hashlib.sha256(root.encode()).hexdigest()[:8]
    return re.sub(r"[^a-z0-9]+", "-", "-".join([pool, stage, *details, suffix]).lower()).strip("-")


def untracked(result: Any) -> Any:
    """``result``, a subflow's return value, no longer linked by Prefect to the subflow's run; returned as is.

    Prefect links a return value and its top-level parts (a dict's keys and values) to the run that
    made it, by identity, and records any later argument that is one of them as an input of kind
    ``flow_run``: Prefect 3.8's UI cannot show that kind ("Invalid TaskInputResponse"), and the
    flow run's Task Runs tab stays empty. Identical strings are shared (a key such as ``"name"``, a
    pool name), so nearly any later task would be linked. Call it on every subflow result in a flow.
    """
    from prefect.context import FlowRunContext
    from prefect.utilities.collections import visit_collection

    context = FlowRunContext.get()
    if context is not None:
        visit_collection(result, visit_fn=lambda part: context.run_results.pop(id(part), None), max_depth=1,
                         return_data=False)
    return result


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
    """``task`` with its results and cache records persisted in ``store``, each record written under a lock
    held in the store (:class:`StoreLockManager`), so concurrent runs of the same work run it once."""
    cached = task.with_options(result_storage=result_storage_for(store), persist_result=True,
                               result_serializer="json")
    if cached.cache_policy not in (None, NotSet, NO_CACHE):
        # set on the task, not through with_options: a task with a cache_key_fn ignores a cache_policy option
        cached.cache_policy = cached.cache_policy.configure(lock_manager=StoreLockManager(store),
                                                            isolation_level="SERIALIZABLE")
    return cached


LOCK_LEASE_S = 120.0  # a holder renews its lease every LOCK_LEASE_S / 4; a lease not renewed for this long is stale
LOCK_POLL_S = 0.5


class StoreLockManager(LockManager):
    """Prefect locks on cache records, kept as lease objects in the store (local folder or S3).

    A lock is ``_prefect/results/_locks/<key>.lock``, created only if absent
    (:meth:`Store.create_exclusive`: a hard link locally, a conditional PUT on S3), holding the
    holder, its host and process id, and an expiry ``LOCK_LEASE_S`` ahead that the holding process
    renews in a thread until it releases the lock. A waiter breaks a lease that has expired (its
    holder died or hung) or whose holder was a process of this host that no longer exists (a
    SIGKILLed run: its retry does not wait for the lease). Limit: breaking a stale lease is a read
    then a delete, so two waiters breaking the same stale lease at the same instant may both get it;
    live leases are never broken.
    """

    def __init__(self, store: Store, lease_seconds: float = LOCK_LEASE_S):
        self.store, self.lease_seconds = store, lease_seconds

    def _path(self, key: str) -> str:
        return f"{LOCKS_FOLDER}/{key}.lock"

    def _lease(self, holder: str) -> bytes:
        return json.dumps({"holder": holder, "host": socket.gethostname(), "pid": os.getpid(),
                           "expires": time.time() + self.lease_seconds}).encode()

    def _read(self, key: str) -> dict | None:
        try:
            return json.loads(self.store.read_bytes(self._path(key)))
        except (FileNotFoundError, ValueError):  # gone, or (locally impossible) half-read
            return None

    def _stale(self, lease: dict) -> bool:
        if lease.get("expires", 0) < time.time():
            return True
        if lease.get("host") == socket.gethostname():
            try:
                os.kill(int(lease["pid"]), 0)
            except ProcessLookupError:
                return True
            except (PermissionError, KeyError, ValueError):
                return False
        return False

    def acquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                     hold_timeout: float | None = None) -> bool:
        deadline = None if acquire_timeout is None else time.monotonic() + acquire_timeout
        while True:
            if self.store.create_exclusive(self._path(key), self._lease(holder)):
                _start_renewal(self, key, holder)
                return True
            lease = self._read(key)
            if lease is not None and lease.get("holder") == holder:
                if (self.store.root, key, holder) not in _RENEWALS:  # our create whose answer was lost
                    _start_renewal(self, key, holder)
                return True
            if lease is not None and self._stale(lease):
                self.store.remove(self._path(key))
                continue
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(LOCK_POLL_S)

    async def aacquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                            hold_timeout: float | None = None) -> bool:
        import anyio

        return await anyio.to_thread.run_sync(self.acquire_lock, key, holder, acquire_timeout, hold_timeout)

    def release_lock(self, key: str, holder: str) -> None:
        _stop_renewal(self, key, holder)
        lease = self._read(key)
        if lease is None or lease.get("holder") != holder:
            raise ValueError(f"No lock held by {holder} for transaction with key {key}")
        self.store.remove(self._path(key))

    def is_locked(self, key: str) -> bool:
        lease = self._read(key)
        return lease is not None and not self._stale(lease)

    def is_lock_holder(self, key: str, holder: str) -> bool:
        lease = self._read(key)
        return lease is not None and lease.get("holder") == holder

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_locked(key):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(LOCK_POLL_S)
        return True

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        import anyio

        return await anyio.to_thread.run_sync(self.wait_for_lock, key, timeout)


_RENEWALS: dict[tuple[str, str, str], tuple[threading.Event, threading.Thread]] = {}  # (root, key, holder)
RENEWAL_FAILURES = 3  # renewals failed in a row before the holder gives its lease up (it then lapses)


def _start_renewal(manager: StoreLockManager, key: str, holder: str) -> None:
    """Rewrite the lease every quarter of its length until :func:`_stop_renewal` (a daemon thread); after
    RENEWAL_FAILURES failures in a row it stops, with a warning, and the lease lapses."""
    import logging

    stop = threading.Event()

    def renew():
        failures = 0
        while not stop.wait(manager.lease_seconds / 4):
            try:
                lease = manager._read(key)
                if lease is None or lease.get("holder") != holder or stop.is_set():
                    return
                manager.store.write_bytes(manager._path(key), manager._lease(holder))
                failures = 0
            except Exception as exc:  # noqa: BLE001 - the store is unreachable now: try again at the next beat
                failures += 1
                logging.getLogger(__name__).warning("lease %s: renewal failed (%s), %d in a row", key, exc, failures)
                if failures >= RENEWAL_FAILURES:
                    return

    thread = threading.Thread(target=renew, name=f"lease-{key}", daemon=True)
    _RENEWALS[(manager.store.root, key, holder)] = (stop, thread)
    thread.start()


def _stop_renewal(manager: StoreLockManager, key: str, holder: str) -> None:
    """Stop the lease's renewal and wait for it, so that no renewal writes the lease back after release."""
    stop, thread = _RENEWALS.pop((manager.store.root, key, holder), (None, None))
    if stop is not None:
        stop.set()
        thread.join(timeout=manager.lease_seconds)


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
