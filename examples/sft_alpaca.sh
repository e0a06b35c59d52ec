#!/usr/bin/env bash
# Instruction tuning, measured honestly: a small decoder pretrained on English prose, then
# fine-tuned on the Alpaca demo set in the run's chat template, against the same architecture
# fine-tuned from scratch with everything else equal. docs/recipes.md quotes what this printed.
#
#   bash examples/sft_alpaca.sh            # about 25 minutes on a 2-core CPU
#
# Pretraining text (all from ../shared/data): Wikipedia articles, C4 pages, TinyStories and the
# US inaugural and State of the Union addresses. The Alpaca answers are left out of pretraining:
# the fine-tuned model must learn the format from the SFT data alone.
set -euo pipefail
cd "$(dirname "$0")/.."
LM=${LM:-.venv/bin/lmforge}
SHARED=${SHARED:-../shared/data}
RUN=${RUN:-runs/sft}
ALPACA="$SHARED/instructions/alpaca_en_demo.json"

if [[ ! -f "$RUN/pretrain/checkpoints/index.json" ]]; then
    rm -rf "$RUN"
    $LM data prepare "$SHARED/wikipedia-sample/wiki_demo.txt" "$SHARED/web-text/c4_demo.jsonl" \
        "$SHARED/tinystories/tinystories_validation_export.txt" \
        "$SHARED/public-domain-prose/inaugural.zip" "$SHARED/public-domain-prose/state_union.zip" \
        --out "$RUN/data" --no-progress
    $LM tokenizer train "$RUN/data" --kind bpe --vocab-size 4096 --out "$RUN/tokenizer" --no-progress
    $LM tokenizer encode "$RUN/data" --tokenizer "$RUN/tokenizer" --out "$RUN/tokens" --no-progress
    $LM train --recipe recipes/sft-pretrain.toml --out "$RUN/pretrain" \
        --data.tokens "$RUN/tokens" --no-progress
fi

# --init scratch gives the same architecture freshly initialised (the baseline).
for init in pretrained scratch; do
    $LM finetune sft --from "$RUN/pretrain" --init "$init" --data "$ALPACA" \
        --max-len 512 --epochs 3 --batch-size 8 --lr 3e-4 --samples 4 --seed 0 \
        --out "$RUN/alpaca-$init" --no-progress
done
for init in pretrained scratch; do
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[1], \
json.dumps({k: v for k, v in r.items() if k != 'samples'}, indent=1)); \
[print('---', s['prompt'] if 'prompt' in s else s, '\n>>>', s.get('answer', '')) for s in r.get('samples', [])]" \
        "$RUN/alpaca-$init/eval.json"
done
