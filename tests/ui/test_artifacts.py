"""Artifacts' pieces without a browser: keys, plots as markdown, progress bars and what they read."""

from __future__ import annotations

import base64
import io
import time

import numpy as np
from PIL import Image

from tasks.common.plots import png_bytes, png_markdown, subplots
from tasks.common.prefect_support import artifact_key
from tasks.train.task import training_progress


def test_artifact_keys_per_store_pool_and_stage():
    assert artifact_key("/a/store", "demo", "download") == artifact_key("/a/store", "demo", "download")
    assert artifact_key("/a/store", "demo", "download") != artifact_key("/b/store", "demo", "download")
    assert artifact_key("/a/store", "demo", "download") != artifact_key("/a/store", "demo", "pool")
    key = artifact_key("s3://bucket/x", "Demo Pool", "subset", "4 levels, resampling")
    assert key.startswith("demo-pool-subset-4-levels-resampling-")
    assert set(key) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")


def test_a_large_plot_as_markdown_stays_small_and_decodes():
    fig, ax = subplots(figsize=(30, 20))
    ax.imshow(np.random.default_rng(0).random((400, 600)))  # noise: a PNG that compresses badly
    big = png_bytes(fig)
    markdown = png_markdown(big, "noise [test]", max_bytes=150_000)
    assert len(big) > 1_000_000 and len(markdown) < 200_000
    assert markdown.startswith("![noise (test)](data:image/png;base64,") and markdown.endswith(")")
    image = Image.open(io.BytesIO(base64.b64decode(markdown.split(",", 1)[1][:-1])))
    assert image.format == "PNG" and 64 <= image.width <= 900


def test_training_progress_reads_the_last_progress_line(tmp_path):
    log = tmp_path / "train.log"
    assert training_progress(log, epochs=2) is None
    log.write_text("starting\n")
    assert training_progress(log, epochs=2) is None
    log.write_text("Train Epoch: 0 [ 256/1024 (25%)] Data (t): 0.1\n"
                   "Train Epoch: 1 [ 512/1024 (50%)] Data (t): 0.1\nsaving\n")
    assert abs(training_progress(log, epochs=2) - 0.75) < 1e-9


def test_progress_bars_belong_to_their_task_run(prefect_harness):
    """Updates from the polling thread land on the task run's own artifact, and the bar ends at 100 %."""
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterType
    from prefect.runtime import task_run

    from prefect.runtime import flow_run

    from tasks.common.progress import progress_while, wait_with_progress

    @task
    def slow_loop() -> str:
        ticks = iter(range(1, 100))
        with progress_while("ui test loop", lambda: next(ticks) / 10, every=0.2) as bar:
            time.sleep(1.5)
            bar.update(1.0)
        return str(task_run.get_id())

    @flow
    def looping() -> tuple[str, str]:
        task_run_id = slow_loop()
        wait_with_progress([slow_loop.submit() for _ in range(3)], "ui test futures", min_seconds=0.0)
        return task_run_id, str(flow_run.get_id())

    task_run_id, flow_run_id = looping()
    with get_client(sync_client=True) as client:
        bars = client.read_artifacts(artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["progress"])))
    loop = [bar for bar in bars if bar.description == "ui test loop" and str(bar.task_run_id) == task_run_id]
    assert len(loop) == 1 and loop[0].data == 100.0
    futures = [bar for bar in bars if bar.description == "ui test futures"]
    assert len(futures) == 1 and futures[0].data == 100.0 and str(futures[0].flow_run_id) == flow_run_id


def test_the_demo_and_pipeline_untrack_every_subflow_result():
    """A subflow result left tracked makes later task inputs ``flow_run`` references (an empty Task Runs tab)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    subflows = {"pool_refresh", "curate", "train_eval", "run_embed_filter", "embed_filter", "import_pool",
                "export_pool", "run_export_pool"}

    def called_flow(call: ast.Call) -> str | None:
        func = call.func
        if isinstance(func, ast.Call) and isinstance(func.func, ast.Attribute) and func.func.attr == "with_options":
            func = func.func.value  # flow.with_options(...)(...)
        return func.id if isinstance(func, ast.Name) and func.id in subflows else None

    for module in ("flows/demo.py", "flows/pipeline.py"):
        tree = ast.parse((root / module).read_text())
        flow_body = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and any(
            isinstance(d, ast.Call) and getattr(d.func, "id", "") == "flow" for d in node.decorator_list))
        wrapped = {id(node.args[0]) for node in ast.walk(flow_body) if isinstance(node, ast.Call)
                   and getattr(node.func, "id", "") == "untracked"}
        calls = [node for node in ast.walk(flow_body) if isinstance(node, ast.Call) and called_flow(node)]
        assert calls, module
        assert [f"{module}:{c.lineno} {called_flow(c)}" for c in calls if id(c) not in wrapped] == []
