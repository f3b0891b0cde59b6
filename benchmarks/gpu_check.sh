#!/usr/bin/env bash
# The GPU check: set-up, device report, CUDA tests, throughput, DDP stop/resume and data loader,
# each step time-boxed, every result written as it finishes. See docs/benchmarks.md.
#
#   bash benchmarks/gpu_check.sh                      # on one CUDA GPU, <= 8 minutes from a fresh clone
#   bash benchmarks/gpu_check.sh --out DIR            # results in DIR (default gpu_check/<time>)
#   bash benchmarks/gpu_check.sh --cpu-smoke --out DIR  # every step at tiny sizes on the CPU
#   bash benchmarks/gpu_check.sh --budget 420         # whole-run limit in seconds (default 480; smoke 1500)
#
# DIR gets <step>.json per step (status ok / partial / timeout / fail / skipped), <step>.log,
# and summary.md. The exit status is 0 when every step is ok, 1 otherwise.
set -u
cd "$(dirname "$0")/.." || exit 2
SMOKE=0
OUT=""
BUDGET=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-smoke) SMOKE=1 ;;
    --out) OUT="$2"; shift ;;
    --out=*) OUT="${1#--out=}" ;;
    --budget) BUDGET="$2"; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$OUT" ] || OUT="gpu_check/$(date +%Y%m%d-%H%M%S)"
# the smoke's limits are generous: on a CPU shared with other jobs it can take several times its ~2 minutes
[ -n "$BUDGET" ] || { [ "$SMOKE" = 1 ] && BUDGET=1500 || BUDGET=480; }
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
say() { echo "[gpu_check $(elapsed)s] $*"; }

# ------------------------------------------------------------------ python with gaheads
usable() { [ -n "$1" ] && command -v "$1" >/dev/null 2>&1 && "$1" -c "import gaheads, torch, timm, pytest" >/dev/null 2>&1; }
PY=""
for cand in "${GAHEADS_PYTHON:-}" .venv/bin/python; do
  if usable "$cand"; then PY="$cand"; break; fi
done
if [ -z "$PY" ]; then
  say "gaheads is not importable: creating .venv (reusing the system's torch if it has one) and installing"
  (
    set -e
    [ -x .venv/bin/python ] || python3 -m venv --system-site-packages .venv
    timeout 300 .venv/bin/python -m pip install --disable-pip-version-check --timeout 20 --retries 1 \
      -e '.[demo,export,dev]'
  ) >"$OUT/setup.log" 2>&1
  if usable .venv/bin/python; then
    PY=.venv/bin/python
  else
    say "INSTALL FAILED: pip install -e '.[demo,export,dev]' did not give an importable gaheads (log: $OUT/setup.log)"
    tail -5 "$OUT/setup.log" | sed 's/^/    /'
    if [ -x .venv/bin/python ] && timeout 120 .venv/bin/python -m pip install --disable-pip-version-check \
         --no-deps --no-build-isolation --no-index -e . >>"$OUT/setup.log" 2>&1 && usable .venv/bin/python; then
      PY=.venv/bin/python
      say "installed gaheads alone (--no-deps, offline) over the packages already there"
    elif PYTHONPATH="$PWD/src" python3 -c "import gaheads, torch, timm, pytest" >/dev/null 2>&1; then
      export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
      PY=python3
      say "running from src/ with the system python3 (PYTHONPATH=src)"
    else
      say "no python with torch, timm and pytest found; nothing can run"
      exit 2
    fi
  fi
fi
say "python: $PY"

# ------------------------------------------------------------------ steps
FAILED=0
# run_step NAME LIMIT_S RESULT_FILE_OR_- COMMAND...: time-boxed, log in $OUT/NAME.log, record in $OUT/NAME.json
run_step() {
  local name="$1" limit="$2" result="$3"; shift 3
  local left=$(( BUDGET - $(elapsed) - 5 ))
  [ "$limit" -gt "$left" ] && limit="$left"
  if [ "$limit" -lt 10 ]; then
    say "skip $name: the time budget (${BUDGET}s) is spent"
    "$PY" benchmarks/gpu_report.py step "$name" --out "$OUT" --rc 0 --seconds 0 --skipped --note "budget spent"
    FAILED=1
    return
  fi
  say "step $name (limit ${limit}s): $*"
  local t0; t0=$(date +%s)
  timeout --kill-after=20 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  local args=(--out "$OUT" --rc "$rc" --seconds $(( $(date +%s) - t0 )) --timeout "$limit")
  [ "$result" != "-" ] && args+=(--result "$result")
  "$PY" benchmarks/gpu_report.py step "$name" "${args[@]}" || FAILED=1  # exit 1 unless the step is ok
  "$PY" benchmarks/gpu_report.py summary --out "$OUT" >/dev/null
}

if [ "$SMOKE" = 1 ]; then
  DEVICE=cpu
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
  # tiny CCTs in float32; the compiled run takes one pair and the eager backend (dynamo capture only;
  # tests/test_compile.py covers AOT autograd and inductor)
  TP_PAIRS=(ga2_cct_2_3x2_32:cct_2_3x2_32 seqattn2_cct_2_3x2_32:cct_2_3x2_32)
  COMPILED_PAIRS=(ga2_cct_2_3x2_32:cct_2_3x2_32)
  TP_FLAGS=(--device cpu --channels-last --batch-size 4 --warmup 1 --repeats 2 --steps 1)
  COMPILE_FLAGS=(--compile-backend eager)
  SMOKE_FLAG=(--smoke)
  LIMITS=(90 150 200 600 200 300)
else
  DEVICE=cuda
  TP_PAIRS=(ga_convnext_tiny:convnext_tiny seqattn8_cct_7_3x1_32:cct_7_3x1_32 ga8_cct_7_3x1_32:cct_7_3x1_32
            ga_vit_small:vit_small_patch16_224 ga_resnet50:resnet50)
  COMPILED_PAIRS=("${TP_PAIRS[@]}")
  TP_FLAGS=(--device cuda --amp --channels-last --warmup 5 --repeats 5 --steps 10)
  COMPILE_FLAGS=(--compile)
  SMOKE_FLAG=()
  LIMITS=(60 100 100 100 60 400)  # the compiled run gets what is left of the budget
fi

# env: device, driver, versions
cat >"$OUT/env.py" <<'PYEOF'
import json, platform, subprocess, sys
import torch, timm, gaheads
info = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "timm": timm.__version__, "gaheads": gaheads.__version__, "cuda_available": torch.cuda.is_available(),
        "cpu_threads": torch.get_num_threads()}
try:
    info["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
except OSError:
    pass
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(device=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                device_count=torch.cuda.device_count(), bf16=torch.cuda.is_bf16_supported(),
                nccl=".".join(map(str, torch.cuda.nccl.version())))
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
        info["driver"] = q.stdout.strip().splitlines()[0] if q.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, IndexError):
        info["driver"] = None
else:
    info["device"] = "cpu"
want_cuda = sys.argv[1] == "cuda"
info["status"] = "ok" if torch.cuda.is_available() == want_cuda else "fail"
if info["status"] == "fail":
    info["error"] = "no CUDA device is visible to torch" if want_cuda else "unexpected"
json.dump(info, open(sys.argv[2], "w"), indent=1)
for k, v in info.items():
    print(f"{k}: {v}")
PYEOF
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi 2>&1 | head -15
run_step env "${LIMITS[0]}" "$OUT/env.result.json" "$PY" "$OUT/env.py" "$DEVICE" "$OUT/env.result.json"
cat "$OUT/env.log"
if [ "$DEVICE" = cuda ] && ! "$PY" -c "import json, sys; sys.exit(json.load(open(sys.argv[1]))['status'] != 'ok')" \
     "$OUT/env.json"; then
  say "the env step did not confirm a CUDA device (see $OUT/env.log): the GPU steps would only fail. Stopping" \
      "(the CPU path is --cpu-smoke)."
  "$PY" benchmarks/gpu_report.py summary --out "$OUT"
  exit 1
fi

run_step cuda_tests "${LIMITS[1]}" "$OUT/cuda_tests.xml" \
  "$PY" -m pytest -m cuda tests/test_cuda.py -q -rs -p no:cacheprovider --junitxml="$OUT/cuda_tests.xml"

run_step throughput_eager "${LIMITS[2]}" "$OUT/throughput_eager.result.json" \
  "$PY" benchmarks/throughput.py --models "${TP_PAIRS[@]}" "${TP_FLAGS[@]}" \
  --json "$OUT/throughput_eager.result.json" --markdown "$OUT/throughput_eager.md"

run_step ddp_resume "${LIMITS[3]}" "$OUT/ddp/result.json" \
  "$PY" benchmarks/gpu_ddp.py drive --out "$OUT/ddp" ${SMOKE_FLAG[@]+"${SMOKE_FLAG[@]}"}

run_step loader "${LIMITS[4]}" "$OUT/loader/result.json" \
  "$PY" benchmarks/gpu_loader.py --out "$OUT/loader" ${SMOKE_FLAG[@]+"${SMOKE_FLAG[@]}"}

# last: compiling nine models is the slowest step; the groups finished before the limit are kept
run_step throughput_compiled "${LIMITS[5]}" "$OUT/throughput_compiled.result.json" \
  "$PY" benchmarks/throughput.py --models "${COMPILED_PAIRS[@]}" "${TP_FLAGS[@]}" "${COMPILE_FLAGS[@]}" \
  --json "$OUT/throughput_compiled.result.json" --markdown "$OUT/throughput_compiled.md"

"$PY" benchmarks/gpu_report.py summary --out "$OUT"
say "done in $(elapsed)s; results: $OUT/summary.md"
cat "$OUT/summary.md"
exit "$FAILED"
