"""Embedding a shard on a Dask-CUDA worker (skipped without a GPU): CUDA is used, and the rows
equal those of the same shard embedded on the CPU (in a child process with the GPUs hidden)."""

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tasks.common.store import Store
from tasks.embed.spec import EmbedderSpec
from test_embed_shard import embed_shard

pytestmark = pytest.mark.gpu


def _device(spec) -> str:
    from tasks.embed.run import get_embedder

    return get_embedder(spec)[0].device


def test_embeds_a_shard_on_a_dask_cuda_worker(small_pool, tiny_checkpoint, tmp_path):
    import torch

    from tasks.common.dask_cluster import dask_client

    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    spec = EmbedderSpec("Tiny-ViT-48px", tiny_checkpoint, batch_size=64)
    shard = small_pool["manifest"]["outputs"]["shards"][0]
    args = (shard["tar"], shard["parquet"], spec, "emb", shard["shard_id"])
    with dask_client(gpu=True) as client:
        summary = client.submit(embed_shard, Store(str(tmp_path / "gpu")), *args, pure=False).result()
        device = client.submit(_device, spec, pure=False).result()
    assert device.startswith("cuda")
    assert summary["embedded"] == shard["n_success"]

    # the CPU reference, in a child process that sees no GPU
    code = ("import sys; sys.path.insert(0, 'tests/embed'); from test_embed_shard import embed_shard; "
            "from tasks.common.store import Store; from tasks.embed.spec import EmbedderSpec; "
            f"embed_shard(Store({str(tmp_path / 'cpu')!r}), {shard['tar']!r}, {shard['parquet']!r}, "
            f"EmbedderSpec('Tiny-ViT-48px', {tiny_checkpoint!r}, batch_size=64), 'emb', {shard['shard_id']!r})")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2],
                   env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    for suffix in ("img", "txt"):
        name = f"emb/{shard['shard_id']}.{suffix}.npy"
        gpu = np.load(io.BytesIO(Store(str(tmp_path / "gpu")).read_bytes(name))).astype(np.float32)
        cpu = np.load(io.BytesIO(Store(str(tmp_path / "cpu")).read_bytes(name))).astype(np.float32)
        assert gpu.shape == cpu.shape
        # float16 files; cuDNN may use TF32 for convolutions on the GPU
        np.testing.assert_allclose(gpu, cpu, atol=1e-2)
