#!/usr/bin/env bash
# The benchmark suite's GPU subset in one go (<= 5 minutes), everything written under $OUT.
#
#   experiments/benchmarks/gpu_check.sh [--quick] [--allow-cpu] [--dry-run]
#   experiments/benchmarks/gpu_check.sh --prepare-wheels     # here, before lending: fills .whl/
#
# Runs run_all.py on the GPU subset (per-group NTK vs neural-tangents and Hutchinson vs a
# gradient: spectra; Hutchinson/variance-reduced traces: trace; Lanczos vs a gradient and the
# peers: lanczos; masked and compacted steps: masks; bf16 vs f32 masked and compacted steps:
# bf16; engine vs a hand-written loop: engine; the zoo's small-map convolution against lax's:
# small_map_conv), the benches that exist, at full size (--quick:
# the benches' --quick shapes), each bench cut off after $GPU_CHECK_BENCH_TIMEOUT s (default
# 75) and the whole run after $GPU_CHECK_TIMEOUT s (default 280).  The table and the run's
# header (date, jax.devices(), command) land in $OUT/benchmarks.md and $OUT/benchmarks.json;
# the benches' logs and rows in $OUT/logs.tar.gz; the environment in $OUT/environment.txt; this
# script's own output in $OUT/gpu_check.log.  $OUT defaults to ./gpu-out.
#
# The Python it runs under, first that applies:
#   1. .venv/bin/python when it imports jax (the locked environment, made here by
#      scripts/with-env);
#   2. scripts/with-env's environment when pypi.org can be reached (it creates .venv);
#   3. the machine's python3 with the repository on PYTHONPATH (the lent GPU machine reaches no
#      registry: its image has jax with CUDA, flax and optax, but not the locked versions), and
#      the wheels in .whl/ (neural-tangents, frozendict: --prepare-wheels) installed to
#      /tmp/gpu-check-site when present.
# uv.lock has no CUDA jaxlib.  When the chosen Python is the venv, jax finds no GPU although
# nvidia-smi lists one, and the registry can be reached, jax[cuda12] of the venv's (locked) jax version is installed into the
# venv with .tools/bin/uv first, and the script says so (a later scripts/with-env run syncs it
# back to the lock).  Without a GPU the script stops unless --allow-cpu is given (for testing:
# JAX_PLATFORMS=cpu experiments/benchmarks/gpu_check.sh --quick --allow-cpu).
#
# On a session lent a GPU (the device tool's run):
#   run(command="experiments/benchmarks/gpu_check.sh", carry=[".whl", ".peers/site"],
#       timeout_s=420)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
benches="spectra,trace,lanczos,masks,bf16,engine,small_map_conv"
quick="" allow_cpu=0 dry_run=0 prepare=0
for arg in "$@"; do
    case "$arg" in
        --quick) quick="--quick" ;;
        --allow-cpu) allow_cpu=1 ;;
        --dry-run) dry_run=1 ;;
        --prepare-wheels) prepare=1 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check: unknown argument '$arg' (expected --quick, --allow-cpu, --dry-run," \
               "--prepare-wheels or --help)" >&2; exit 2 ;;
    esac
done

if [ "$prepare" = 1 ]; then
    # Pure-Python wheels the GPU image lacks; versions as locked.
    mkdir -p .whl
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    for spec in "neural-tangents==0.6.5" "frozendict==$(grep -A1 '^name = "frozendict"' uv.lock \
        | sed -n 's/^version = "\(.*\)"/\1/p')"; do
        python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation py --platform any -d .whl "$spec"
    done
    ls -l .whl
    exit 0
fi

OUT="${OUT:-$root/gpu-out}"
mkdir -p "$OUT"
work="$(mktemp -d)"
exec > >(tee "$OUT/gpu_check.log") 2>&1
bench_timeout="${GPU_CHECK_BENCH_TIMEOUT:-75}"
total_timeout="${GPU_CHECK_TIMEOUT:-280}"

online() {
    python3 - <<'PY' 2>/dev/null
import socket
socket.create_connection(("pypi.org", 443), timeout=3).close()
PY
}

if [ -x .venv/bin/python ] && .venv/bin/python -c "import jax" 2>/dev/null; then
    python=.venv/bin/python
    where="the locked environment (.venv)"
elif online; then
    scripts/with-env true
    python=.venv/bin/python
    where="the locked environment (.venv, made by scripts/with-env)"
else
    python=python3
    where="this machine's python3, the repository on PYTHONPATH (no registry reachable)"
    export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
    if compgen -G ".whl/*.whl" > /dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/gpu-check-site .whl/*.whl
        export PYTHONPATH="$PYTHONPATH:/tmp/gpu-check-site"
        where="$where, with the wheels of .whl/"
    fi
fi
echo "gpu_check: Python: $where"

backend="$("$python" -c 'import jax; print(jax.default_backend())' 2>/dev/null || echo none)"
if [ "$backend" != gpu ] && [ "$python" = .venv/bin/python ] && [ "${JAX_PLATFORMS:-}" != cpu ] \
    && nvidia-smi -L > /dev/null 2>&1 && online; then
    version="$("$python" -c 'import jax; print(jax.__version__)')"
    echo "gpu_check: uv.lock has no CUDA jaxlib: installing jax[cuda12]==$version into .venv"
    if [ "$dry_run" = 0 ]; then
        [ -x .tools/bin/uv ] || scripts/with-env true
        .tools/bin/uv pip install --python .venv/bin/python --quiet "jax[cuda12]==$version"
        backend="$("$python" -c 'import jax; print(jax.default_backend())' 2>/dev/null || echo none)"
    fi
fi
echo "gpu_check: jax backend: $backend"
if [ "$backend" != gpu ] && [ "$allow_cpu" = 0 ] && [ "$dry_run" = 0 ]; then
    echo "gpu_check: no GPU found by jax; stopping (--allow-cpu runs on the CPU anyway)" >&2
    exit 1
fi

available="$(cd experiments/benchmarks && ls bench_*.py | sed 's/^bench_//; s/\.py$//')"
subset=""
for name in ${benches//,/ }; do
    if grep -qx "$name" <<< "$available"; then
        subset="${subset:+$subset,}$name"
    else
        echo "gpu_check: bench_$name.py does not exist here; left out"
    fi
done
command=("$python" experiments/benchmarks/run_all.py --only "$subset" --out "$work"
    --timeout "$bench_timeout" --results-md "$work/RESULTS.md")
[ -n "$quick" ] && command+=("$quick")
echo "gpu_check: ${command[*]}"
if [ "$dry_run" = 1 ]; then
    echo "gpu_check: dry run, nothing run; output would go to $OUT"
    exit 0
fi

{
    echo "date: $(date -Iseconds)"
    echo "python: $where"
    nvidia-smi 2>&1 || echo "nvidia-smi: not available"
    "$python" - <<'PY' 2>&1
import importlib.metadata as m
for name in ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax",
             "neural-tangents", "numpy"):
    try:
        print(f"{name} {m.version(name)}")
    except m.PackageNotFoundError:
        print(f"{name} -")
PY
} > "$OUT/environment.txt"

status=0
timeout --signal=INT --kill-after=10 "$total_timeout" "${command[@]}" || status=$?
[ "$status" = 0 ] || echo "gpu_check: run_all ended with status $status"
for file in benchmarks.md benchmarks.json; do
    [ -f "$work/$file" ] && cp "$work/$file" "$OUT/"
done
tar -czf "$OUT/logs.tar.gz" -C "$work" --exclude RESULTS.md --exclude benchmarks.md \
    --exclude benchmarks.json .
[ -f "$OUT/benchmarks.md" ] && cat "$OUT/benchmarks.md"
echo "gpu_check: done, output in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit "$status"
