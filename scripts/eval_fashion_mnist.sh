#!/usr/bin/env bash
# Evaluate a Fashion-MNIST pretraining run with every protocol (SPEC section 8); each writes
# RUN/eval/<protocol>/metrics.json with its evaluation card.
#
#   scripts/eval_fashion_mnist.sh RUN [LABELS]        # LABELS defaults to 1% (600 images, 60 per class)
#
# kNN and fast linear eval extract features once; the fine-tuning pair (pretrained, then the supervised
# baseline from scratch on the same label subset: same seed, same subset hash) shows the gain of pretraining.
set -euo pipefail

RUN=${1:?usage: $0 RUN [LABELS]}
LABELS=${2:-1%}
SIMCLR=${SIMCLR:-simclr}
SEED=${SEED:-0}

"$SIMCLR" knn "$RUN" --seed "$SEED"
"$SIMCLR" linear-eval "$RUN" --mode fast --seed "$SEED"
"$SIMCLR" finetune "$RUN" --labels "$LABELS" --init pretrained --seed "$SEED"
"$SIMCLR" finetune "$RUN" --labels "$LABELS" --init scratch --seed "$SEED"
