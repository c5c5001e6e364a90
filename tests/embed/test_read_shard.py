"""Reading a downloaded shard for embedding: its samples, and cut shards refused with the shard named."""

import io
import json
import tarfile

import pandas as pd
import pytest

from tasks.common.errors import StageFailed
from tasks.embed.shards import read_shard


def _downloaded_shard(folder, n: int = 20):
    """An img2dataset-like shard: ``n`` successes in the tar (jpg, txt, json), two failures in the parquet only."""
    keys = [f"{i:09d}" for i in range(n + 2)]
    meta = pd.DataFrame({"key": keys, "uid": [f"{i:032x}" for i in range(n + 2)],
                         "status": ["success"] * n + ["failed_to_download"] * 2,
                         "sha256": [f"sha{i}" for i in range(n + 2)], "width": 64, "height": 48})
    tar_path, parquet_path = folder / "00000.tar", folder / "00000.parquet"
    with tarfile.open(tar_path, "w") as tar:
        for row in meta[meta["status"] == "success"].itertuples():
            for ext, data in (("jpg", b"jpeg " * (50 + int(row.key))), ("txt", f"caption {row.key}".encode()),
                              ("json", json.dumps({"uid": row.uid, "key": row.key}).encode())):
                info = tarfile.TarInfo(f"{row.key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    meta.to_parquet(parquet_path, index=False)
    return tar_path, parquet_path, meta


def test_a_good_shard(tmp_path):
    tar_path, parquet_path, meta = _downloaded_shard(tmp_path)
    frame = read_shard(str(tar_path), str(parquet_path))
    success = meta[meta["status"] == "success"]
    assert frame["key"].tolist() == success["key"].tolist() and frame["uid"].tolist() == success["uid"].tolist()
    assert frame["text"].tolist() == [f"caption {k}" for k in success["key"]]
    assert frame["bytes"].tolist() == [b"jpeg " * (50 + int(k)) for k in success["key"]]
    assert frame["sha256"].tolist() == success["sha256"].tolist() and (frame["width"] == 64).all()


def test_a_shard_cut_at_a_member_boundary_is_refused_with_both_counts(tmp_path):
    tar_path, parquet_path, _ = _downloaded_shard(tmp_path)
    with tarfile.open(tar_path) as tar:
        last = [m for m in tar.getmembers()][3 * 13 - 1]  # the json of the 13th sample
    tar_path.write_bytes(tar_path.read_bytes()[:last.offset_data + -(-last.size // 512) * 512])
    with pytest.raises(StageFailed, match=f"shard {tar_path}: holds 13 samples but 20 were recorded"):
        read_shard(str(tar_path), str(parquet_path))


def test_a_shard_cut_inside_a_member_is_refused_naming_it(tmp_path):
    tar_path, parquet_path, _ = _downloaded_shard(tmp_path)
    data = tar_path.read_bytes()
    tar_path.write_bytes(data[:len(data) // 2 + 3])
    with pytest.raises(StageFailed, match=f"shard {tar_path}: "):
        read_shard(str(tar_path), str(parquet_path))
