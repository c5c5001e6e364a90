"""Benchmark: pool_refresh against img2dataset called directly, same pool, server, processes, threads.

    python benchmarks/download.py [--n-samples 20000] [--repeats 1]

Both download the demo web pool served on 127.0.0.1 into a fresh local folder with the same
img2dataset settings. pool_refresh is timed as a user runs it (Prefect API already up): slicing,
one img2dataset process per slice, verification, publication, manifest and artifacts included.
The last line printed is one JSON object with the figures; ``throughput_ratio`` is
pool_refresh's images per second over img2dataset's.
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

from flows.pool_refresh import pool_refresh  # noqa: E402
from tasks.common.dask_cluster import dask_client  # noqa: E402
from tasks.demo_pool.generate import DemoPoolConfig, generate_demo_pool, pool_index_for  # noqa: E402
from tasks.demo_pool.server import DemoWebServer  # noqa: E402
from tasks.demo_pool.task import demo_config  # noqa: E402

SETTINGS = dict(processes=2, threads=16, shard_size=1000, image_size=256, timeout=10)


def run_img2dataset(index: Path, output: Path) -> tuple[float, int]:
    argv = [str(Path(sys.executable).with_name("img2dataset")), f"--url_list={index}", "--input_format=parquet",
            "--url_col=url", "--caption_col=text", '--save_additional_columns=["uid"]',
            "--output_format=webdataset", f"--output_folder={output}",
            f"--processes_count={SETTINGS['processes']}", f"--thread_count={SETTINGS['threads']}",
            f"--number_sample_per_shard={SETTINGS['shard_size']}", f"--image_size={SETTINGS['image_size']}",
            "--resize_mode=keep_ratio", "--resize_only_if_bigger=True", "--skip_reencode=True",
            f"--timeout={SETTINGS['timeout']}", "--enable_wandb=False"]
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    success = sum(json.loads(p.read_text())["successes"] for p in output.glob("*_stats.json"))
    return seconds, success


def run_pool_refresh(index: Path, store: Path, slice_size: int) -> tuple[float, int]:
    started = time.perf_counter()
    manifest = pool_refresh(pool_index=str(index), store=str(store), pool_name="bench", slice_size=slice_size,
                            **SETTINGS)
    return time.perf_counter() - started, manifest["rows"]["success"]


@flow
def _warm_up() -> None:
    """Starts the Prefect API, as it is already running for a user."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=20_000)
    parser.add_argument("--slice-size", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workdir", default="")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-download-"))
    web = work / "web"
    with dask_client(gpu=False) as client:
        generate_demo_pool(DemoPoolConfig(**demo_config(args.n_samples, 0)), web, client=client)
    figures = {"img2dataset": [], "pool_refresh": []}
    with prefect_test_harness(server_startup_timeout=120), DemoWebServer(web, hang_seconds=60) as server:
        _warm_up()
        index = work / "pool.parquet"
        pool_index_for(web, server.base_url).to_parquet(index, index=False)
        for repeat in range(args.repeats):
            for name in ("img2dataset", "pool_refresh"):
                target = work / f"{name}-{repeat}"
                shutil.rmtree(target, ignore_errors=True)
                if name == "img2dataset":
                    seconds, success = run_img2dataset(index, target)
                else:
                    seconds, success = run_pool_refresh(index, target, args.slice_size)
                figures[name].append({"seconds": round(seconds, 2), "success": success,
                                      "images_per_s": round(success / seconds, 1)})
                print(f"{name:13s} run {repeat}: {success} images in {seconds:.1f} s = {success / seconds:.1f}/s",
                      flush=True)
    best = {name: max(runs, key=lambda r: r["images_per_s"]) for name, runs in figures.items()}
    ratio = best["pool_refresh"]["images_per_s"] / best["img2dataset"]["images_per_s"]
    print(json.dumps({
        "benchmark": "download", "n_samples": args.n_samples, "slice_size": args.slice_size, **SETTINGS,
        "cpu_count": os.cpu_count(), "runs": figures,
        "img2dataset_images_per_s": best["img2dataset"]["images_per_s"],
        "pool_refresh_images_per_s": best["pool_refresh"]["images_per_s"],
        "throughput_ratio": round(ratio, 3), "overhead": round(1 - ratio, 3),
    }))


if __name__ == "__main__":
    main()
