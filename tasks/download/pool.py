"""The pool as a whole: plan its download, and publish its manifest from its slices' manifests.

In:  the catalog, a pool index (parquet file or folder, local or fsspec URI), the pool's name, the
     slice size and the download settings; later, the manifests of the downloaded slices.
Out: :func:`plan_pool_download`: the checked slice plans (:func:`check_download_settings`: the
     checks of its parameters alone), each slice's rows stored in the store;
     :func:`publish_pool`: the pool manifest (every shard with its ``shard_id``, counts by status
     and reason), archived by hash and made the pool's latest, plus the download report.
"""

from __future__ import annotations

from tasks.common.catalog import Catalog, check_name
from tasks.common.errors import InputError
from tasks.common.hashing import hash_json
from tasks.common.manifest import Manifest
from tasks.download.pool_index import SlicePlan, plan_slices, read_pool_index
from tasks.download.report import summarise_slices
from tasks.download.slices import DownloadConfig, stage_code_version, write_slice_input


def plan_pool_download(catalog: Catalog, pool_index: str, pool_name: str, slice_size: int,
                       config: DownloadConfig) -> list[SlicePlan]:
    """Check every parameter, the store and the index before anything downloads; store each slice's rows."""
    check_download_settings(pool_name, slice_size, config)
    catalog.store.check_writable()
    index = read_pool_index(pool_index, catalog.store.fsspec_options())
    plans = plan_slices(index, pool_name, slice_size)
    for plan in plans:
        write_slice_input(catalog, plan, index.iloc[plan.start:plan.stop])
    return plans


def check_download_settings(pool_name: str, slice_size: int, config: DownloadConfig) -> None:
    """The pool's name, the slice size and the img2dataset settings; an InputError names the parameter."""
    check_name(pool_name, "pool_name")
    config.validate()
    if isinstance(slice_size, bool) or not isinstance(slice_size, int) or slice_size < 1:
        raise InputError(f"slice_size: must be a whole number of at least 1, got {slice_size!r}")


def publish_pool(catalog: Catalog, pool_index: str, pool_name: str, plans: list[SlicePlan],
                 slices: list[dict], config: DownloadConfig) -> tuple[dict, dict]:
    """The pool manifest from the slice manifests (in slice order); returns it and the summary."""
    slices = sorted(slices, key=lambda m: m["stats"]["index"])
    summary = summarise_slices([m["stats"] for m in slices])
    manifest = Manifest(
        stage="download", name=pool_name, store=catalog.store.root,
        config=config.output_config(), code_version=stage_code_version(),
        inputs={"pool_index": pool_index, "n_rows": sum(p.n_rows for p in plans),
                "index_content_hash": hash_json([p.content_hash for p in plans]),
                "slices": [m["content_hash"] for m in slices]},
        outputs={"folder": catalog.store.uri(catalog.pool_folder(pool_name)),
                 "slices": [m["outputs"]["folder"] for m in slices],
                 "shards": [shard for m in slices for shard in m["outputs"]["shards"]]},
        rows={"input": summary["n_rows"], **summary["status_counts"]},
        stats={"reason_counts": summary["reason_counts"], "slice_keys": [m["stats"]["key"] for m in slices]},
    )
    catalog.store.write_json(catalog.download_report(pool_name),
                             {k: summary[k] for k in ("status_counts", "reason_counts", "table")})
    return catalog.publish_pool(manifest), summary
