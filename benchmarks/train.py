"""Benchmark: the train_eval training task against open_clip's own training command.

    python benchmarks/train.py [--manifest .demo/store/pools/demo/manifest.json] [--samples 10240] [--repeats 2]

Both train the same model (the ``tiny`` scale's Tiny-ViT-48px) with the same arguments on the
same shards: ours through ``train_clip_task`` in a Prefect flow (child process, checkpoint
publication to the store, result marker), the peer as ``python -m open_clip_train.main`` with the
model given as ``local-dir:`` (open_clip's way to load a config that is not built in). Without
``--manifest`` a 5,000-sample demo pool is generated and downloaded first.
Throughput is samples seen over wall-clock seconds of the whole training process (start-up
included), and also open_clip's own steady-state samples/s from its log. The last line printed
is one JSON object; ``throughput_ratio`` is ours over open_clip's command (wall clock).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow  # noqa: E402
from prefect.testing.utilities import prefect_test_harness  # noqa: E402

from tasks.common.models import MODEL_CONFIGS  # noqa: E402
from tasks.train.run import SPEED, open_clip_args  # noqa: E402
from tasks.train.scales import scale_config  # noqa: E402
from tasks.train.run import training_data  # noqa: E402
from tasks.train.task import train_clip_task  # noqa: E402


def demo_manifest(work: Path, n_samples: int) -> Path:
    """Generate, serve and download a demo pool; return its manifest path."""
    from flows.pool_refresh import pool_refresh
    from tasks.common.dask_cluster import dask_client
    from tasks.demo_pool.generate import DemoPoolConfig, generate_demo_pool, pool_index_for
    from tasks.demo_pool.server import DemoWebServer
    from tasks.demo_pool.task import demo_config

    with dask_client(gpu=False) as client:
        generate_demo_pool(DemoPoolConfig(**demo_config(n_samples, 0)), work / "web", client=client)
    with DemoWebServer(work / "web") as server:
        pool_index_for(work / "web", server.base_url).to_parquet(work / "pool.parquet", index=False)
        pool_refresh(pool_index=str(work / "pool.parquet"), store=str(work / "store"), pool_name="bench",
                     slice_size=10_000, shard_size=1_000, threads=16, image_size=256, timeout=10)
    return work / "store/pools/bench/manifest.json"


def steady_speed(log_text: str) -> float | None:
    speeds = [float(s) for s in SPEED.findall(log_text)]
    return round(sum(speeds[1:]) / len(speeds[1:]), 1) if len(speeds) > 1 else None


def run_open_clip(shards: list[str], overrides: dict, work: Path) -> dict:
    config = scale_config("tiny", overrides)
    model_dir = work / "model"
    model_dir.mkdir(exist_ok=True)
    model_cfg = json.loads((MODEL_CONFIGS / f"{config.model}.json").read_text())
    (model_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    logs = work / "open_clip-logs"
    shutil.rmtree(logs, ignore_errors=True)
    args = open_clip_args(config, "::".join(shards), logs, "cpu", 1)
    args[args.index("--model") + 1] = f"local-dir:{model_dir}"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "open_clip_train.main", *args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    log = (logs / "run" / "out.log").read_text()
    return {"seconds": round(seconds, 2), "samples_seen": config.realised_samples_seen,
            "samples_per_s_wall": round(config.realised_samples_seen / seconds, 1),
            "samples_per_s_logged": steady_speed(log)}


@flow
def _train_once(store: str, manifest: dict, overrides: dict, run_name: str) -> dict:
    from tasks.common.store import Store

    return train_clip_task(Store(store), manifest, "tiny", overrides, run_name)


def run_ours(manifest: dict, overrides: dict, work: Path, repeat: int) -> dict:
    store = work / f"store-{repeat}"
    shutil.rmtree(store, ignore_errors=True)
    started = time.perf_counter()
    result = _train_once(str(store), manifest, overrides, f"bench{repeat}")
    seconds = time.perf_counter() - started
    seen = result["rows"]["samples_seen"]
    return {"seconds": round(seconds, 2), "samples_seen": seen, "samples_per_s_wall": round(seen / seconds, 1),
            "samples_per_s_logged": result["stats"]["samples_per_second"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default="")
    parser.add_argument("--samples", type=int, default=10_240)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    overrides = {"samples_seen": args.samples, "checkpoint_steps": 20}
    with prefect_test_harness(server_startup_timeout=120):
        manifest_path = Path(args.manifest) if args.manifest else demo_manifest(work, 5_000)
        manifest = json.loads(manifest_path.read_text())
        shards, _, n_samples = training_data(manifest)
        runs = {"open_clip": [], "train_eval": []}
        for repeat in range(args.repeats):
            runs["open_clip"].append(run_open_clip(shards, overrides, work))
            print("open_clip  ", runs["open_clip"][-1], flush=True)
            runs["train_eval"].append(run_ours(manifest, overrides, work, repeat))
            print("train_eval ", runs["train_eval"][-1], flush=True)
    best = {name: max(r["samples_per_s_wall"] for r in results) for name, results in runs.items()}
    logged = {name: max((r["samples_per_s_logged"] or 0) for r in results) for name, results in runs.items()}
    config = scale_config("tiny", overrides)
    print(json.dumps({
        "benchmark": "train", "model": config.model, "batch_size": config.batch_size,
        "samples_seen": config.realised_samples_seen, "epochs": config.epochs, "train_samples": n_samples,
        "device": "cpu", "cpu_count": os.cpu_count(), "runs": runs,
        "open_clip_samples_per_s": best["open_clip"], "train_eval_samples_per_s": best["train_eval"],
        "throughput_ratio": round(best["train_eval"] / best["open_clip"], 3),
        "logged_throughput_ratio": round(logged["train_eval"] / logged["open_clip"], 3) if logged["open_clip"] else None,
    }))


if __name__ == "__main__":
    main()
