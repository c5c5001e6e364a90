#!/usr/bin/env bash
# The GPU check, in one script for a machine with an NVIDIA GPU, in under 8 minutes in all:
#   1. the GPU's name and driver (nvidia-smi); without a GPU it stops there;
#   2. the install: the project with its `test` and `gpu` extras into .venv (as `make install`, and
#      the `dataclasses` backport removed), from PyPI or, offline, from a folder of wheels
#      (WHEELHOUSE); where neither is reachable it says so and goes on with the python it has;
#   3. the tests marked `gpu` (pytest -m gpu);
#   4. benchmarks/kmeans_gpu.py (our k-means on cupy, cuML, faiss-gpu, the 4-level tree);
#   5. one JSON line, printed last: install status and seconds, the gpu tests' counts, the benchmark's figures.
#
#   bash benchmarks/gpu_check.sh [--skip-install] [--quick] [--force]
#
# Settings (environment):
#   WHEELHOUSE=DIR            install with --no-index --find-links DIR (no package index needed)
#   GPU_CHECK_SKIP_INSTALL=1  (or --skip-install) use .venv/bin/python, else python3, as they are
#   GPU_CHECK_QUICK=1         (or --quick) the benchmark's small sizes
#   GPU_CHECK_FORCE=1         (or --force) run the phases even where nvidia-smi finds no GPU (they then
#                             report why nothing ran on a GPU; for a dry run of this script on a CPU)
#   GPU_CHECK_PYTHON=python3  the interpreter that makes the venv, and the fallback when the install fails
#   GPU_CHECK_LOGS=DIR        where the logs go (default: a new folder under /tmp)
#   GPU_CHECK_TOTAL_S=470     the whole script's budget; the phases' budgets below are cut to fit it
#   GPU_CHECK_INSTALL_S=200  GPU_CHECK_TEST_S=120  GPU_CHECK_BENCH_S=300
# Exit status: 0 when the gpu tests ran without failures or errors, 2 without a GPU, else 1.
set -u

START=$SECONDS
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1

SKIP_INSTALL=${GPU_CHECK_SKIP_INSTALL:-0}
QUICK=${GPU_CHECK_QUICK:-0}
FORCE=${GPU_CHECK_FORCE:-0}
for arg in "$@"; do
    case $arg in
        --skip-install) SKIP_INSTALL=1 ;;
        --quick) QUICK=1 ;;
        --force) FORCE=1 ;;
        -h | --help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "gpu_check: unknown argument $arg (expected --skip-install, --quick, --force)" >&2; exit 64 ;;
    esac
done
TOTAL_S=${GPU_CHECK_TOTAL_S:-470}
INSTALL_S=${GPU_CHECK_INSTALL_S:-200}
TEST_S=${GPU_CHECK_TEST_S:-120}
BENCH_S=${GPU_CHECK_BENCH_S:-300}
BASE_PY=${GPU_CHECK_PYTHON:-python3}
VENV=$ROOT/.venv
SITE=/tmp/clip-curation-gpu-site  # wheels added to a python that the full install could not replace
LOGS=${GPU_CHECK_LOGS:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 NO_ALBUMENTATIONS_UPDATE=1
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}

# What the final JSON line is made of (read by the python at the end through the environment).
export GC_GPU="" GC_DRIVER="" GC_INSTALL="not run" GC_INSTALL_SECONDS=0 GC_PYTHON="" GC_CUPY="" GC_TESTS="not run"
export GC_TEST_SECONDS=0 GC_JUNIT="$LOGS/junit.xml" GC_BENCH="not run" GC_BENCH_SECONDS=0 GC_BENCH_JSON="$LOGS/kmeans_gpu.json"
export GC_LOGS="$LOGS" GC_START=$START

say() { echo "gpu_check: $*"; }
left() { echo $(( TOTAL_S - (SECONDS - START) )); }
smaller() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }

final_json() {
    export GC_TOTAL_SECONDS=$(( SECONDS - START ))
    local py
    for py in "$BASE_PY" python3 "${PY:-}"; do
        if [ -n "$py" ] && command -v "$py" >/dev/null 2>&1 && "$py" - <<'EOF'
import json, os, xml.etree.ElementTree as ET
env = os.environ
out = {"check": "gpu_check", "gpu": env["GC_GPU"] or None, "driver": env["GC_DRIVER"] or None,
       "install": env["GC_INSTALL"], "install_seconds": int(env["GC_INSTALL_SECONDS"]),
       "python": env["GC_PYTHON"] or None, "cupy": env["GC_CUPY"] or None}
tests = {"status": env["GC_TESTS"], "seconds": int(env["GC_TEST_SECONDS"])}
try:
    root = ET.parse(env["GC_JUNIT"]).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    count = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    tests.update(passed=count["tests"] - count["failures"] - count["errors"] - count["skipped"],
                 failed=count["failures"], errors=count["errors"], skipped=count["skipped"])
except (OSError, ET.ParseError):
    pass
out["gpu_tests"] = tests
bench = {"status": env["GC_BENCH"], "seconds": int(env["GC_BENCH_SECONDS"])}
try:
    with open(env["GC_BENCH_JSON"]) as handle:
        bench["figures"] = json.load(handle)
except (OSError, ValueError):
    pass
out["benchmark"] = bench
out["seconds_total"] = int(env["GC_TOTAL_SECONDS"])
out["logs"] = env["GC_LOGS"]
print(json.dumps(out))
EOF
        then return 0; fi
    done
    # no python at all: the essentials by hand
    printf '{"check": "gpu_check", "gpu": "%s", "install": "%s", "gpu_tests": {"status": "%s"}, "benchmark": {"status": "%s"}, "error": "no python to merge the results"}\n' \
        "$GC_GPU" "$GC_INSTALL" "$GC_TESTS" "$GC_BENCH"
}

# ----- 1. the GPU -----------------------------------------------------------------------------
GPU_LINES=""
if command -v nvidia-smi >/dev/null 2>&1; then
    GPU_LINES=$(timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>"$LOGS/nvidia-smi.err")
fi
if [ -n "$GPU_LINES" ]; then
    say "GPU: $GPU_LINES"
    GC_GPU=$(echo "$GPU_LINES" | head -1 | cut -d, -f1 | sed 's/^ *//;s/ *$//')
    GC_DRIVER=$(echo "$GPU_LINES" | head -1 | cut -d, -f2 | sed 's/^ *//;s/ *$//')
    [ "$(echo "$GPU_LINES" | wc -l)" -gt 1 ] && GC_GPU="$GC_GPU (and $(( $(echo "$GPU_LINES" | wc -l) - 1 )) more)"
else
    why=$(command -v nvidia-smi >/dev/null 2>&1 && head -c 300 "$LOGS/nvidia-smi.err" || echo "nvidia-smi not found")
    say "no NVIDIA GPU here: ${why:-nvidia-smi lists no GPU}"
    if [ "$FORCE" != 1 ]; then
        GC_INSTALL="skipped: no GPU" GC_TESTS="skipped: no GPU" GC_BENCH="skipped: no GPU"
        final_json
        exit 2
    fi
    say "GPU_CHECK_FORCE: running the phases anyway"
fi

# ----- 2. the install -------------------------------------------------------------------------
index_reachable() {
    local url=${PIP_INDEX_URL:-https://pypi.org/simple/}
    timeout 15 "$BASE_PY" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + 'pip/', timeout=8)" \
        "${url%/}/" >/dev/null 2>&1
}

full_install() {  # the project with the test and gpu extras into $VENV; 0 on success
    local budget=$1 sources=()
    [ -n "${WHEELHOUSE:-}" ] && sources=(--no-index --find-links "$WHEELHOUSE")
    if [ ! -x "$VENV/bin/python" ]; then
        timeout 60 "$BASE_PY" -m venv "$VENV" || return 1
    fi
    if [ -n "${WHEELHOUSE:-}" ]; then  # the build backend too, from the wheelhouse
        timeout 60 "$VENV/bin/python" -m pip install -q "${sources[@]}" "setuptools>=68" wheel || return 1
        sources+=(--no-build-isolation)
    fi
    timeout -k 10 "$budget" "$VENV/bin/python" -m pip install ${sources[@]+"${sources[@]}"} -e '.[test,gpu]' || return 1
    # img2dataset's PyPI backport 'dataclasses' shadows the standard library (see the Makefile)
    "$VENV/bin/python" -m pip uninstall -y -q dataclasses >/dev/null 2>&1
    return 0
}

phase_start=$SECONDS
if [ "$SKIP_INSTALL" = 1 ]; then
    GC_INSTALL="skipped (GPU_CHECK_SKIP_INSTALL / --skip-install)"
else
    budget=$(smaller "$INSTALL_S" $(( $(left) - 150 )))
    if [ "$budget" -lt 30 ]; then
        GC_INSTALL="skipped: no time left for it"
    elif [ -n "${WHEELHOUSE:-}" ] && [ ! -d "$WHEELHOUSE" ]; then
        GC_INSTALL="failed: WHEELHOUSE=$WHEELHOUSE is not a folder"
    elif [ -z "${WHEELHOUSE:-}" ] && ! index_reachable; then
        say "install: no package index reachable (${PIP_INDEX_URL:-PyPI}) and WHEELHOUSE not set: cannot install; going on with $BASE_PY as it is"
        GC_INSTALL="failed: no package index reachable and WHEELHOUSE not set"
    else
        say "install: .[test,gpu] into $VENV from ${WHEELHOUSE:-${PIP_INDEX_URL:-PyPI}} (at most $budget s; log $LOGS/install.log)"
        if full_install "$budget" >"$LOGS/install.log" 2>&1; then
            GC_INSTALL="ok"
        else
            GC_INSTALL="failed: pip install -e '.[test,gpu]' (last line: $(tail -n 1 "$LOGS/install.log" | cut -c1-200))"
            say "install: $GC_INSTALL"
            tail -n 15 "$LOGS/install.log"
        fi
    fi
    if [ "$GC_INSTALL" != ok ] && [ -n "${WHEELHOUSE:-}" ] && [ -d "$WHEELHOUSE" ] \
        && [ -n "$(find "$WHEELHOUSE" -maxdepth 1 -name '*.whl' -print -quit)" ]; then
        # what the wheelhouse holds (e.g. dask, distributed, dask-cuda), added to the python that has CUDA
        if timeout 120 "$BASE_PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" \
            "$WHEELHOUSE"/*.whl >"$LOGS/install-partial.log" 2>&1; then
            export PYTHONPATH=$PYTHONPATH:$SITE
            GC_INSTALL="partial: ${GC_INSTALL#failed: }; the $(find "$WHEELHOUSE" -maxdepth 1 -name '*.whl' | wc -l) wheels of WHEELHOUSE added to $BASE_PY (--no-deps, $SITE)"
        fi
    fi
fi
GC_INSTALL_SECONDS=$(( SECONDS - phase_start ))

# The interpreter: the venv's where the install worked (or was skipped), else the first that imports cupy.
candidates=()
case $GC_INSTALL in ok | skipped*) [ -x "$VENV/bin/python" ] && candidates+=("$VENV/bin/python") ;; esac
candidates+=("$(command -v "$BASE_PY" 2>/dev/null || echo "$BASE_PY")")
[ -x "$VENV/bin/python" ] && candidates+=("$VENV/bin/python")
PY=""
for candidate in "${candidates[@]}"; do
    if timeout 60 "$candidate" -c "import cupy" >/dev/null 2>&1; then PY=$candidate; GC_CUPY=$("$PY" -c "import cupy; print(cupy.__version__)" 2>/dev/null); break; fi
done
if [ -z "$PY" ]; then
    PY=${candidates[0]}
    GC_CUPY="not importable"
fi
GC_PYTHON=$PY
say "python: $PY (cupy: $GC_CUPY); install: $GC_INSTALL ($GC_INSTALL_SECONDS s)"

# ----- 3. the gpu tests -----------------------------------------------------------------------
run_gpu_tests() {  # pytest -m gpu on the files that hold gpu tests, in at most $1 seconds
    local budget=$1 rc files=() per_test=()
    if ! "$PY" -c "import pytest" >/dev/null 2>&1; then
        GC_TESTS="skipped: pytest not importable in $PY"
        return
    fi
    # only those files: collecting the whole suite would need every dependency of the project
    mapfile -t files < <(grep -rlE "pytest\.mark\.gpu" tests --include='test_*.py' | sort)
    if [ "${#files[@]}" = 0 ]; then
        GC_TESTS="skipped: no test file under tests/ holds a gpu mark"
        return
    fi
    "$PY" -c "import pytest_timeout" >/dev/null 2>&1 && per_test=(--timeout=$(( budget - 15 )))
    say "gpu tests: ${files[*]} (at most $budget s; log $LOGS/pytest.log)"
    timeout -k 10 "$budget" "$PY" -m pytest -m gpu -rfEs -p no:cacheprovider --continue-on-collection-errors \
        --junitxml="$GC_JUNIT" ${per_test[@]+"${per_test[@]}"} "${files[@]}" >"$LOGS/pytest.log" 2>&1
    rc=$?
    case $rc in
        0) if grep -q 'skipped="0"' "$GC_JUNIT" 2>/dev/null || ! grep -q '<testcase' "$GC_JUNIT" 2>/dev/null; then
               GC_TESTS="ok (pytest exit 0: no failures; see the counts)"
           elif grep -q '<testcase[^>]*>\s*</testcase>\|<testcase[^>]*/>' "$GC_JUNIT" 2>/dev/null; then
               GC_TESTS="ok (pytest exit 0, some skipped; see the counts)"
           else
               GC_TESTS="all skipped: nothing ran on the GPU (see $LOGS/pytest.log)"
           fi ;;
        124 | 137) GC_TESTS="timed out after $budget s" ;;
        5) GC_TESTS="no tests collected" ;;
        *) GC_TESTS="failed (pytest exit $rc)" ;;
    esac
    tail -n 25 "$LOGS/pytest.log"
}

phase_start=$SECONDS
budget=$(smaller "$TEST_S" $(( $(left) - 90 )))
if [ "$budget" -lt 20 ]; then
    GC_TESTS="skipped: no time left for them"
else
    run_gpu_tests "$budget"
fi
GC_TEST_SECONDS=$(( SECONDS - phase_start ))

# ----- 4. the benchmark ---------------------------------------------------------------------
phase_start=$SECONDS
budget=$(smaller "$BENCH_S" $(( $(left) - 15 )))
if [ "$budget" -lt 45 ]; then
    GC_BENCH="skipped: no time left for it"
else
    quick=()
    [ "$QUICK" = 1 ] && quick=(--quick)
    say "benchmark: benchmarks/kmeans_gpu.py ${quick[*]} (at most $budget s; log $LOGS/kmeans_gpu.log)"
    timeout -k 10 "$budget" "$PY" benchmarks/kmeans_gpu.py ${quick[@]+"${quick[@]}"} --budget-seconds $(( budget - 40 )) \
        --out "$GC_BENCH_JSON" >"$LOGS/kmeans_gpu.log" 2>&1
    rc=$?
    case $rc in
        0) GC_BENCH="ran" ;;
        124 | 137) GC_BENCH="timed out after $budget s (figures: the parts finished before)" ;;
        *) GC_BENCH="failed (exit $rc; figures: the parts finished before)" ;;
    esac
    grep -v '^{' "$LOGS/kmeans_gpu.log" | tail -n 30 | cut -c1-400
fi
GC_BENCH_SECONDS=$(( SECONDS - phase_start ))

# ----- 5. the JSON line -------------------------------------------------------------------------
final_json
[ -z "$GC_GPU" ] && exit 2
case $GC_TESTS in ok*) exit 0 ;; *) exit 1 ;; esac
