"""Translating files with a trained seq2seq run, and scoring the translations with sacrebleu.

`translate_texts` encodes each line with the run's source vocabulary, decodes with greedy or
beam search (`lmforge.infer.seq2seq_decode`, batched over sentences of similar length) and
detokenizes with the target vocabulary. `score_translation` translates a source file and scores
it against a reference file with sacrebleu's corpus BLEU and chrF, on detokenized text with
sacrebleu's default 13a tokenization, and keeps the signatures so the numbers can be compared
with published ones.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from lmforge.data.document import DataError
from lmforge.data.pairs import _open_lines, read_parallel
from lmforge.eval.metrics import bleu, chrf
from lmforge.infer.load import LoadedRun

log = logging.getLogger(__name__)


def read_lines(path: str | Path) -> list[str]:
    """The lines of a text file (`.gz` read as it is), without their line ends."""
    path = Path(path)
    try:
        with _open_lines(path) as f:
            return [line.rstrip("\n") for line in f]
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not valid UTF-8 ({e})") from None


def encode_sources(
    run: LoadedRun, texts: list[str], *, on_long: str = "truncate", where: str = "input"
) -> tuple[list[list[int]], int]:
    """Source ids for each text as the model was trained on them (EOS last), cut to the
    model's length, and how many were cut; an empty text gives no ids. With on_long='error'
    a text that is too long is an error naming its line of `where`."""
    limit = run.model.config.max_seq_len - 1
    eos = run.model.config.eos_id
    ids = run.tokenizer.encode_batch([t.strip() for t in texts])
    cut = 0
    for i, seq in enumerate(ids):
        if len(seq) > limit:
            if on_long == "error":
                raise DataError(
                    f"{where}, line {i + 1}: {len(seq)} tokens, more than the model's {limit}; "
                    "pass --on-long truncate to cut such lines"
                )
            seq = seq[:limit]
            cut += 1
        ids[i] = [*seq, eos] if seq else []
    if cut:
        log.warning("truncated %d of %d source line(s) to %d tokens", cut, len(ids), limit)
    return ids, cut


def translate_texts(
    run: LoadedRun,
    texts: list[str],
    decode: Any,
    *,
    batch_size: int = 64,
    on_long: str = "truncate",
    progress: bool = False,
    where: str = "input",
) -> tuple[list[str], dict[str, Any]]:
    """Translations of `texts` (an empty line gives an empty translation) and a few counts."""
    from lmforge.infer.seq2seq_decode import translate_batches

    ids, cut = encode_sources(run, texts, on_long=on_long, where=where)
    keep = [i for i, seq in enumerate(ids) if seq]
    t0 = time.perf_counter()
    out_ids = translate_batches(
        run.model, [ids[i] for i in keep], decode, batch_size=batch_size, progress=progress
    )
    seconds = time.perf_counter() - t0
    outputs = [""] * len(texts)
    tgt = run.target_tokenizer
    for i, seq in zip(keep, out_ids, strict=True):
        outputs[i] = tgt.decode(seq).strip()
    stats = {
        "sentences": len(texts),
        "empty": len(texts) - len(keep),
        "truncated": cut,
        "seconds": seconds,
        "sentences_per_s": len(keep) / seconds if seconds else 0.0,
    }
    return outputs, stats


def score_translation(
    run: LoadedRun,
    src_path: str | Path,
    ref_path: str | Path,
    decode: Any,
    *,
    batch_size: int = 64,
    on_long: str = "truncate",
    progress: bool = False,
) -> dict[str, Any]:
    """BLEU and chrF (sacrebleu, detokenized, 13a) of the run's translations of `src_path`.

    Lines where the source or the reference is empty are left out and counted; files of
    different lengths are an error naming the line where one ends.
    """
    pairs, skipped, _ = read_parallel(src_path, ref_path)
    sources = [s for s, _ in pairs]
    hypotheses, stats = translate_texts(
        run,
        sources,
        decode,
        batch_size=batch_size,
        on_long=on_long,
        progress=progress,
        where=str(src_path),
    )
    refs = [[r] for _, r in pairs]
    samples = [
        {"source": s, "hypothesis": h, "reference": r[0]}
        for s, h, r in zip(sources, hypotheses, refs, strict=True)
    ]
    return {
        "source": str(src_path),
        "reference": str(ref_path),
        "n": len(sources),
        "skipped_empty": skipped,
        **bleu(hypotheses, refs),
        **chrf(hypotheses, refs),
        **stats,
        "samples": samples,
    }
