"""Training on a GPU (skipped without one): the same run, on CUDA with mixed precision."""

import pytest

from tasks.common.store import Store
from tasks.train.run import train_clip
from tasks.train.scales import scale_config
from tasks.train.run import training_data


@pytest.mark.gpu
def test_trains_on_cuda(small_pool, tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    store = Store(str(tmp_path / "store"))
    shards, data_hash, n = training_data(small_pool["manifest"])
    result = train_clip(store, shards, data_hash, n, scale_config(
        "tiny", {"samples_seen": 512, "batch_size": 64, "checkpoint_steps": 4}), "gpu")
    assert result["stats"]["device"].startswith("cuda") and result["rows"]["samples_seen"] == 512
    assert store.exists(store.relative(result["outputs"]["checkpoint"]))
