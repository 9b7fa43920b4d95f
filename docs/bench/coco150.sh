#!/usr/bin/env bash
# Session 17: RelGAN(100) on COCO from RelGAN's code's 150-epoch MLE start (recipes/README.md, last
# section), resumable: run it again after an interruption. From the repository root:
#   nohup bash docs/bench/coco150.sh > runs/chain150.out 2>&1 &
# 1. MLE to 23,400 steps in runs/coco150 (session 17 started it as a copy of session 14's
#    runs/cocofix4500; from nothing it starts at step 0), at nice 19;
# 2. then the adversarial phase from its step-23,400 checkpoint in runs/coco150-adv, 2,000
#    iterations evaluated every 50. Logs: runs/coco150.log, runs/coco150-adv.log.
set -u
COCO=${COCO:-../shared/data/coco}
while pgrep -f "output_dir=runs/coco150 " >/dev/null; do sleep 60; done  # one already running
# resume from a saved checkpoint; a run killed before its first one starts over
args() { if compgen -G "$1/checkpoints/step_*" >/dev/null; then echo resume=auto;
         elif [ -e "$1" ]; then echo overwrite=true; fi; }
if [ ! -d runs/coco150/checkpoints/step_23400 ]; then
  R=$(args runs/coco150)
  # shellcheck disable=SC2086
  nice -n 19 textgan train recipes/relgan/coco.yaml data.path="$COCO" data.fixed_length=true \
    pretrain.steps=23400 train.adv_steps=0 eval.every=1500 pretrain.checkpoint_every=500 \
    output_dir=runs/coco150 $R >> runs/coco150.log 2>&1 || exit 1
fi
R=$(args runs/coco150-adv)
# shellcheck disable=SC2086
nice -n 19 textgan train recipes/relgan/coco.yaml data.path="$COCO" data.fixed_length=true \
  generator.init_from=runs/coco150/checkpoints/step_23400 pretrain.steps=0 train.adv_steps=2000 \
  eval.every=50 train.checkpoint_every=50 output_dir=runs/coco150-adv $R >> runs/coco150-adv.log 2>&1
