#!/usr/bin/env bash
# Transfer learning, measured honestly: the same small decoder fine-tuned on SST-2 and SMS spam
# from a pretrained checkpoint and from scratch (the same architecture, freshly initialised),
# with everything else equal. docs/recipes.md quotes what this printed.
#
#   bash examples/transfer_classification.sh            # about 20 minutes on a 2-core CPU
#
# Pretraining text: the Pang & Lee movie-review corpus (2,000 full reviews, a different source
# from SST-2's Rotten Tomatoes snippets), Wikipedia and C4 samples, all from ../shared/data.
# rt-polarity is left out on purpose: SST-2's sentences come from it, so pretraining on it
# would put test sentences in front of the model.
set -euo pipefail
cd "$(dirname "$0")/.."
LM=${LM:-.venv/bin/lmforge}
SHARED=${SHARED:-../shared/data}
RUN=${RUN:-runs/transfer}

if [[ ! -f "$RUN/pretrain/checkpoints/index.json" ]]; then
    rm -rf "$RUN"
    $LM data prepare "$SHARED/classification/movie-reviews/movie_reviews.zip" \
        "$SHARED/wikipedia-sample/wiki_demo.txt" "$SHARED/web-text/c4_demo.jsonl" \
        --out "$RUN/data" --no-progress
    $LM tokenizer train "$RUN/data" --kind bpe --vocab-size 4096 --out "$RUN/tokenizer" --no-progress
    $LM tokenizer encode "$RUN/data" --tokenizer "$RUN/tokenizer" --out "$RUN/tokens" --no-progress
    $LM train --recipe recipes/transfer-pretrain.toml --out "$RUN/pretrain" \
        --data.tokens "$RUN/tokens" --no-progress
fi

for init in pretrained scratch; do
    $LM finetune classify --from "$RUN/pretrain" --init "$init" \
        --train "$SHARED/classification/sst2/train.tsv" --val "$SHARED/classification/sst2/dev.tsv" \
        --test "$SHARED/classification/sst2/test.tsv" --text-field sentence --label-field label \
        --max-train-examples 20000 --epochs 1 --batch-size 32 --lr 3e-4 --head-lr 1e-3 \
        --max-len 64 --out "$RUN/sst2-$init" --no-progress
    $LM finetune classify --from "$RUN/pretrain" --init "$init" \
        --train "$SHARED/classification/sms-spam/SMSSpamCollection.tsv" \
        --text-field SMS --label-field Label --test-fraction 0.2 --class-weights balanced \
        --epochs 3 --batch-size 32 --lr 3e-4 --head-lr 1e-3 --max-len 96 \
        --out "$RUN/sms-$init" --no-progress
done
for f in "$RUN"/sst2-*/eval.json "$RUN"/sms-*/eval.json; do
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); t=r['test']; \
print(f\"{sys.argv[1]}: test accuracy {t['accuracy']:.4f}, macro F1 {t['macro_f1']:.4f}, \
{r['train_examples']} train examples, {r['train_seconds']} s\")" "$f"
done
