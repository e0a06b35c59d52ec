#!/usr/bin/env bash
# Seq2seq fine-tuning, measured honestly (docs/recipes.md quotes what this printed):
#  1. transfer: a Multi30k English->German model (10 minutes of training) fine-tuned on 2,000
#     English->French pairs, against the same architecture trained from scratch on those 2,000
#     pairs with a vocabulary of its own; both decoded with beam 4 on test_2016_flickr;
#  2. summarization: DialogSum dialogues -> summaries from scratch, against the lead baseline
#     (the dialogue's first sentences), ROUGE against the test set's three references.
#
#   bash examples/seq2seq_finetune.sh            # about 30 minutes on a 2-core CPU
set -euo pipefail
cd "$(dirname "$0")/.."
LM=${LM:-.venv/bin/lmforge}
PY=${PY:-.venv/bin/python}
SHARED=${SHARED:-../shared/data}
RUN=${RUN:-runs/seq2seq}
M30K="$SHARED/translation/multi30k"
DSUM="$SHARED/summarization/dialogsum"
mkdir -p "$RUN"

# Line-aligned .gz files -> JSONL {source, target}; optionally only the first N lines.
to_jsonl() {  # src.gz tgt.gz out.jsonl [N]
    $PY - "$@" <<'PY'
import gzip, json, sys
src, tgt, out = sys.argv[1:4]
limit = int(sys.argv[4]) if len(sys.argv) > 4 else None
with gzip.open(src, "rt", encoding="utf-8") as s, gzip.open(tgt, "rt", encoding="utf-8") as t, \
        open(out, "w", encoding="utf-8") as o:
    for i, (a, b) in enumerate(zip(s, t)):
        if limit is not None and i >= limit:
            break
        o.write(json.dumps({"source": a.strip(), "target": b.strip()}, ensure_ascii=False) + "\n")
PY
}

if [[ ! -f "$RUN/en-de/checkpoints/index.json" ]]; then
    rm -rf "$RUN/en-de"
    $LM data pairs --kind bpe --vocab-size 8000 --max-len 64 --out "$RUN/en-de/pairs" \
        --train-src "$M30K/train.en.gz" --train-tgt "$M30K/train.de.gz" \
        --val-src "$M30K/val.en.gz" --val-tgt "$M30K/val.de.gz" --no-progress
    # A step budget (about 10 minutes here) keeps the base independent of machine load.
    $LM train --recipe recipes/translate-multi30k.toml --out "$RUN/en-de" \
        --train.max_time_s 0 --train.max_steps 1200 --no-progress
fi

to_jsonl "$M30K/train.en.gz" "$M30K/train.fr.gz" "$RUN/en-fr.train.jsonl" 2000
to_jsonl "$M30K/val.en.gz" "$M30K/val.fr.gz" "$RUN/en-fr.val.jsonl"
to_jsonl "$M30K/test_2016_flickr.en.gz" "$M30K/test_2016_flickr.fr.gz" "$RUN/en-fr.test.jsonl"
FR=(--train "$RUN/en-fr.train.jsonl" --val "$RUN/en-fr.val.jsonl" --test "$RUN/en-fr.test.jsonl"
    --epochs 15 --batch-size 32 --lr 5e-4 --beam 4 --no-progress)
rm -rf "$RUN/en-fr-pretrained" "$RUN/en-fr-scratch" "$RUN/dialogsum"
$LM finetune seq2seq --from "$RUN/en-de" "${FR[@]}" --out "$RUN/en-fr-pretrained"
$LM finetune seq2seq --init scratch --model recipes/translate-multi30k.toml --vocab-size 4000 \
    "${FR[@]}" --out "$RUN/en-fr-scratch"

$LM finetune seq2seq --init scratch --model recipes/translate-multi30k.toml \
    --train "$DSUM/dialogsum.dev.jsonl" --test "$DSUM/dialogsum.test.jsonl" \
    --source-field dialogue --target-field summary \
    --test-target-field summary1,summary2,summary3 --max-len 384 --vocab-size 4000 \
    --epochs 20 --batch-size 16 --lr 5e-4 --beam 4 --lead-baseline 2 --no-progress \
    --out "$RUN/dialogsum"

for r in en-fr-pretrained en-fr-scratch dialogsum; do
    echo "== $r"; cat "$RUN/$r/report.md"
done
