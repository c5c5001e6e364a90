"""The import stage without Prefect: records of both formats, and every bad input (nothing published)."""

import hashlib
import io
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from synthetic_sources import make_clip_retrieval_pool, make_datacomp_pool  # noqa: E402

from tasks.common.catalog import Catalog, EmbeddingRun, PoolSnapshot  # noqa: E402
from tasks.common.errors import InputError  # noqa: E402
from tasks.common.store import Store  # noqa: E402
from tasks.pool_import.run import EMBED_COLUMNS, check_uids, import_shard, plan_import, publish_import  # noqa: E402
from tasks.pool_import.sources import read_headers, list_source  # noqa: E402

DIMS = {"dim_l14": 16, "dim_b32": 8}


def run_import(store: Store, pool: str, source: str, **options) -> dict:
    """The stage as the flow runs it, in this process."""
    catalog = Catalog(store)
    plan = plan_import(catalog, pool, source, **options)
    check_uids(store, plan)
    summaries = [import_shard(store, plan, shard) for shard in plan["shards"]]
    return {"plan": plan, **publish_import(catalog, plan, summaries)}


def _rewrite_parquet(path: Path, change) -> None:
    frame = pd.read_parquet(path)
    frame = change(frame)
    frame.to_parquet(path, index=False)


def _rewrite_npz(path: Path, change) -> None:
    with np.load(path) as arrays:
        data = {name: arrays[name] for name in arrays.files}
    data = change(data)
    buffer = io.BytesIO()
    np.savez(buffer, **data)
    path.write_bytes(buffer.getvalue())


def test_datacomp_records_match_the_source(tmp_path):
    made = make_datacomp_pool(str(tmp_path / "dc"), shards=3, rows_per_shard=40, seed=1, **DIMS)
    store = Store(str(tmp_path / "store"))
    out = run_import(store, "dc", str(tmp_path / "dc"))
    pool, embeddings = out["pool"], out["embeddings"]
    assert pool["stage"] == embeddings["stage"] == "import" and out["plan"]["format"] == "datacomp"
    assert embeddings["inputs"]["pool_manifest"] == pool["content_hash"]
    assert embeddings["config"] == {"format": "datacomp", "source": str(tmp_path / "dc"), "embeddings": "l14",
                                    "dim": 16}
    assert all(s["tar"] is None for s in pool["outputs"]["shards"]) and pool["rows"]["success"] == made["rows"]
    for number, (record, shard) in enumerate(zip(Catalog(store).pool("dc").shards, embeddings["outputs"]["shards"])):
        source = pd.read_parquet(tmp_path / f"dc/{number:08d}.parquet")
        with np.load(tmp_path / f"dc/{number:08d}.npz") as arrays:
            image, text = arrays["l14_img"], arrays["l14_txt"]
        table = pd.read_parquet(record.parquet)
        assert table["uid"].tolist() == source["uid"].tolist() and table["caption"].tolist() == source["text"].tolist()
        assert (table["status"] == "success").all() and table["sha256"].tolist() == source["sha256"].tolist()
        np.testing.assert_array_equal(table["clip_l14_similarity_score"], source["clip_l14_similarity_score"])
        embedded = pd.read_parquet(shard["parquet"])
        assert list(embedded.columns) == EMBED_COLUMNS + ["clip_b32_score", "clip_l14_score"]
        np.testing.assert_array_equal(embedded["clip_score"], source["clip_l14_similarity_score"].astype(np.float32))
        np.testing.assert_array_equal(embedded["clip_b32_score"], source["clip_b32_similarity_score"].astype(np.float32))
        assert (embedded["phash"] == 0).all() and set(embedded["thumb"]) == {bytes(192)} and embedded["embed_ok"].all()
        stored_image, stored_text = np.load(shard["image_embeddings"]), np.load(shard["text_embeddings"])
        assert stored_image.dtype == np.float16
        np.testing.assert_array_equal(stored_image, image)  # bit for bit: DataComp's are normalised
        np.testing.assert_array_equal(stored_text, text)
        assert record.shard_id == shard["shard_id"] == f"00000-{out['plan']['shards'][number]['content_hash'][:16]}-00000"
    # b32 is another embedding run of the same pool's shards
    b32 = run_import(store, "dc", str(tmp_path / "dc"), embeddings="b32")
    assert b32["embeddings"]["outputs"]["folder"] != embeddings["outputs"]["folder"]
    assert np.load(b32["embeddings"]["outputs"]["shards"][0]["image_embeddings"]).shape == (40, 8)
    assert [s["shard_id"] for s in b32["pool"]["outputs"]["shards"]] == [s["shard_id"] for s in pool["outputs"]["shards"]]


def test_clip_retrieval_uids_are_minted_and_embeddings_renormalised(tmp_path):
    make_clip_retrieval_pool(str(tmp_path / "cr"), shards=2, rows_per_shard=30, seed=2, dim=12)
    raw = tmp_path / "cr/img_emb/img_emb_1.npy"
    scaled = np.load(raw)
    scaled[:5] *= 2  # not unit-norm: renormalised
    np.save(raw, scaled)
    store = Store(str(tmp_path / "store"))
    out = run_import(store, "cr", str(tmp_path / "cr"))
    assert out["plan"]["format"] == "clip_retrieval" and out["embeddings"]["config"]["embeddings"] is None
    assert out["embeddings"]["stats"]["renormalised"] == 5
    assert set(out["embeddings"]["stats"]["source_lacks"]) == {"sha256", "width", "height", "original_width",
                                                               "original_height"}
    meta = pd.read_parquet(tmp_path / "cr/metadata/metadata_1.parquet")
    embedded = pd.read_parquet(out["embeddings"]["outputs"]["shards"][1]["parquet"])
    expected = [hashlib.md5(f"{u}\t{c}".encode()).hexdigest() for u, c in zip(meta["url"], meta["caption"])]
    assert embedded["uid"].tolist() == expected and embedded["key"].tolist() == meta["key"].tolist()
    assert embedded["sha256"].isna().all() and embedded["original_width"].isna().all()
    image = np.load(out["embeddings"]["outputs"]["shards"][1]["image_embeddings"]).astype(np.float32)
    text = np.load(out["embeddings"]["outputs"]["shards"][1]["text_embeddings"]).astype(np.float32)
    np.testing.assert_allclose(np.linalg.norm(image, axis=1), 1, atol=2e-3)
    np.testing.assert_array_equal(image[5:].astype(np.float16), scaled[5:])
    np.testing.assert_allclose(embedded["clip_score"], (image * text).sum(axis=1), rtol=1e-5)


def test_clip_retrieval_with_uid_sizes_and_image_paths(tmp_path):
    made = make_clip_retrieval_pool(str(tmp_path / "cr"), shards=12, rows_per_shard=5, seed=3, dim=8,
                                    path_column="image_path", with_uid=True, with_sizes=True, with_sha256=True)
    format, shards = list_source(str(tmp_path / "cr"))
    assert format == "clip_retrieval" and [s.name for s in shards] == [str(n) for n in range(12)]  # numeric order
    store = Store(str(tmp_path / "store"))
    out = run_import(store, "cr2", str(tmp_path / "cr"), format="clip_retrieval")
    embedded = pd.read_parquet(out["embeddings"]["outputs"]["shards"][0]["parquet"])
    assert embedded["uid"].tolist() == list(made["uids"]) and embedded["original_width"].notna().all()
    assert out["embeddings"]["stats"]["source_lacks"] == []
    table = pd.read_parquet(out["pool"]["outputs"]["shards"][0]["parquet"])
    assert table["url"].str.startswith("https://").all()  # image_path becomes the url column


def test_content_hash_reads_headers_only_and_follows_content(tmp_path):
    make_datacomp_pool(str(tmp_path / "dc"), shards=2, rows_per_shard=10, seed=1, **DIMS)
    format, shards = list_source(str(tmp_path / "dc"))
    before = read_headers(str(tmp_path / "dc"), format, shards)
    assert before[0].arrays["l14_img"] == {"shape": [10, 16], "dtype": "float16"} and before[0].rows == 10
    _rewrite_npz(tmp_path / "dc/00000001.npz", lambda d: {**d, "l14_img": d["l14_img"][::-1].copy()})
    after = read_headers(str(tmp_path / "dc"), format, shards)
    assert after[0].content_hash == before[0].content_hash and after[1].content_hash != before[1].content_hash


# ----- bad input ---------------------------------------------------------------------------------------
@pytest.fixture
def datacomp(tmp_path):
    folder = tmp_path / "dc"
    make_datacomp_pool(str(folder), shards=2, rows_per_shard=20, seed=5, **DIMS)
    return folder, Store(str(tmp_path / "store"))


def _fails(store, folder, match, **options):
    with pytest.raises(InputError, match=match):
        run_import(store, "bad", str(folder), **options)
    assert not store.exists("pools/bad/manifest.json")
    assert not (store.exists("embeddings/bad") and store.list("embeddings/bad", "*/manifest.json"))


def test_unpaired_files(datacomp):
    folder, store = datacomp
    (folder / "00000001.npz").unlink()
    _fails(store, folder, r"00000001\.parquet has no 00000001\.npz")
    (folder / "00000000.parquet").unlink()
    _fails(store, folder, r"00000000\.npz has no 00000000\.parquet")


def test_clip_retrieval_partition_without_its_text_embeddings(tmp_path):
    make_clip_retrieval_pool(str(tmp_path / "cr"), shards=2, rows_per_shard=5, seed=3, dim=8)
    (tmp_path / "cr/text_emb/text_emb_1.npy").unlink()
    _fails(Store(str(tmp_path / "store")), tmp_path / "cr", r"img_emb_1\.npy has no text_emb/text_emb_1\.npy")


def test_rows_not_aligned(datacomp):
    folder, store = datacomp
    _rewrite_npz(folder / "00000001.npz", lambda d: {**d, "l14_txt": d["l14_txt"][:-1]})
    _fails(store, folder, r"00000001\.npz array 'l14_txt': 19 rows, but .*00000001\.parquet has 20")


def test_missing_column_and_missing_embedding_key(datacomp):
    folder, store = datacomp
    _rewrite_npz(folder / "00000000.npz", lambda d: {k: v for k, v in d.items() if k != "l14_img"})
    _fails(store, folder, r"00000000\.npz: no embedding array 'l14_img'")
    _rewrite_parquet(folder / "00000001.parquet", lambda f: f.drop(columns=["text"]))
    _fails(store, folder, r"00000001\.parquet: column\(s\) \['text'\] missing", embeddings="b32")


def test_bad_and_duplicate_uids(datacomp):
    folder, store = datacomp
    original = pd.read_parquet(folder / "00000000.parquet")
    _rewrite_parquet(folder / "00000000.parquet", lambda f: f.assign(uid=f["uid"].where(f.index != 3, f["uid"].str.upper())))
    _fails(store, folder, r"00000000\.parquet: uid '[0-9A-F]{32}' \(row 3\) is not 32 lower-case hex")
    first = original["uid"].tolist()
    _rewrite_parquet(folder / "00000000.parquet", lambda f: original.assign(uid=first[:1] + first[:1] + first[2:]))
    _fails(store, folder, rf"uid {first[0]} appears more than once \(.*00000000\.parquet row 0, .*00000000\.parquet row 1\)")
    _rewrite_parquet(folder / "00000000.parquet", lambda f: original)
    _rewrite_parquet(folder / "00000001.parquet", lambda f: f.assign(uid=[first[7]] + f["uid"].tolist()[1:]))
    _fails(store, folder, rf"uid {first[7]} appears more than once \(.*00000000\.parquet row 7, .*00000001\.parquet row 0\)")


def test_nan_scores_and_embeddings(datacomp):
    folder, store = datacomp
    _rewrite_parquet(folder / "00000001.parquet",
                     lambda f: f.assign(clip_l14_similarity_score=f["clip_l14_similarity_score"].where(f.index != 4)))
    _fails(store, folder, r"00000001\.parquet: column 'clip_l14_similarity_score' is NaN or missing in row 4")
    make_datacomp_pool(str(folder), shards=2, rows_per_shard=20, seed=5, **DIMS)

    def nan_row(arrays):
        arrays["l14_img"][6, 2] = np.nan
        return arrays

    _rewrite_npz(folder / "00000000.npz", nan_row)
    _fails(store, folder, r"00000000\.npz array l14_img: row 6 holds NaN")


def test_dimensions_differ_across_shards(datacomp, tmp_path):
    folder, store = datacomp
    make_datacomp_pool(str(tmp_path / "other"), shards=2, rows_per_shard=20, seed=6, dim_l14=12, dim_b32=8)
    (folder / "00000001.npz").write_bytes((tmp_path / "other/00000001.npz").read_bytes())
    (folder / "00000001.parquet").write_bytes((tmp_path / "other/00000001.parquet").read_bytes())
    _fails(store, folder, r"00000001\.npz: embeddings of dimension 12, but .*00000000\.npz has 16")


def test_empty_source_unknown_format_and_embeddings(datacomp, tmp_path):
    folder, store = datacomp
    (tmp_path / "empty").mkdir()
    _fails(store, tmp_path / "empty", r"empty\.*: the folder is empty|empty: the folder is empty")
    _fails(store, tmp_path / "empty", r"no datacomp shard in it", format="datacomp")
    _fails(store, tmp_path / "missing", r"no such folder, or an empty one")
    _fails(store, folder, r"format: 'webdataset' is not one of", format="webdataset")
    _fails(store, folder, r"embeddings: 'h14' is not one of", embeddings="h14")


def test_released_names_and_a_folder_above_them(tmp_path):
    """DataComp's released files are named by a hex hash; its data folder holds them in metadata/."""
    folder = tmp_path / "data/metadata"
    make_datacomp_pool(str(folder), shards=2, rows_per_shard=10, seed=8, **DIMS)
    for number in range(2):
        stem = hashlib.md5(str(number).encode()).hexdigest()
        for suffix in (".parquet", ".npz"):
            (folder / f"{number:08d}{suffix}").rename(folder / f"{stem}{suffix}")
    store = Store(str(tmp_path / "store"))
    out = run_import(store, "hex", str(folder))
    assert out["plan"]["format"] == "datacomp" and out["pool"]["rows"]["success"] == 20
    _fails(store, tmp_path / "data", r"metadata/ folder holds DataComp's parquet and npz files; give --source .*/metadata")


def test_uids_that_are_numbers(datacomp):
    folder, store = datacomp
    _rewrite_parquet(folder / "00000000.parquet", lambda f: f.assign(uid=np.arange(len(f))))
    _fails(store, folder, r"00000000\.parquet: uid 0 \(row 0\) is not 32 lower-case hex")


def test_face_boxes_are_kept_for_the_export(datacomp):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.pool_export.run import ExportConfig, export_shard, plan_export, publish_export

    folder, store = datacomp
    table = pq.read_table(folder / "00000000.parquet")
    boxes = [[[0.1, 0.2, 0.3, 0.4]]] + [[] for _ in range(table.num_rows - 1)]
    column = table.schema.get_field_index("face_bboxes")
    table = table.set_column(column, "face_bboxes", pa.array(boxes, type=pa.list_(pa.list_(pa.float64()))))
    pq.write_table(table, folder / "00000000.parquet")
    out = run_import(store, "faces", str(folder), embeddings="b32")
    catalog = Catalog(store)
    snapshot = PoolSnapshot(catalog.pool("faces"), EmbeddingRun(out["embeddings"]), None)  # not filtered
    with pytest.raises(InputError, match="imported with DataComp's 'b32' embeddings"):
        plan_export(catalog, snapshot, ExportConfig(embeddings_key="l14"))
    plan = plan_export(catalog, snapshot, ExportConfig())
    assert plan["config"]["embeddings_key"] == "b32"  # an import keeps its own key
    summaries = [export_shard(store, job, plan["folder"], ExportConfig(**plan["config"])) for job in plan["jobs"]]
    exported = publish_export(catalog, plan, summaries)
    first = pd.read_parquet(exported["outputs"]["metadata"][0]["parquet"])
    assert [list(map(list, b)) for b in first["face_bboxes"][:2]] == [[[0.1, 0.2, 0.3, 0.4]], []]
    source = pd.read_parquet(folder / "00000000.parquet")
    np.testing.assert_array_equal(first["clip_l14_similarity_score"], source["clip_l14_similarity_score"].astype(np.float32))
