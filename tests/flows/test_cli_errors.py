"""Bad input on the flows' command lines: one line naming the file, column or parameter, status 2.

Every case runs a flow's ``python -m flows.<name>`` as a new process, as a user would. The checks
before the flow must refuse without starting Prefect's server or Dask: the output is the one
``error:`` line (no Prefect log line, no traceback) and the process spends a few seconds of CPU
(imports, mostly), which a server start-up and a flow run would exceed. The cases run a few at a
time; each is checked on its own.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.cluster.imported import import_embeddings
from tasks.common.catalog import Catalog
from tasks.common.store import Store

REPO = Path(__file__).resolve().parents[2]
CPU_SECONDS = 20  # a refused run imports its modules (a few CPU seconds); a Prefect server and flow run take far more
WALL_SECONDS = 180  # only a guard against a hang: the machine may be busy with other work
GOOD_INDEX = {"uid": [f"{i:032x}" for i in range(4)], "url": [f"http://127.0.0.1:9/{i}.jpg" for i in range(4)],
              "text": ["a cat", "a dog", "a car", "a cup"]}
EMBEDDER = '{"model": "ViT-B-32", "checkpoint": "openai"}'


@dataclass
class Refused:
    status: int
    stdout: str
    stderr: str
    cpu_seconds: float


def run_flow(module: str, args: list[str], env: dict | None = None) -> Refused:
    """Run ``python -m flows.<module> args`` to its end; its status, output and CPU time (with its children)."""
    with open(os.devnull, "rb") as stdin, tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen([sys.executable, "-m", f"flows.{module}", *args], cwd=REPO, stdin=stdin,
                                   stdout=out, stderr=err, env=env, start_new_session=True)
        guard = threading.Timer(WALL_SECONDS, _kill_group, (process.pid,))
        guard.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            guard.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        return Refused(process.returncode, out.read().decode(), err.read().decode(), usage.ru_utime + usage.ru_stime)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    """Files a user might give: good, renamed, broken and missing ones, and a store holding a small pool."""
    folder = tmp_path_factory.mktemp("cli")
    pd.DataFrame(GOOD_INDEX).to_parquet(folder / "index.parquet")
    pd.DataFrame(GOOD_INDEX).rename(columns={"text": "caption"}).to_parquet(folder / "renamed.parquet")
    (folder / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    (folder / "tasklist.yml").write_text("imagenet: {type: zeroshot_classification\n")
    store = Store(str(folder / "store"))
    rng = np.random.default_rng(0)
    import_embeddings(Catalog(store), "small", [(np.array([f"{i:032x}" for i in range(50)]),
                                                 rng.normal(size=(50, 8)).astype(np.float16))])
    (folder / "a-file").write_text("x")
    return {"dir": str(folder), "index": str(folder / "index.parquet"), "renamed": str(folder / "renamed.parquet"),
            "broken": str(folder / "broken.parquet"), "missing": str(folder / "missing.parquet"),
            "tasklist": str(folder / "tasklist.yml"), "store": store.root, "file": str(folder / "a-file")}


# name: (flow module, its arguments with {placeholders} from ``inputs``, a regex the error line must match[,
# the exit status when it is not 2])
CASES = {
    "missing index file": ("pool_refresh", ["--pool-index", "{missing}", "--store", "{dir}/s1"],
                           r"pool_index '.*missing\.parquet': no such file"),
    "missing index column": ("pool_refresh", ["--pool-index", "{renamed}", "--store", "{dir}/s1"],
                             r"renamed\.parquet': missing column 'text'; it has \['uid', 'url', 'caption'\]"),
    "unreadable index": ("pool_refresh", ["--pool-index", "{broken}", "--store", "{dir}/s1"],
                         r"broken\.parquet' is not a readable parquet file"),
    "bad pool name": ("pool_refresh", ["--pool-index", "{index}", "--store", "{dir}/s1", "--pool-name", "../up"],
                      r"pool_name: '\.\./up' must be"),
    "slice size zero": ("pool_refresh", ["--pool-index", "{index}", "--store", "{dir}/s1", "--slice-size", "0"],
                        r"slice_size: must be a whole number of at least 1, got 0"),
    "misspelt embedder setting": ("pool_refresh", ["--pool-index", "{index}", "--store", "{dir}/s1", "--embedder",
                                                   '{"model": "ViT-B-32", "chekpoint": "openai"}'],
                                  r"embedder: unknown setting\(s\) \['chekpoint'\]"),
    "levels growing": ("pool_refresh", ["--pool-index", "{index}", "--store", "{dir}/s1", "--embedder", EMBEDDER,
                                        "--clustering", '{"levels": [10, 20]}'],
                       r"level 2: k=20 is larger than its 10 inputs \(centroids of level 1\); lower levels\[1\]\.k"),
    "store under a file": ("pool_refresh", ["--pool-index", "{index}", "--store", "{file}/store"],
                           r"store '.*a-file/store' cannot be written", 1),  # not the user's input: status 1
    "malformed levels JSON": ("curate", ["--store", "{store}", "--pool-name", "small", "--levels", "[1"],
                              r"--levels: not valid JSON at line 1 column 3 \(character 2\)"),
    "levels not shrinking": ("curate", ["--store", "{store}", "--pool-name", "small", "--levels", "[10, 10]"],
                             r"level 2: k=10 does not shrink the tree"),
    "k above the samples": ("curate", ["--store", "{store}", "--pool-name", "small", "--levels", "[60, 5]"],
                            r"level 1: k=60 is larger than its 50 inputs \(samples\)"),
    "bad resampling": ("curate", ["--store", "{store}", "--pool-name", "small", "--levels",
                                  '[10, {"k": 2, "resampling": "nearest"}]'],
                       r"level 2: resampling='nearest': expected closest or random \(levels\[1\]\.resampling\)"),
    "unknown recipe step": ("curate", ["--store", "{store}", "--pool-name", "small", "--no-cluster", "--subset",
                                       'a=[{"step": "shuffle"}]'], r"step='shuffle'; expected one of"),
    "malformed filters JSON": ("embed_filter", ["--store", "{store}", "--pool-name", "small", "--model", "ViT-B-32",
                                                "--checkpoint", "openai", "--filters", '{"clip_score": }'],
                               r"--filters: not valid JSON at line 1 column 16"),
    "unknown model": ("embed_filter", ["--store", "{store}", "--pool-name", "small", "--model", "ViT-Nope",
                                       "--checkpoint", "openai"], r"embedder model 'ViT-Nope': not an open_clip model"),
    "task list not YAML": ("train_eval", ["--store", "{store}", "--data", "pools/small", "--tasklist", "{tasklist}"],
                           r"task list '.*tasklist\.yml': not valid YAML"),
    "bad override": ("train_eval", ["--store", "{store}", "--data", "pools/small", "--tasklist", "{missing}",
                                    "--override", "batch_size=0"], r"training parameter batch_size: invalid value 0"),
    "bad import format": ("import_pool", ["--store", "{dir}/s2", "--pool-name", "p", "--source", "{dir}",
                                          "--format", "parquet"], r"format: 'parquet' is not one of"),
    "no such pool": ("export_pool", ["--store", "{store}", "--pool-name", "other"],
                     r"pool_name: no pool 'other' in the store \(.*pools/other/manifest\.json does not exist\)"),
    "demo too small": ("demo", ["--n-samples", "5", "--workdir", "{dir}/demo"],
                       r"n_samples: at least 100 samples are needed, got 5"),
    "subset without recipe": ("pipeline", ["--pool-index", "{index}", "--store", "{dir}/s3", "--tasklist",
                                           "{tasklist}", "--embedder", EMBEDDER, "--subset", "balanced"],
                              r"--subset 'balanced': expected NAME=VALUE"),
}


@pytest.fixture(scope="module")
def refused(inputs) -> dict[str, Refused]:
    """Every case run, three at a time."""
    def run(case):
        module, args = CASES[case][:2]
        return run_flow(module, [re.sub(r"\{(\w+)\}", lambda m: inputs.get(m[1], m[0]), arg) for arg in args])

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip(CASES, pool.map(run, CASES)))


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_before_prefect_starts(case, refused):
    result = refused[case]
    lines = result.stderr.splitlines()
    assert result.status == (CASES[case][3:] or (2,))[0], result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert re.search(CASES[case][2], lines[0]), lines[0]
    assert result.stdout == ""  # no Prefect log, no temporary server, nothing ran
    assert result.cpu_seconds < CPU_SECONDS, f"{result.cpu_seconds:.1f} CPU seconds"


def test_bad_rows_found_inside_the_flow_end_in_one_line_without_traceback(prefect_harness, inputs, tmp_path):
    """Rows are checked by the download's plan, inside the flow: Prefect runs, and still the run ends
    with one error line, status 2, and no traceback on the terminal."""
    from prefect.settings import PREFECT_API_URL

    frame = pd.DataFrame(GOOD_INDEX)
    frame.loc[2, "uid"] = "not-a-uid"
    frame.to_parquet(tmp_path / "bad-uid.parquet")
    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value())
    result = run_flow("pool_refresh", ["--pool-index", str(tmp_path / "bad-uid.parquet"), "--store",
                                       str(tmp_path / "store")], env)
    output = result.stdout + result.stderr
    assert result.status == 2, output
    assert "Traceback" not in output and "Finished in state Failed" in output  # the flow ran, and failed plainly
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"error: pool_index file '.*bad-uid\.parquet': column 'uid' must hold 32 lower-case hex "
                        r"characters; 1 rows do not, e\.g\. 'not-a-uid'", last), last
