"""The catalog: the store's layout in one place, records read back from manifests, the stage contract."""

import re
from pathlib import Path

import pytest

from tasks.common.catalog import Catalog, PoolSnapshot, check_name, shard_id
from tasks.common.errors import InputError, StoreError
from tasks.common.manifest import Manifest
from tasks.common.store import Store

README = Path(__file__).resolve().parents[2] / "README.md"


def _pool_manifest(store: Store, name: str = "web", n_shards: int = 2) -> Manifest:
    catalog = Catalog(store)
    shards = []
    for number in range(n_shards):
        folder = catalog.slice_folder(name, 0, "k" * 16)
        tar = store.write_bytes(f"{folder}/{number:05d}.tar", b"tar")
        parquet = store.write_bytes(f"{folder}/{number:05d}.parquet", b"parquet")
        shards.append({"shard_id": shard_id(0, "k" * 16, number), "tar": tar, "parquet": parquet, "n_rows": 3,
                       "n_success": 3 - number * 3, "content_hash": f"h{number}"})
    return Manifest(stage="download", name=name, store=store.root, config={}, code_version="v",
                    outputs={"folder": store.uri(catalog.pool_folder(name)), "shards": shards})


def test_readme_store_layout_is_the_catalogs():
    text = README.read_text()
    block = text.split("Store layout", 1)[1].split("\n\n", 2)[1]
    in_readme = [line.split()[0] for line in block.splitlines() if line.strip()]
    assert in_readme == Catalog.layout()


def test_every_path_the_catalog_makes_is_in_its_layout(tmp_path):
    catalog = Catalog(Store(str(tmp_path)))
    patterns = [re.compile("^" + re.sub(r"<[a-z_]+>", "[^/]+", re.escape(p).replace(r"\<", "<").replace(r"\>", ">")
                                        .rstrip("/")) + "(/.*)?$") for p in Catalog.layout()]
    made = [catalog.pool_manifest("web"), catalog.pool_manifest_archive("web", "ab" * 8), catalog.download_report("web"),
            catalog.slice_input("web", 3, "cd" * 8), catalog.slice_folder("web", 3, "ef" * 8),
            catalog.latest_runs_pointer("web"), catalog.embedding_folder("web", "e" * 16),
            catalog.embedded_shard(catalog.embedding_folder("web", "e" * 16), "00000-x-00001", True).caption_embeddings,
            catalog.filter_folder("web", "f" * 16), catalog.tree_folder("web", "1" * 16),
            catalog.metaclip_metadata("web", "2" * 16), catalog.metaclip_matches("web", "2" * 16, "00000-x-00001"),
            catalog.subset_folder("web", "my subset", "3" * 16), catalog.training_folder("run", "4" * 16),
            catalog.checkpoint(catalog.training_folder("run", "4" * 16), 2), catalog.evaluation_folder("run", "5" * 16),
            catalog.report_folder("web", "curation-ab"), catalog.imported_shard_table("web", "00000-x-00001"),
            catalog.export_folder("web", "6" * 16)]
    for path in made:
        assert any(p.match(path) for p in patterns), path


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "", "Upper", ".hidden", "x" * 64, "a b"])
def test_names_never_become_paths(name):
    with pytest.raises(InputError, match="run_name"):
        check_name(name, "run_name")
    with pytest.raises(InputError, match="run_name"):
        Catalog.training_folder(name, "k" * 16)


def test_pool_round_trip_and_snapshot(tmp_path):
    store = Store(str(tmp_path))
    catalog = Catalog(store)
    with pytest.raises(InputError, match="no pool 'web'"):
        catalog.pool("web")
    published = catalog.publish_pool(_pool_manifest(store))
    record = catalog.pool("web")
    assert record.manifest == published and record.content_hash == published["content_hash"]
    assert [s.shard_id for s in record.shards] == ["00000-kkkkkkkkkkkkkkkk-00000", "00000-kkkkkkkkkkkkkkkk-00001"]
    assert [s.shard_id for s in record.shards_with_samples] == ["00000-kkkkkkkkkkkkkkkk-00000"]
    assert store.exists(catalog.pool_manifest_archive("web", published["content_hash"]))
    snapshot = catalog.snapshot("web")
    assert snapshot.embeddings is None and snapshot.filters is None
    assert PoolSnapshot.from_dict(snapshot.to_dict()) == snapshot
    with pytest.raises(InputError, match="has not been embedded and filtered"):
        snapshot.require_filtered("clustering")

    embedding_folder = catalog.embedding_folder("web", "e" * 16)
    files = catalog.embedded_shard(embedding_folder, record.shards[0].shard_id)
    entry = {**files.to_dict(), "rows": 3}
    for name in ("parquet", "image_embeddings", "text_embeddings"):
        entry[name] = store.write_bytes(getattr(files, name), b"x")
    embeddings = catalog.publish(embedding_folder, Manifest(
        stage="embed", name="web", store=store.root, config={}, code_version="v",
        inputs={"pool_manifest": published["content_hash"]},
        outputs={"folder": store.uri(embedding_folder), "shards": [entry]}), archive=True)
    filter_folder = catalog.filter_folder("web", "f" * 16)
    decisions = {record.shards[0].shard_id: store.write_bytes(catalog.filter_decisions(filter_folder,
                                                                                       record.shards[0].shard_id), b"d")}
    filters = catalog.publish(filter_folder, Manifest(
        stage="filter", name="web", store=store.root, config={}, code_version="v",
        inputs={"embeddings": embeddings["content_hash"]},
        outputs={"folder": store.uri(filter_folder), "decisions": decisions}))
    catalog.set_latest_runs("web", embeddings, filters)
    snapshot = catalog.snapshot("web")
    assert snapshot.embeddings.shards[0].shard_id == record.shards[0].shard_id
    assert snapshot.filters.decisions == decisions
    assert snapshot.hashes == {"pool": published["content_hash"], "embeddings": embeddings["content_hash"],
                               "filters": filters["content_hash"]}

    # the embedder's folder is published into again by a later run: the pool keeps resolving to its own run
    catalog.publish(embedding_folder, Manifest(stage="embed", name="web", store=store.root, config={"other": 1},
                                               code_version="v", outputs={"folder": store.uri(embedding_folder)}))
    assert catalog.snapshot("web").embeddings.manifest == embeddings
    # a refresh without an embedder publishes a new pool: the old runs are not paired with it
    catalog.publish_pool(_pool_manifest(store, n_shards=3))
    stale = catalog.snapshot("web")
    assert stale.filters is None and "earlier version of the pool" in stale.stale
    with pytest.raises(InputError, match="not been embedded and filtered \\(its latest"):
        stale.require_filtered("clustering")


def test_a_manifest_is_the_completion_marker_and_is_checked_against_its_outputs(tmp_path):
    store = Store(str(tmp_path))
    catalog = Catalog(store)
    folder = catalog.tree_folder("web", "1" * 16)
    assert catalog.finished(folder) is None
    manifest = Manifest(stage="cluster", name="web", store=store.root, config={}, code_version="v",
                        outputs={"folder": store.uri(folder), "tree": store.uri(f"{folder}/tree.json")})
    with pytest.raises(StoreError, match="outputs missing"):  # never published before its outputs
        catalog.publish(folder, manifest)
    assert not store.exists(catalog.manifest_path(folder))
    store.write_json(f"{folder}/tree.json", {})
    published = catalog.publish(folder, manifest)
    assert catalog.finished(folder) == published
    store.remove(f"{folder}/tree.json")  # deleted by hand
    messages = []
    assert catalog.finished(folder, messages.append) is None
    assert not store.exists(catalog.manifest_path(folder)) and "outputs missing" in messages[0]


def test_outputs_on_an_object_store(s3_bucket):
    store = Store(f"{s3_bucket}/store")
    catalog = Catalog(store)
    published = catalog.publish_pool(_pool_manifest(store))
    assert catalog.missing_outputs(published) == []
    store.remove(store.relative(published["outputs"]["shards"][1]["tar"]))
    assert catalog.missing_outputs(published) == [published["outputs"]["shards"][1]["tar"]]


def test_one_rule_for_shards_without_samples(tmp_path):
    """Embedding, sampling and training all skip the shards with no downloaded sample, and a shard
    record without its sample count is an error, not a default."""
    from tasks.filters.plan import plan_embed_filter
    from tasks.sample.pool_samples import pool_table
    from tasks.train.run import training_data

    store = Store(str(tmp_path))
    catalog = Catalog(store)
    manifest = catalog.publish_pool(_pool_manifest(store))  # shard 1 holds no sample
    with_samples = [s.shard_id for s in catalog.pool("web").shards_with_samples]
    assert len(with_samples) == 1
    plan = plan_embed_filter(catalog, catalog.pool("web"), {"model": "Tiny-ViT-48px", "checkpoint": "openai"}, {})
    assert [s["shard_id"] for s in plan["shards"]] == with_samples
    shards, _, count = training_data(manifest)
    assert shards == [catalog.pool("web").shards[0].tar] and count == 3
    broken = dict(manifest, outputs=dict(manifest["outputs"], shards=[
        {k: v for k, v in s.items() if k != "n_success"} for s in manifest["outputs"]["shards"]]))
    with pytest.raises(InputError, match="lacks \\['n_success'\\]"):
        PoolSnapshot.from_dict({"pool": broken}).pool.shards
    with pytest.raises(InputError, match="without n_success"):
        training_data(broken)
    with pytest.raises(InputError, match="lacks"):
        pool_table(store, PoolSnapshot.from_dict({"pool": broken}))
