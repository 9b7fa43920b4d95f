#!/usr/bin/env bash
# RelGAN's paper-scale runs on one GPU, all at once, each stopped at one wall-clock deadline
# (SIGTERM: the run finishes its step and saves a checkpoint). Used on an H200 in session 11
# (figures in recipes/README.md; session 8's version of this script, which sized each job from
# a smoke stage, is in git history before that). Runs from the repository root:
#   GPU_DIR=gpu RUN_S=500 bash docs/bench/relgan_gpu.sh
# GPU_DIR holds what ../shared would give: oracle/seqgan_oracle_lstm.npz and coco/{train,test}.txt.
# Jobs (JOBS="gs sf mle rc coco" by default), the recipes as they are except for the lengths:
#   gs    oracle_seqgan.yaml (SeqGAN's oracle file, RelGAN's code's RMC): MLE 1,500 steps, then
#         RelGAN with Gumbel-Softmax towards the paper's 3,000 iterations
#   sf    the same with train.estimator=score_function
#   mle   the same MLE run continued alone (no adversarial phase) for the same wall time
#   rc    gs on RelGAN's code's own oracle (data.oracle=relgan_code)
#   coco  coco.yaml: MLE 1,500 steps, then RelGAN(100) (words split as RelGAN's code does since
#         session 12; session 11 ran it on whitespace words)
# and, by name only: gs1 / rc1 = gs / rc at beta_max 1 (beta constant: the setting RelGAN's author
# gives for the paper's length-20 table, weilinie/RelGAN#22), mlerc = mle on RelGAN's code's oracle,
# cocows = coco on whitespace words (session 11's job), cocofix = coco with data.fixed_length=true
# (RelGAN's code's <pad>-filled sentences: does the <eos> + forced-<pad> form collapse faster?),
# cocoinit = cocofix's adversarial phase alone from the MLE checkpoint INIT (default $GPU_DIR/init:
# a checkpoint directory, e.g. the 150-epoch start runs/coco150/checkpoints/step_23400 of
# session 17), the recipe's 2,000 iterations, evaluated every 50.
# Fails fast: a job that dies in its first FAIL_S seconds stops them all (exit 1, its log shown).
# Other settings: EXTRA="key=value ..." added to every job (a tiny model to try it on a CPU),
# PY, OUT (what comes back: runs.tgz and the final generators, split). A package the GPU machine lacks
# (datasets there) goes on PYTHONPATH, which is kept.
set -u
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-3}
G=${GPU_DIR:-gpu}
RUN_S=${RUN_S:-470}
FAIL_S=${FAIL_S:-60}
OUT=${OUT:-runs/gpu-out}
PY=${PY:-python3}
JOBS=${JOBS:-gs sf mle rc coco}
mkdir -p "$OUT" runs
exec > >(tee -a "$OUT/log.txt") 2>&1
nvidia-smi -L 2>/dev/null
$PY -c "import torch, accelerate, transformers, sacrebleu; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'accelerate', accelerate.__version__)"

ORACLE="recipes/relgan/oracle_seqgan.yaml data.params=$G/oracle/seqgan_oracle_lstm.npz"
CODE_ORACLE="recipes/relgan/oracle_seqgan.yaml data.params=null data.oracle=relgan_code"
NOCKPT="pretrain.checkpoint_every=100000 train.checkpoint_every=100000"
args_of() {
  case $1 in
    gs) echo "$ORACLE pretrain.steps=1500 eval.every=100" ;;
    sf) echo "$ORACLE pretrain.steps=1500 eval.every=100 train.estimator=score_function" ;;
    mle) echo "$ORACLE pretrain.steps=100000 train.adv_steps=0 eval.every=1000" ;;
    rc) echo "$CODE_ORACLE pretrain.steps=1500 eval.every=100" ;;
    coco) echo "recipes/relgan/coco.yaml data.path=$G/coco pretrain.steps=1500 eval.every=250" ;;
    gs1) echo "$ORACLE pretrain.steps=1500 eval.every=100 sampler.beta_max=1" ;;
    rc1) echo "$CODE_ORACLE pretrain.steps=1500 eval.every=100 sampler.beta_max=1" ;;
    mlerc) echo "$CODE_ORACLE pretrain.steps=100000 train.adv_steps=0 eval.every=500" ;;
    cocows) echo "$(args_of coco) data.word_split=whitespace data.max_len=36" ;;
    cocofix) echo "$(args_of coco) data.fixed_length=true" ;;
    cocoinit) echo "recipes/relgan/coco.yaml data.path=$G/coco data.fixed_length=true generator.init_from=${INIT:-$G/init} pretrain.steps=0 eval.every=50" ;;
    *) echo "unknown job $1" >&2; exit 2 ;;
  esac
}

t0=$(date +%s)
declare -A PID
for j in $JOBS; do
  # shellcheck disable=SC2046
  timeout -s TERM -k 60 "$RUN_S" $PY -m textgan train $(args_of "$j") $NOCKPT ${EXTRA:-} \
    output_dir=runs/gpu-$j overwrite=true > "runs/gpu-$j.log" 2>&1 &
  PID[$j]=$!
done
echo "== started $JOBS at $(date +%T), deadline $RUN_S s"

failed() {  # a job that exited with an error (timeout's 124 is the deadline, not an error)
  local j=$1
  if kill -0 "${PID[$j]}" 2>/dev/null; then return 1; fi
  wait "${PID[$j]}"; local rc=$?
  [ "$rc" != 0 ] && [ "$rc" != 124 ]
}
while [ $(( $(date +%s) - t0 )) -lt "$FAIL_S" ]; do
  sleep 5
  for j in $JOBS; do
    if failed "$j"; then
      echo "!! $j failed after $(( $(date +%s) - t0 )) s:"; tail -40 "runs/gpu-$j.log"
      kill -TERM "${PID[@]}" 2>/dev/null; sleep 5; kill -KILL "${PID[@]}" 2>/dev/null
      tar czf "$OUT/runs.tgz" runs/gpu-*.log 2>/dev/null
      exit 1
    fi
  done
done
echo "== all alive after $FAIL_S s"
wait "${PID[@]}"
echo "== done $(date +%T), $(( $(date +%s) - t0 )) s"

for j in $JOBS; do
  echo "-- $j"
  $PY - "runs/gpu-$j" <<'EOF'
import json, sys
rs = [json.loads(line) for line in open(f"{sys.argv[1]}/metrics.jsonl")]
keys = ("nll_oracle", "nll_test", "bleu2", "bleu3", "bleu4", "bleu5", "nll_gen")
for r in rs:
    if any(k in r for k in keys):
        print(r["phase"], r["step"], " ".join(f"{k}={r[k]:.4f}" for k in keys if k in r))
for phase in ("pretrain", "adversarial"):  # median over log intervals: evaluations left out
    t = [(r["step"], r["time"]) for r in rs
         if r["phase"] == phase and ("nll_train" in r or "g_loss" in r)]
    rates = sorted((tb - ta) / (b - a) for (a, ta), (b, tb) in zip(t, t[1:]) if b > a)
    if rates:
        print(f"{phase}: steps {t[0][0]}-{t[-1][0]}, median {rates[len(rates) // 2]:.4f} s/step")
EOF
  tail -2 "runs/gpu-$j.log"
done
# the last checkpoint's generator of each oracle job, to evaluate elsewhere
for j in gs sf rc gs1 rc1; do
  c=$(ls -d runs/gpu-$j/checkpoints/step_* 2>/dev/null | sort -t_ -k2 -n | tail -1)
  # in 15 MB pieces: what comes back from the GPU machine is at most 16 MiB a file, 8 files
  # (rejoin with cat gen-gs-step_N.safetensors.* > model.safetensors)
  [ -n "$c" ] && split -b 15000000 -d "$c/model.safetensors" "$OUT/gen-$j-$(basename "$c").safetensors."
done
tar czf "$OUT/runs.tgz" runs/gpu-*.log runs/gpu-*/metrics.jsonl runs/gpu-*/config.yaml \
  $(ls -d runs/gpu-*/samples 2>/dev/null)
ls -la "$OUT"
