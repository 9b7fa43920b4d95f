#!/usr/bin/env bash
# RelGAN's paper-scale runs on one GPU, sized to a fixed wall-clock budget (used on an H200 in
# session 8; figures in recipes/README.md). Runs from the repository root:
#   GPU_DIR=gpu MAIN_S=400 bash docs/bench/relgan_gpu.sh
# GPU_DIR holds what ../shared and runs/ would give: oracle/seqgan_oracle_lstm.npz, coco/{train,test}.txt
# and init/ (model.safetensors + trainer_state.pt of the RMC's MLE run on the official oracle).
# Stage 1 (smoke): the same jobs, tiny, all at once -> seconds per step under the same contention;
# stops here on any failure. Stage 2: the jobs at once, each sized to MAIN_S from those rates:
#   A  oracle_seqgan.yaml, Gumbel-Softmax, from init/ (paper: 3,000 adversarial iterations)
#   B  the same with train.estimator=score_function
#   C  coco.yaml: MLE pre-training then RelGAN(100) (recipe: 3,000 + 2,000 steps)
#   D1/D2  MLE alone continued from init/ (fresh Adam, lr 1e-2 and 1e-3) for the same wall time
# Other settings: SOLO=0 skips timing A alone first; SMOKE_ONLY=1 stops after stage 1; EXTRA=
# "key=value ..." is added to every job (e.g. a tiny model to try the script on a CPU); PY, OUT.
# The recipes follow RelGAN's code: beta on the exp schedule over N = 5000 steps whatever the
# length (EXTRA=sampler.schedule_steps=null: over each job's length, as in session 8), and the
# RMC as RelGAN's code computes it (EXTRA=generator.variant=paper: the paper's equations, as in
# session 8; init/ must be a checkpoint of the same variant).
# A package the GPU machine lacks (datasets there) goes on PYTHONPATH, which is kept.
set -u
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-3}
G=${GPU_DIR:-gpu}
MAIN_S=${MAIN_S:-400}
OUT=${OUT:-runs/gpu-out}
PY=${PY:-python3}
mkdir -p "$OUT" runs
LOG=$OUT/log.txt
exec > >(tee -a "$LOG") 2>&1
nvidia-smi -L 2>/dev/null
$PY -c "import torch, accelerate, transformers, sacrebleu; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'accelerate', accelerate.__version__)"

ORACLE="recipes/relgan/oracle_seqgan.yaml data.params=$G/oracle/seqgan_oracle_lstm.npz"
COCO="recipes/relgan/coco.yaml data.path=$G/coco"
INIT="generator.init_from=$G/init pretrain.steps=0"

train() {  # name, seconds, args...: one background job with its own log
  local name=$1 secs=$2; shift 2
  timeout -s TERM -k 30 "$secs" $PY -m textgan train "$@" ${EXTRA:-} output_dir=runs/$name \
    > runs/$name.log 2>&1 &
  PIDS+=($!)
}
PIDS=()
waitall() { wait "${PIDS[@]}"; PIDS=(); }  # not plain `wait`: it would wait for tee too

rate() {  # run, phase, from-step, to-step -> seconds per step from metrics.jsonl timestamps
  $PY - "$@" <<'EOF'
import json, sys
run, phase, a, b = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
t = {}
for line in open(f"runs/{run}/metrics.jsonl"):
    r = json.loads(line)
    if r["phase"] == phase and "time" in r and r["step"] in (a, b) and r["step"] not in t:
        t[r["step"]] = r["time"]
print(f"{(t[b] - t[a]) / (b - a):.5f}")
EOF
}

eval_s() {  # run, phase, step -> seconds between the step's log record and its eval record
  $PY - "$@" <<'EOF'
import json, sys
run, phase, step = sys.argv[1], sys.argv[2], int(sys.argv[3])
rs = [json.loads(line) for line in open(f"runs/{run}/metrics.jsonl")]
t = [r["time"] for r in rs if r["phase"] == phase and r["step"] == step]
print(f"{t[-1] - t[0]:.2f}")
EOF
}

echo "== stage 1: smoke $(date +%T)"
t0=$(date +%s)
ok=1
smoke_runs="s-a s-b s-c s-d1 s-d2"
if [ "${SOLO:-1}" = 1 ]; then  # A alone first: seconds per iteration without contention
  train s-a-solo 300 $ORACLE $INIT train.adv_steps=60 train.log_every=10 eval.every=60 eval.num_samples=200
  waitall
  [ -s runs/s-a-solo/metrics.jsonl ] || ok=0
  smoke_runs="s-a-solo $smoke_runs"
fi
if [ $ok = 1 ]; then
  train s-a 300 $ORACLE $INIT train.adv_steps=40 train.log_every=10 eval.every=40 eval.num_samples=200
  train s-b 300 $ORACLE $INIT train.adv_steps=40 train.log_every=10 eval.every=40 eval.num_samples=200 train.estimator=score_function
  train s-c 300 $COCO pretrain.steps=100 pretrain.log_every=20 train.adv_steps=40 train.log_every=10 eval.every=100 eval.num_samples=1000
  train s-d1 300 $ORACLE $INIT pretrain.steps=300 pretrain.log_every=50 train.adv_steps=0 eval.every=300 eval.num_samples=200
  train s-d2 300 $ORACLE $INIT pretrain.steps=300 pretrain.log_every=50 pretrain.lr=1e-3 train.adv_steps=0 eval.every=300 eval.num_samples=200
  waitall
fi
for r in $smoke_runs; do
  if ! grep -q '"phase"' runs/$r/metrics.jsonl 2>/dev/null || grep -q Traceback runs/$r.log; then
    ok=0; echo "!! $r failed:"; tail -30 runs/$r.log
  fi
done
echo "smoke took $(( $(date +%s) - t0 )) s"
if [ $ok = 0 ]; then tar czf "$OUT/runs.tgz" runs/s-*.log runs/s-*/metrics.jsonl 2>/dev/null; exit 1; fi
cat runs/s-c.log | grep -E "^\[|bleu" | tail -5
solo=-; [ "${SOLO:-1}" = 1 ] && solo=$(rate s-a-solo adversarial 10 60)
ta=$(rate s-a adversarial 10 40)
tb=$(rate s-b adversarial 10 40); tca=$(rate s-c adversarial 10 40)
tcp=$(rate s-c pretrain 20 80); td=$(rate s-d1 pretrain 50 250); tbleu=$(eval_s s-c pretrain 100)
echo "s/step: A alone $solo; together: A $ta B $tb C-pre $tcp C-adv $tca D $td; C's evaluation $tbleu s"
[ "${SMOKE_ONLY:-0}" = 1 ] && exit 0

echo "== stage 2: $MAIN_S s $(date +%T)"
read -r NA NB NCP NCA ND EA EB EC ED <<<"$($PY - "$MAIN_S" "$ta" "$tb" "$tcp" "$tca" "$td" "$tbleu" <<'EOF'
import sys
S, ta, tb, tcp, tca, td, tbleu = map(float, sys.argv[1:])
use = 0.85 * S - 20  # start-up, evaluations (NLL_oracle is cheap; BLEU budgeted below)
r = lambda n, k: max(k, int(n) // k * k)
na, nb = r(min(3000, use / ta), 50), r(min(3000, use / tb), 50)
f = min(1.0, (use - 5 * 1.3 * tbleu) / (3000 * tcp + 2000 * tca))  # C: 5 evaluations
ncp, nca = r(3000 * f, 100), r(2000 * f, 100)
nd = r(use / td, 500)
print(na, nb, ncp, nca, nd, r(na / 6, 50), r(nb / 6, 50), r(nca / 2, 50), r(nd / 6, 100))
EOF
)"
echo "A $NA it (eval $EA), B $NB it (eval $EB), C $NCP MLE + $NCA adv (eval $EC), D $ND MLE steps (eval $ED)"
K=$((MAIN_S + 60))
train gpu-a $K $ORACLE $INIT train.adv_steps=$NA eval.every=$EA train.checkpoint_every=$NA
train gpu-b $K $ORACLE $INIT train.adv_steps=$NB eval.every=$EB train.checkpoint_every=$NB train.estimator=score_function
train gpu-c $K $COCO pretrain.steps=$NCP pretrain.checkpoint_every=$NCP train.adv_steps=$NCA eval.every=$EC train.checkpoint_every=$NCA
train gpu-d1 $K $ORACLE $INIT pretrain.steps=$ND pretrain.checkpoint_every=$ND train.adv_steps=0 eval.every=$ED
train gpu-d2 $K $ORACLE $INIT pretrain.steps=$ND pretrain.checkpoint_every=$ND pretrain.lr=1e-3 train.adv_steps=0 eval.every=$ED
waitall
echo "== done $(date +%T), $(( $(date +%s) - t0 )) s in all"
for r in gpu-a gpu-b gpu-c gpu-d1 gpu-d2; do
  echo "-- $r"; grep -E "nll_oracle|bleu" runs/$r/metrics.jsonl | tail -12; tail -3 runs/$r.log
done
tar czf "$OUT/runs.tgz" runs/*.log runs/*/metrics.jsonl runs/*/config.yaml \
  $(ls -d runs/gpu-*/samples 2>/dev/null)
