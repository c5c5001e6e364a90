"""The store catalog: the one module that knows where everything lives in the store.

Every stage asks the catalog for the folder it writes and for the records of its inputs; no
stage builds another stage's paths or parses another stage's file names. The whole layout,
relative to the store root (``<pool>``, ``<run>``, ``<name>`` are user-given names; ``<key>``
and ``<hash>`` are 16 hex characters of a content hash)::

    pools/<pool>/manifest.json                    the pool: the download stage's latest manifest
    pools/<pool>/manifests/<hash>.json            every pool manifest ever published
    pools/<pool>/download_report.json             samples by status and failure reason
    pools/<pool>/inputs/<slice>-<hash>.parquet    the rows of one slice of the pool index
    pools/<pool>/slices/<slice>-<key>/            img2dataset's <n>.tar, <n>.parquet, <n>_stats.json; sizes.json, manifest.json
    pools/<pool>/imported/<shard_id>.parquet      an imported shard's table (img2dataset's columns and the source's scores)
    pools/<pool>/filters.json                     which embedding and filter runs are the pool's latest
    embeddings/<pool>/<embedder>/                 <shard_id>.img.npy, .txt.npy, .cap.npy, .parquet; eval-<hash>.img.npy; manifest.json, manifests/<hash>.json
    filters/<pool>/<run>/                         rows/<shard_id>.parquet, decisions/<shard_id>.parquet, semdedup/ (k-means centroids), report.json, report.png, manifest.json
    clusters/<pool>/<key>/                        inputs.parquet, level-<n>/, tree.json, cluster_sizes.png, drift.json, drift_reference-<q>.json, manifest.json
    metaclip/<pool>/metadata-<hash>.json          metadata built from the pool, frozen
    metaclip/<pool>/<hash>/<shard_id>.npz         a shard's MetaCLIP matches against that metadata
    subsets/<pool>/<name>-<key>/                  subset.parquet, subset.npy, shards/, indicators.json, plots, manifest.json
    train/<run>-<key>/                            checkpoints/epoch_<n>.pt, out.log, manifest.json
    eval/<run>-<key>/                             results.jsonl, summary.json, manifest.json
    reports/<pool>/<report>/                      the demo's checks against the truth, manifest.json
    exports/<pool>/<key>/                         DataComp's layout: metadata/<nnnnnnnn>.parquet, .npz; shards/<nnnnnnnn>.tar, _stats.json, sizes.json; manifest.json
    _prefect/results/                             Prefect's persisted task results and cache records
    _prefect/results/_locks/<key>.lock            leases that serialise two runs computing one cache record
    _staging/                                     work in progress (local stores only)

The stage contract: a stage run's output is its folder plus a :class:`Manifest` at
``<folder>/manifest.json``, written last; that manifest is its only completion marker
(:meth:`Catalog.finished`). Inside a running stage, per-shard work (a slice's download, a
shard's embeddings, decisions or matches) is published file by file with the file that marks it
done written last, so a retry redoes only what is missing.

Shards have identities: a ``shard_id`` is minted where the pool is made (:func:`shard_id`, at
download, or by an import) and carried by every later record of that shard, so joins are on ids.

In:  a :class:`~tasks.common.store.Store`. Out: paths relative to the store, and typed records
(:class:`PoolRecord`, :class:`EmbeddingRun`, :class:`FilterRun`, :class:`ClusterTree`,
:class:`SubsetRecord`, :class:`TrainingRun`, :class:`EvaluationRun`) built from manifests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterator

from tasks.common.errors import InputError, StoreError
from tasks.common.manifest import Manifest
from tasks.common.store import Store

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MANIFEST = "manifest.json"
RESULTS_FOLDER = "_prefect/results"
LOCKS_FOLDER = f"{RESULTS_FOLDER}/_locks"


def check_name(value: str, parameter: str) -> str:
    """A pool, run or subset name: 1-63 lower-case letters, digits, ``-`` or ``_`` (never a path)."""
    if not isinstance(value, str) or not NAME.match(value):
        raise InputError(f"{parameter}: {value!r} must be 1-63 lower-case letters, digits, '-' or '_', "
                         "starting with a letter or digit")
    return value


def run_name(*parts: str) -> str:
    """A valid run name (:func:`check_name`) made from free-form parts, e.g. a pool and a subset name."""
    name = re.sub(r"[^a-z0-9_-]+", "-", "-".join(parts).lower()).strip("-_")
    return name[:63].rstrip("-_") or "run"


def slug(value: str) -> str:
    """A free-form name (a subset's) made safe for a folder name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", value).strip(".-") or "unnamed"


def shard_id(slice_index: int, slice_key: str, shard: int) -> str:
    """The id of shard ``shard`` of a downloaded slice: stable as long as the slice's rows and settings are."""
    return f"{slice_index:05d}-{slice_key[:16]}-{shard:05d}"


# ----- records ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardRecord:
    """One shard of a pool: its id, its webdataset tar (``None`` for an imported pool) and its table."""

    shard_id: str
    tar: str | None
    parquet: str
    n_rows: int
    n_success: int
    content_hash: str

    @classmethod
    def from_dict(cls, data: dict) -> "ShardRecord":
        missing = [name for name in ("shard_id", "parquet", "n_rows", "n_success", "content_hash") if name not in data]
        if missing:
            raise InputError(f"shard {data.get('shard_id') or data.get('tar') or data}: its record lacks {missing}; "
                             "it was not written by this pipeline's download or import")
        return cls(shard_id=data["shard_id"], tar=data.get("tar"), parquet=data["parquet"],
                   n_rows=int(data["n_rows"]), n_success=int(data["n_success"]),
                   content_hash=data["content_hash"])

    def to_dict(self) -> dict:
        return {"shard_id": self.shard_id, "tar": self.tar, "parquet": self.parquet, "n_rows": self.n_rows,
                "n_success": self.n_success, "content_hash": self.content_hash}


@dataclass(frozen=True)
class PoolRecord:
    """A pool (the download or import stage's manifest) and its shards."""

    name: str
    manifest: dict

    @property
    def content_hash(self) -> str:
        return self.manifest["content_hash"]

    @property
    def shards(self) -> list[ShardRecord]:
        return [ShardRecord.from_dict(s) for s in self.manifest["outputs"]["shards"]]

    @property
    def shards_with_samples(self) -> list[ShardRecord]:
        """The shards that hold at least one downloaded sample: the only ones later stages read."""
        return [s for s in self.shards if s.n_success > 0]


@dataclass(frozen=True)
class EmbeddedShard:
    """One shard's embedding outputs, row-aligned: its table and its embedding matrices."""

    shard_id: str
    parquet: str
    image_embeddings: str
    text_embeddings: str
    caption_embeddings: str | None
    rows: int

    @classmethod
    def from_dict(cls, data: dict) -> "EmbeddedShard":
        return cls(**{name: data.get(name) for name in cls.__dataclass_fields__})

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class EmbeddingRun:
    manifest: dict

    @property
    def content_hash(self) -> str:
        return self.manifest["content_hash"]

    @property
    def shards(self) -> list[EmbeddedShard]:
        return [EmbeddedShard.from_dict(s) for s in self.manifest["outputs"]["shards"]]

    @property
    def has_image_bytes(self) -> bool:
        """False for an imported pool's embeddings: no image was read, so filters that need pixels cannot run."""
        return self.manifest["stage"] != "import"


@dataclass(frozen=True)
class FilterRun:
    """A filter run: per shard id, the decisions file (row-aligned with that shard's embeddings)."""

    manifest: dict

    @property
    def content_hash(self) -> str:
        return self.manifest["content_hash"]

    @property
    def decisions(self) -> dict[str, str]:
        return dict(self.manifest["outputs"]["decisions"])


@dataclass(frozen=True)
class PoolSnapshot:
    """What a flow resolved once: the pool and, if it was embedded and filtered, those runs.

    Tasks take a snapshot (as a dict) instead of reading the store's "latest" pointers, so a
    cached task's key and the data it reads come from the same resolution.
    """

    pool: PoolRecord
    embeddings: EmbeddingRun | None
    filters: FilterRun | None
    stale: str = ""  # why the pool's latest embedding and filter runs were left out, if they were

    def to_dict(self) -> dict:
        return {"pool": self.pool.manifest, "embeddings": self.embeddings.manifest if self.embeddings else None,
                "filters": self.filters.manifest if self.filters else None, "stale": self.stale}

    @classmethod
    def from_dict(cls, data: dict) -> "PoolSnapshot":
        return cls(pool=PoolRecord(data["pool"]["name"], data["pool"]),
                   embeddings=EmbeddingRun(data["embeddings"]) if data.get("embeddings") else None,
                   filters=FilterRun(data["filters"]) if data.get("filters") else None, stale=data.get("stale", ""))

    @property
    def hashes(self) -> dict:
        """The content hashes that identify this snapshot in cache keys."""
        return {"pool": self.pool.content_hash, "embeddings": self.embeddings.content_hash if self.embeddings else None,
                "filters": self.filters.content_hash if self.filters else None}

    def require_filtered(self, what: str) -> tuple[EmbeddingRun, FilterRun]:
        if self.embeddings is None or self.filters is None:
            why = f" ({self.stale})" if self.stale else ""
            raise InputError(f"{what}: pool {self.pool.name!r} has not been embedded and filtered{why}; run "
                             "pool_refresh with an embedder (or the embed_filter flow) first")
        return self.embeddings, self.filters


@dataclass(frozen=True)
class StageRecord:
    """A finished stage run whose consumers need only its manifest (tree, subset, training, evaluation)."""

    manifest: dict

    @property
    def content_hash(self) -> str:
        return self.manifest["content_hash"]

    @property
    def folder(self) -> str:
        return self.manifest["outputs"]["folder"]

    @property
    def outputs(self) -> dict:
        return self.manifest["outputs"]


ClusterTree = SubsetRecord = TrainingRun = EvaluationRun = StageRecord


# ----- the catalog -----------------------------------------------------------------------------
class Catalog:
    """The store's layout: every path of every stage, and the records read back from manifests."""

    def __init__(self, store: Store):
        self.store = store

    # pools (download and import)
    @staticmethod
    def pool_folder(pool: str) -> str:
        return f"pools/{check_name(pool, 'pool_name')}"

    @staticmethod
    def pool_manifest(pool: str) -> str:
        return f"{Catalog.pool_folder(pool)}/{MANIFEST}"

    @staticmethod
    def pool_manifest_archive(pool: str, content_hash: str) -> str:
        return f"{Catalog.pool_folder(pool)}/manifests/{content_hash[:16]}.json"

    @staticmethod
    def download_report(pool: str) -> str:
        return f"{Catalog.pool_folder(pool)}/download_report.json"

    @staticmethod
    def slice_input(pool: str, index: int, rows_hash: str) -> str:
        return f"{Catalog.pool_folder(pool)}/inputs/{index:05d}-{rows_hash[:16]}.parquet"

    @staticmethod
    def slice_folder(pool: str, index: int, key: str) -> str:
        return f"{Catalog.pool_folder(pool)}/slices/{index:05d}-{key[:16]}"

    @staticmethod
    def imported_shard_table(pool: str, shard: str) -> str:
        """The table of one imported shard (the pool's record of it; an imported pool has no tars)."""
        return f"{Catalog.pool_folder(pool)}/imported/{shard}.parquet"

    @staticmethod
    def latest_runs_pointer(pool: str) -> str:
        return f"{Catalog.pool_folder(pool)}/filters.json"

    # embeddings
    @staticmethod
    def embedding_folder(pool: str, embedder_key: str) -> str:
        return f"embeddings/{check_name(pool, 'pool_name')}/{embedder_key}"

    @staticmethod
    def embedded_shard(folder: str, shard: str, captions: bool = False) -> EmbeddedShard:
        """The files of one shard's embeddings in ``folder`` (relative paths; the table is written last)."""
        return EmbeddedShard(shard_id=shard, parquet=f"{folder}/{shard}.parquet",
                             image_embeddings=f"{folder}/{shard}.img.npy", text_embeddings=f"{folder}/{shard}.txt.npy",
                             caption_embeddings=f"{folder}/{shard}.cap.npy" if captions else None, rows=0)

    @staticmethod
    def eval_embeddings(embedding_folder: str, tasklist_hash: str) -> str:
        return f"{embedding_folder}/eval-{tasklist_hash[:16]}.img.npy"

    # filters
    @staticmethod
    def filter_folder(pool: str, run_key: str) -> str:
        return f"filters/{check_name(pool, 'pool_name')}/{run_key[:16]}"

    @staticmethod
    def filter_rows(folder: str, shard: str) -> str:
        return f"{folder}/rows/{shard}.parquet"

    @staticmethod
    def filter_decisions(folder: str, shard: str) -> str:
        return f"{folder}/decisions/{shard}.parquet"

    @staticmethod
    def filter_semdedup_centroids(folder: str, partition: int | None = None) -> str:
        """SemDeDup's coarse k-means centroids (``None``), or the fine ones of one partition, kept for incremental runs."""
        return f"{folder}/semdedup/" + ("coarse.npz" if partition is None else f"fine-{partition:05d}.npz")

    @staticmethod
    def filter_report(folder: str) -> tuple[str, str]:
        """The report's JSON and its plot."""
        return f"{folder}/report.json", f"{folder}/report.png"

    # clusters
    @staticmethod
    def tree_folder(pool: str, key: str) -> str:
        return f"clusters/{check_name(pool, 'pool_name')}/{key[:16]}"

    # MetaCLIP
    @staticmethod
    def metaclip_metadata(pool: str, metadata_hash: str) -> str:
        return f"metaclip/{check_name(pool, 'pool_name')}/metadata-{metadata_hash[:16]}.json"

    @staticmethod
    def metaclip_matches(pool: str, metadata_hash: str, shard: str) -> str:
        return f"metaclip/{check_name(pool, 'pool_name')}/{metadata_hash[:16]}/{shard}.npz"

    # subsets
    @staticmethod
    def subset_folder(pool: str, name: str, key: str) -> str:
        return f"subsets/{check_name(pool, 'pool_name')}/{slug(name)}-{key[:16]}"

    # training and evaluation
    @staticmethod
    def training_folder(run: str, key: str) -> str:
        return f"train/{check_name(run, 'run_name')}-{key[:16]}"

    @staticmethod
    def checkpoint(training_folder: str, epoch: int) -> str:
        return f"{training_folder}/checkpoints/epoch_{epoch}.pt"

    @staticmethod
    def checkpoints_folder(training_folder: str) -> str:
        return f"{training_folder}/checkpoints"

    @staticmethod
    def evaluation_folder(run: str, key: str) -> str:
        return f"eval/{check_name(run, 'run_name')}-{key[:16]}"

    # reports
    @staticmethod
    def report_folder(pool: str, report: str) -> str:
        return f"reports/{check_name(pool, 'pool_name')}/{slug(report)}"

    # exports
    @staticmethod
    def export_folder(pool: str, key: str) -> str:
        """A pool exported in DataComp's layout (``metadata/`` and ``shards/`` numbered ``{:08d}`` from 0)."""
        return f"exports/{check_name(pool, 'pool_name')}/{key[:16]}"

    # ----- the stage contract ------------------------------------------------------------------
    @staticmethod
    def manifest_path(folder: str) -> str:
        return f"{folder.rstrip('/')}/{MANIFEST}"

    def publish(self, folder: str, manifest: Manifest, archive: bool = False) -> dict:
        """Write ``manifest`` as the stage run's completion marker (after every output); return it as a dict.

        ``archive``: also keep it by content hash (:meth:`archived_manifest`), for a folder that
        later runs publish into again (an embedder's folder, shared by every version of the pool).
        """
        missing = self.missing_outputs(manifest.to_dict())
        if missing:
            raise StoreError(f"stage {manifest.stage} {manifest.name}: cannot publish {self.store.uri(folder)}, "
                             f"outputs missing: {missing[:5]}")
        if archive:
            manifest.write(self.store, self.archived_manifest(folder, manifest.content_hash))
        manifest.write(self.store, self.manifest_path(folder))
        return manifest.to_dict()

    @staticmethod
    def archived_manifest(folder: str, content_hash: str) -> str:
        return f"{folder.rstrip('/')}/manifests/{content_hash[:16]}.json"

    def read_manifest(self, folder: str) -> dict | None:
        path = self.manifest_path(folder)
        return self.store.read_json(path) if self.store.exists(path) else None

    def finished(self, folder: str, log=None) -> dict | None:
        """The manifest of a finished stage run in ``folder``, or ``None`` when it has not finished.

        A manifest whose outputs are no longer all in the store (deleted by hand, a lost object)
        does not count: it is removed, so the stage runs again and rewrites what is missing.
        """
        manifest = self.read_manifest(folder)
        if manifest is None:
            return None
        missing = self.missing_outputs(manifest)
        if missing:
            if log:
                log(f"{self.store.uri(folder)}: outputs missing since it finished ({missing[:3]}); redoing it")
            self.store.remove(self.manifest_path(folder))
            return None
        return manifest

    def missing_outputs(self, manifest: dict) -> list[str]:
        """The outputs of ``manifest`` (every URI under this store in its ``outputs``) that are gone.

        One listing of each folder that directly holds outputs (not one request per file, and never
        a listing of a whole stage area); a folder output that holds other outputs is implied by them.
        """
        base = self.store.uri().rstrip("/") + "/"
        wanted = sorted({self.store.relative(uri) for uri in _strings(manifest.get("outputs", {}))
                         if uri.startswith(base)})
        implied = {rel for rel in wanted if any(other.startswith(rel + "/") for other in wanted)}
        files = [rel for rel in wanted if rel not in implied]
        parents: dict[str, set[str]] = {}
        for rel in files:
            parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
            if parent not in parents:
                parents[parent] = set(self.store.list(parent)) if self.store.exists(parent) else set()
        gone = [rel for rel in files if rel not in parents[rel.rsplit("/", 1)[0] if "/" in rel else ""]]
        present_files = set(files) - set(gone)
        gone += [rel for rel in implied if not any(f.startswith(rel + "/") for f in present_files)]
        return [self.store.uri(rel) for rel in sorted(gone)]

    # ----- records ------------------------------------------------------------------------------
    def pool(self, pool: str) -> PoolRecord:
        """The pool's latest manifest; an error naming the pool when it was never made."""
        path = self.pool_manifest(pool)
        if not self.store.exists(path):
            raise InputError(f"pool_name: no pool {pool!r} in the store ({self.store.uri(path)} does not exist); "
                             "run pool_refresh first")
        return PoolRecord(pool, self.store.read_json(path))

    def training_runs(self, run: str) -> list[dict]:
        """The manifests of the finished training runs named ``run`` (any data, any config), oldest first."""
        folder, _, _ = self.training_folder(run, "x").rpartition("/")
        found = [self.read_manifest(path) for path in self.store.list(folder, f"{run}-*")] if self.store.exists(
            folder) else []
        return sorted((m for m in found if m is not None), key=lambda m: m["created_at"])

    def trees(self, pool: str) -> list[dict]:
        """The manifests of the pool's finished cluster trees (any snapshot, any config), oldest first."""
        folder = self.tree_folder(pool, "x").rpartition("/")[0]
        found = [self.read_manifest(path) for path in self.store.list(folder)] if self.store.exists(folder) else []
        return sorted((m for m in found if m is not None), key=lambda m: m["created_at"])

    def publish_pool(self, manifest: Manifest) -> dict:
        """Archive the pool manifest by hash and make it the pool's latest."""
        self.publish_archive(manifest)
        manifest.write(self.store, self.pool_manifest(manifest.name))
        return manifest.to_dict()

    def publish_archive(self, manifest: Manifest) -> None:
        manifest.write(self.store, self.pool_manifest_archive(manifest.name, manifest.content_hash))

    def set_latest_runs(self, pool: str, embeddings: dict, filters: dict) -> None:
        """Make an embedding run and a filter run of ``pool`` the ones later flows resolve to."""
        embeddings_folder = self.store.relative(embeddings["outputs"]["folder"])
        self.store.write_json(self.latest_runs_pointer(pool), {
            # the embedder's folder is shared by every version of the pool: point at this run's archived copy
            "embeddings": self.archived_manifest(embeddings_folder, embeddings["content_hash"]),
            "filters": self.manifest_path(self.store.relative(filters["outputs"]["folder"]))})

    def latest_filter_run(self, pool: str) -> dict | None:
        """The manifest of the pool's latest filter run (whatever version of the pool it was made from), if any."""
        pointer = self.latest_runs_pointer(pool)
        if not self.store.exists(pointer):
            return None
        path = self.store.read_json(pointer)["filters"]
        return self.store.read_json(path) if self.store.exists(path) else None

    def snapshot(self, pool: str) -> PoolSnapshot:
        """Resolve the pool and its latest embedding and filter runs, once, for one flow run."""
        record = self.pool(pool)
        pointer = self.latest_runs_pointer(pool)
        if not self.store.exists(pointer):
            return PoolSnapshot(record, None, None)
        runs = self.store.read_json(pointer)
        manifests = {}
        for stage in ("embeddings", "filters"):
            path = runs[stage]
            if not self.store.exists(path):
                raise StoreError(f"pool {pool!r}: {self.store.uri(pointer)} names {self.store.uri(path)}, which "
                                 "does not exist; run embed_filter again")
            manifests[stage] = self.store.read_json(path)
        embeddings, filters = manifests["embeddings"], manifests["filters"]
        if filters["inputs"].get("embeddings") != embeddings["content_hash"]:
            raise StoreError(f"pool {pool!r}: {self.store.uri(pointer)} names a filter run and an embedding run that "
                             "do not belong together; run embed_filter again")
        if embeddings["inputs"].get("pool_manifest") != record.content_hash:
            # the pool changed (a refresh without an embedder) after its last embed-and-filter run
            return PoolSnapshot(record, None, None, stale="its latest embedding and filter runs were made from an "
                                                          "earlier version of the pool")
        return PoolSnapshot(record, EmbeddingRun(embeddings), FilterRun(filters))

    @staticmethod
    def layout() -> list[str]:
        """The store layout as the module docstring gives it (one line per kind of path), for checks."""
        lines = (__doc__ or "").split("::", 1)[1].split("\n\n", 2)[1].splitlines()
        return [line.split()[0] for line in lines if line.strip()]


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)
