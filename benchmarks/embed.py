"""Benchmark: the embedding stage against a bare open_clip inference loop, same images, model, batch.

    python benchmarks/embed.py [--manifest .demo/store/pools/demo/manifest.json] [--checkpoint PATH] [--shards 8]

Ours: ``embed_shard_task`` once per shard, on a local Dask cluster (one single-threaded worker
process per core), through Prefect's DaskTaskRunner, writing embeddings, pHash, thumbnails and
the parquet to a fresh store. The workers first embed two other shards (each loads the model
once, as on a long run), then the timed shards run; the whole flow's time, with the cluster's
start-up, is reported beside it.
The peer: one process reading the same tars and running ``model.encode_image`` and
``model.encode_text`` on batches of the same size with torch using every core. Throughput is
images per second; the last line printed is one JSON object with ``throughput_ratio`` (ours /
bare loop, of the medians over ``--repeats`` runs; the best runs' ratio is printed too). Without
``--manifest`` and ``--checkpoint`` it uses the demo's (run ``make demo``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow  # noqa: E402
from prefect.testing.utilities import prefect_test_harness  # noqa: E402

from tasks.common.dask_cluster import dask_task_runner  # noqa: E402
from tasks.embed.task import embed_shard_task  # noqa: E402

MODEL = "Tiny-ViT-48px"


def bare_loop(shards: list[dict], checkpoint: str, batch_size: int) -> tuple[float, int]:
    import open_clip
    import torch
    from PIL import Image

    from tasks.common.models import register_model_configs

    started = time.perf_counter()
    register_model_configs()
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL, pretrained=checkpoint)
    model.eval()
    tokenizer = open_clip.get_tokenizer(MODEL)
    count = 0
    with torch.no_grad():
        for shard in shards:
            images, texts = [], []
            with tarfile.open(shard["tar"]) as tar:
                for member in tar:
                    data = tar.extractfile(member).read() if member.isfile() else None
                    if member.name.endswith(".jpg"):
                        images.append(preprocess(Image.open(io.BytesIO(data)).convert("RGB")))
                    elif member.name.endswith(".txt"):
                        texts.append(data.decode())
            for start in range(0, len(images), batch_size):
                model.encode_image(torch.stack(images[start:start + batch_size]), normalize=True)
                model.encode_text(tokenizer(texts[start:start + batch_size]), normalize=True)
            count += len(images)
    return time.perf_counter() - started, count


@flow
def _embed_stage(root: str, warmup: list[dict], shards: list[dict], spec: dict) -> tuple[float, int]:
    """Warm the workers up (each loads the model) on ``warmup``, then time ``shards`` alone."""
    from tasks.common.catalog import Catalog
    from tasks.common.store import Store

    store = Store(root)
    warm, timed = Catalog.embedding_folder("bench", "warmup"), Catalog.embedding_folder("bench", "timed")
    for future in [embed_shard_task.submit(store, shard, spec, warm) for shard in warmup]:
        future.result()
    started = time.perf_counter()
    futures = [embed_shard_task.submit(store, shard, spec, timed) for shard in shards]
    count = sum(future.result()["embedded"] for future in futures)
    return time.perf_counter() - started, count


def ours(warmup: list[dict], shards: list[dict], checkpoint: str, batch_size: int,
         store: Path) -> tuple[float, float, int]:
    """(seconds on a warm cluster, seconds from the flow's start to its end, images)."""
    spec = {"model": MODEL, "checkpoint": checkpoint, "batch_size": batch_size}
    started = time.perf_counter()
    warm_seconds, count = _embed_stage.with_options(task_runner=dask_task_runner())(str(store), warmup, shards, spec)
    return warm_seconds, time.perf_counter() - started, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default=".demo/store/pools/demo/manifest.json")
    parser.add_argument("--checkpoint", default="")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    checkpoint = args.checkpoint or demo_checkpoint()
    all_shards = json.loads(Path(args.manifest).read_text())["outputs"]["shards"]
    shards, warmup = all_shards[:args.shards], all_shards[args.shards:args.shards + 2]
    runs = {"bare_loop": [], "embed_stage": []}
    with prefect_test_harness(server_startup_timeout=120):
        for repeat in range(args.repeats):
            seconds, count = bare_loop(shards, checkpoint, args.batch_size)
            runs["bare_loop"].append({"seconds": round(seconds, 2), "images": count,
                                      "images_per_s": round(count / seconds, 1)})
            print("bare loop  ", runs["bare_loop"][-1], flush=True)
            seconds, whole_flow, count = ours(warmup, shards, checkpoint, args.batch_size,
                                              Path(tempfile.mkdtemp(prefix="bench-embed-")))
            runs["embed_stage"].append({"seconds": round(seconds, 2), "images": count,
                                        "images_per_s": round(count / seconds, 1),
                                        "whole_flow_seconds_with_cluster_start_and_warmup": round(whole_flow, 2)})
            print("embed stage", runs["embed_stage"][-1], flush=True)
    print(json.dumps(summary(runs, args.batch_size, len(shards))))


def demo_checkpoint() -> str:
    """The checkpoint of the demo's model trained on the raw pool (``make demo``), found through the catalog."""
    from tasks.common.catalog import Catalog
    from tasks.common.store import Store

    runs = Catalog(Store(".demo/store")).training_runs("raw-pool")
    if not runs:
        raise SystemExit("no finished raw-pool training run in .demo/store: run `make demo` or pass --checkpoint")
    return runs[-1]["outputs"]["checkpoint"]


def summary(runs: dict, batch_size: int, shards: int) -> dict:
    """Median and best of each side; ``throughput_ratio`` is the ratio of the medians, because
    single runs of the bare loop vary by up to 50% on a shared 2-core machine."""
    import statistics

    median = {name: statistics.median(r["images_per_s"] for r in results) for name, results in runs.items()}
    best = {name: max(r["images_per_s"] for r in results) for name, results in runs.items()}
    return {"benchmark": "embed", "model": MODEL, "batch_size": batch_size, "shards": shards,
            "cpu_count": os.cpu_count(), "runs": runs,
            "bare_loop_images_per_s_median": median["bare_loop"], "embed_stage_images_per_s_median": median["embed_stage"],
            "bare_loop_images_per_s_best": best["bare_loop"], "embed_stage_images_per_s_best": best["embed_stage"],
            "throughput_ratio_best": round(best["embed_stage"] / best["bare_loop"], 3),
            "throughput_ratio": round(median["embed_stage"] / median["bare_loop"], 3)}


if __name__ == "__main__":
    main()
