#!/usr/bin/env bash
# Every timing benchmark of benchmarks/ in one go, on a GPU (issue 14 item 5).
#
#   bash benchmarks/gpu.sh [--quick] [--device cuda|cpu|cuda:N] [OUTPUT_FOLDER]
#
#   OUTPUT_FOLDER  default ${OUT:-benchmarks/gpu-out} (the device tool's $OUT when run there)
#   --quick        minimal repeats and sizes, on --device cpu unless --device is given: checks on a CPU machine
#                  that every step runs (about 2 minutes on the project's 2-core VM); also GPU_SH_QUICK=1
#   --device       where the benchmarks run (default cuda; cpu runs the same commands on the CPU)
#
# Environment: PYTHON (default .venv/bin/python if present, else python3); WHEELS (default .whl): a folder of
# wheels installed with pip --no-index into a temporary folder first, for packages the machine lacks (the
# device machine's image has torch but not torchrl, tensordict, vmas, mujoco...; see benchmarks/README.md);
# TIMEOUT_SCALE multiplies every per-command timeout (default 1; 4 for a full run on --device cpu); COMMIT is
# written into machine.txt where the copy has no .git (the device tool sends the files, not the history).
#
# What it writes (8 files at most, since the device tool gives back at most 8 files from $OUT):
#   machine.txt          date, host, CPU, nvidia-smi, versions (python, torch, CUDA, torchrl, tensordict,
#                        device name), the commit, then one line per benchmark: exit status, seconds, command
#   sampler.md           bench_sampler.py              learned_distances.md  bench_learned_distances.py --only cost,
#                                                                            bench_dq_refresh.py --only cost,floor
#   batched.md           bench_batched.py              update.md             bench_update.py, bench_bremen.py
#   lockstep.md          bench_lockstep.py (TD3+BC, then BCQ)
#   envs.md              bench_envs.py --only envs,sim-builds
#   stderr.log           every command's standard error, one section each
# A benchmark that fails or runs past its timeout is recorded in machine.txt and the next one runs.
#
# Not run: bench_sampler_readings.py and bench_learned_distances.py's readings part measure what the samplers
# draw (statistics, the same on any device), not time. bench_envs.py's MaMuJoCo dataset builds (CPU simulators,
# 35-63 s each per 10^5 transitions) are left out; its navigation and VMAS builds, which simulate on --device,
# run.
#
# Time budget (target: about 6 minutes on an H100 machine, inside the device tool's 10-minute limit per
# command). No GPU figures exist yet, so the estimates come from the CPU figures of benchmarks/README.md
# (2-core VM, one thread), on these assumptions: at Table 3 sizes (batch 128, hidden 64-256) an update is
# bound by kernel launches and Python on a GPU, so it costs about what it costs on one CPU core or less (BCQ
# ~5 ms, TD3+BC ~5 ms, CQL ~10-20 ms instead of 74 ms); the fixed costs are the import (~5-10 s per script),
# CUDA's start (~2-5 s), torch.compile (~10-30 s per compiled function, the first time) and filling 10^6-row
# buffers (~5 s).
#   sampler          300 repeats x 12 rows of < 5 ms, + 10^6-row buffers and 2 compiles        ~60 s  (limit 90)
#   learned dist.    16 learners x 10 repeats x 20 updates x ~5-15 ms (CPU: 6-34 ms), + 3-6
#                    compiles and 100,000-row buffers                                          ~90 s  (limit 110)
#   d_q refresh      5 BCQ learners x 5 repeats x 10 updates x ~5-30 ms (CPU: 6-45 ms), the
#                    floor's value passes, 100,000-row buffers                                 ~20 s  (limit 30)
#   batched          4 algorithms x 44 blocks of 15 separate + 1 batched update (CPU: 0.2-3.3 s
#                    per 15 separate updates; GPU ~0.1-0.3 s), + building 30 learners each     ~45 s  (limit 75)
#   update           5 algorithms x 2 x 210 updates (CPU: 5-74 ms), parts, N = 1..6 agents     ~50 s  (limit 65)
#   lockstep         per algorithm 1 repeat: 5 runs separate + 5 in lockstep of 300 offline +
#                    2 x 200 updates and 2 x 200 env steps (CPU: 57 s TD3+BC, 66 s BCQ), + the
#                    5 datasets                                                                ~50 s each (limit 65 each)
#   envs             VMAS (5 tasks x 1/64/4096 envs), PettingZoo, navigation, MaMuJoCo (CPU,
#                    ~20 s), navigation and VMAS builds (CPU: ~12 s)                           ~45 s  (limit 60)
#   bremen           2000 BC steps, 5 x 50 updates (CPU: ~15 ms per model step, ~0.7 s per
#                    policy step), + a TD3+BC update per model step of the first five            ~20 s  (limit 30)
# Sum of the estimates ~7 minutes; sum of the limits 590 s (+10 s grace each), so even hangs end inside 10
# minutes. If the first run shows a step far from its estimate, change its arguments below and run again.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$PWD

QUICK=${GPU_SH_QUICK:-0}
DEVICE=""
OUTDIR=""
while (($#)); do
    case "$1" in
        --quick) QUICK=1 ;;
        --device) DEVICE=${2:?--device needs a value}; shift ;;
        --device=*) DEVICE=${1#--device=} ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        -*) echo "gpu.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) OUTDIR=$1 ;;
    esac
    shift
done
if [[ -z $DEVICE ]]; then
    if [[ $QUICK == 1 ]]; then DEVICE=cpu; else DEVICE=cuda; fi
fi
OUTDIR=${OUTDIR:-${OUT:-benchmarks/gpu-out}}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)

if [[ -n ${PYTHON:-} ]]; then
    PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then
    PY=$REPO/.venv/bin/python
else
    PY=$(command -v python3)
fi
SCALE=${TIMEOUT_SCALE:-1}
if [[ -z ${TIMEOUT_SCALE:-} && $QUICK == 0 && $DEVICE == cpu ]]; then SCALE=4; fi

WHEELS=${WHEELS:-.whl}
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    SITE=$(mktemp -d /tmp/gpu-sh-site.XXXXXX)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}  # torchrl_otc importable without installing it
export PYTHONUNBUFFERED=1 RL_LOGGING_LEVEL=WARNING  # torchrl logs to stdout: keep the tables clean
export MUJOCO_GL=${MUJOCO_GL:-egl}

MACHINE=$OUTDIR/machine.txt
LOG=$OUTDIR/stderr.log
: >"$LOG"
{
    echo "# gpu.sh $(date -u '+%Y-%m-%d %H:%M:%S UTC'), device $DEVICE, quick $QUICK, timeout scale $SCALE"
    echo "host $(hostname), $(nproc) CPU cores, $(uname -srm)"
    grep -m1 'model name' /proc/cpuinfo 2>/dev/null || true
    echo "commit ${COMMIT:-$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)}"
    echo "python $PY"
    echo
    echo "## nvidia-smi"
    if command -v nvidia-smi >/dev/null; then nvidia-smi 2>&1 || true; else echo "(no nvidia-smi)"; fi
    echo
    echo "## versions"
    "$PY" - <<'EOF' 2>&1 || echo "(the version check failed)"
import importlib
import platform
import sys

print("python", sys.version.split()[0], platform.platform())
try:
    import torch

    print("torch", torch.__version__, "| CUDA (build)", torch.version.cuda, "| cuda available",
          torch.cuda.is_available())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        print("device", torch.cuda.get_device_name(0), "|", p.multi_processor_count, "SMs |",
              round(p.total_memory / 2**30, 1), "GiB | capability", f"{p.major}.{p.minor}")
    print("torch threads", torch.get_num_threads())
except Exception as e:  # noqa: BLE001
    print("torch: import failed:", e)
for name in ("tensordict", "torchrl", "torchrl_otc", "vmas", "mpe2", "gymnasium", "mujoco", "triton"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "(no __version__)"))
    except Exception as e:  # noqa: BLE001
        print(name, "not importable:", type(e).__name__, e)
EOF
    echo
    echo "## benchmarks"
    echo
    echo "| benchmark | status | seconds | command |"
    echo "|---|---|---|---|"
} >"$MACHINE" 2>&1

FAILED=0
# run NAME TIMEOUT_S OUTPUT_FILE ARGS...: one benchmark, its stdout appended to OUTPUT_FILE, under a timeout.
run() {
    local name=$1 limit=$2 file=$3
    shift 3
    limit=$(awk -v l="$limit" -v s="$SCALE" 'BEGIN { printf "%d", l * s }')
    local start rc=0
    start=$(date +%s)
    echo "== $name: $*" >>"$LOG"
    echo "== $name" >>"$OUTDIR/$file"
    echo "[gpu.sh] $name (limit ${limit}s): $*"
    timeout -k 10 "$limit" "$PY" "$@" >>"$OUTDIR/$file" 2>>"$LOG" || rc=$?
    local took=$(($(date +%s) - start))
    local status=ok
    if ((rc == 124 || rc == 137)); then
        status="TIMED OUT after ${limit}s"
    elif ((rc != 0)); then
        status="FAILED (exit $rc; see stderr.log)"
    fi
    ((rc == 0)) || FAILED=$((FAILED + 1))
    echo "| $name | $status | ${took}s | $* |" >>"$MACHINE"
    echo "[gpu.sh] $name: $status, ${took}s"
    echo >>"$OUTDIR/$file"
}

D=(--device "$DEVICE")
for f in sampler learned_distances batched update lockstep envs; do : >"$OUTDIR/$f.md"; done
T0=$(date +%s)
if [[ $QUICK == 1 ]]; then
    # minimal repeats and sizes: checks that every step runs, not what it measures
    run sampler 90 sampler.md benchmarks/bench_sampler.py "${D[@]}" --rows 20000 --online 2500 --repeats 3
    run learned_distances 120 learned_distances.md benchmarks/bench_learned_distances.py "${D[@]}" \
        --only cost --repeats 1 --block 2 --offline 5000 --online 2500
    run dq_refresh 60 learned_distances.md benchmarks/bench_dq_refresh.py "${D[@]}" \
        --only cost,floor --repeats 1 --block 2 --offline 5000 --online 2500
    run batched 75 batched.md benchmarks/bench_batched.py "${D[@]}" --repeats 1 --block 2 --seeds 1 --agents 2
    run update 75 update.md benchmarks/bench_update.py "${D[@]}" --repeats 1 --block 2 --agents 1,2
    run bremen 30 update.md benchmarks/bench_bremen.py "${D[@]}" --repeats 1
    for algo in td3bc bcq; do
        run "lockstep $algo" 65 lockstep.md benchmarks/bench_lockstep.py "${D[@]}" --algo "$algo" \
            --seeds 2 --repeats 1 --offline-updates 20 --deployments 1 --steps 20 --updates 20 \
            --dataset-size 1000
    done
    run envs 60 envs.md benchmarks/bench_envs.py "${D[@]}" --quick --only envs,sim-builds
else
    # the figures of issue 14 first: OTC's cost against uniform sampling, then batched learners
    run sampler 90 sampler.md benchmarks/bench_sampler.py "${D[@]}" --repeats 300
    run learned_distances 110 learned_distances.md benchmarks/bench_learned_distances.py "${D[@]}" \
        --only cost --repeats 10 --block 20
    run dq_refresh 30 learned_distances.md benchmarks/bench_dq_refresh.py "${D[@]}" \
        --only cost,floor --repeats 5 --block 10
    run batched 75 batched.md benchmarks/bench_batched.py "${D[@]}" --repeats 10 --block 4
    run update 65 update.md benchmarks/bench_update.py "${D[@]}" --repeats 20 --block 10
    run bremen 30 update.md benchmarks/bench_bremen.py "${D[@]}" --repeats 3
    for algo in td3bc bcq; do
        run "lockstep $algo" 65 lockstep.md benchmarks/bench_lockstep.py "${D[@]}" --algo "$algo" --repeats 1
    done
    run envs 60 envs.md benchmarks/bench_envs.py "${D[@]}" --only envs,sim-builds
fi
echo "total $(($(date +%s) - T0))s, $FAILED benchmark(s) failed or timed out" | tee -a "$MACHINE"
echo "[gpu.sh] wrote $OUTDIR: $(cd "$OUTDIR" && ls | tr '\n' ' ')"
exit $((FAILED > 0))
