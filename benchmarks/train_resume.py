"""Evidence: a training run killed in the middle and resumed matches an uninterrupted one.

    python benchmarks/train_resume.py [--manifest .demo/store/pools/demo/manifest.json] [--kill-after-epoch 2]

Trains the ``tiny`` scale twice on the same shards: once without interruption, once killed with
SIGKILL (the task's process and the training child) after ``--kill-after-epoch`` checkpoints
reached the store, with its local staging folder deleted (a new machine), then run again. Both
are evaluated on the demo's balanced evaluation sets. The last line printed is one JSON object
with samples seen and the metrics of both runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from tasks.common.store import Store  # noqa: E402
from tasks.demo_pool.eval_sets import generate_eval_sets  # noqa: E402
from tasks.common.catalog import Catalog  # noqa: E402
from tasks.evaluate.runner import evaluate_checkpoint  # noqa: E402
from tasks.train.run import run_folder, train_clip  # noqa: E402
from tasks.train.scales import scale_config  # noqa: E402
from tasks.train.run import training_data  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default=".demo/store/pools/demo/manifest.json")
    parser.add_argument("--kill-after-epoch", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-resume-"))
    store = Store(str(work / "store"))
    shards, data_hash, n = training_data(json.loads(Path(args.manifest).read_text()))
    config = scale_config("tiny")
    tasklist = generate_eval_sets(work / "eval", seed=0)

    uninterrupted = train_clip(store, shards, data_hash, n, config, "uninterrupted")

    script = textwrap.dedent(f"""
        from tasks.common.store import Store
        from tasks.train.run import train_clip
        from tasks.train.scales import scale_config
        train_clip(Store({store.root!r}), {shards!r}, {data_hash!r}, {n}, scale_config("tiny"), "resumed",
                   sync_seconds=1.0)
    """)
    folder = run_folder("resumed", data_hash, config)
    process = subprocess.Popen([sys.executable, "-c", script], start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 3600
    while not store.exists(Catalog.checkpoint(folder, args.kill_after_epoch)):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the run ended before it could be killed")
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    time.sleep(1)
    shutil.rmtree(store.staging_path(folder), ignore_errors=True)
    resumed = train_clip(store, shards, data_hash, n, config, "resumed")

    report = {"benchmark": "train_resume", "model": config.model, "killed_after_epoch": args.kill_after_epoch,
              "epochs": config.epochs}
    for name, run in (("uninterrupted", uninterrupted), ("resumed", resumed)):
        summary = evaluate_checkpoint(store, run["config"]["model"], run["outputs"]["checkpoint"], tasklist,
                                      Catalog.evaluation_folder(name, "benchmark"))
        report[name] = {"samples_seen": run["rows"]["samples_seen"], "resumed_from_epoch": run["stats"]["resumed_from_epoch"],
                        **{t["key"]: t["score"] for t in summary["tasks"]}}
        print(name, report[name], flush=True)
    report["same_samples_seen"] = report["uninterrupted"]["samples_seen"] == report["resumed"]["samples_seen"]
    report["acc1_difference"] = round(report["resumed"]["demo/concepts"] - report["uninterrupted"]["demo/concepts"], 4)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
