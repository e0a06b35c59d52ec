"""Beam-search translation speed of lmforge's seq2seq decoder against Hugging Face's `generate`.

Both libraries decode the English side of the Multi30k 2016 test set (1,000 captions,
`../shared/data/translation/multi30k/test_2016_flickr.en.gz`) with beam size 4, on the same
weights: lmforge with `translate_batches(model, ids, DecodeConfig(beam_size=4, ...))`, HF with
`MarianMTModel.generate(input_ids, attention_mask, num_beams=4, ...)` on the model that
`lmforge.export.hf_marian.to_hf_marian` builds from ours. The two searches are set up alike:

- the same batches: sentences sorted by length (longest first, as `translate_batches` does)
  and cut into `--batch-size` sentences, each batch right-padded with the pad id and given to
  HF with its attention mask; sources are the tokenizer's ids plus EOS, as the model is
  trained on them (`PairBatches.collate`), cut to `max_seq_len - 1` tokens first;
- the same length limit: a target is at most `max_len` tokens with BOS and EOS (HF:
  `max_new_tokens = max_len - 1` after the decoder start token);
- the same scoring: `length_penalty` (sum of log-probabilities over length ** penalty, HF's
  convention, which lmforge follows) and `early_stopping=False` (lmforge's rule for when a
  sentence is done is HF's default heuristic);
- the same ids: `decoder_start_token_id` = BOS, `eos_token_id` = EOS, `pad_token_id` = pad,
  and BOS and pad never generated (`suppress_tokens`, as lmforge suppresses them).

The model: with `--run`, a trained seq2seq run (`lmforge.infer.load.load_run`) and its
tokenizer. Marian is post-norm only, so a pre-norm run (`recipes/translate-multi30k.toml` is
one) cannot be given to HF: the benchmark then says so in `model.note` and falls back to a
random model of the run's sizes in Marian's layout, with the run's tokenizer. Without `--run`:
a BPE vocabulary of `--vocab-size` tokens trained in-process on the Multi30k train set (English
and German together, as a shared-vocabulary run has), and a randomly initialised model of the
recipe's sizes (3+3 layers, width 256, d_ff 1024, max_seq_len 64) in Marian's layout
(post-norm, sinusoidal positions, biases, LayerNorm eps 1e-5: what
`hf_marian.check_mappable` requires). Random weights almost never pick EOS, so every
hypothesis runs to `max_len`: the worst case for both libraries, and the one where a batch
never shrinks. A trained run stops sentences early, and lmforge drops finished sentences from
the batch where HF keeps computing them.

Timing: one untimed warmup batch each, then `--repeats` passes over all sentences per library,
alternating which goes first; `sentences_per_s` is the sentences over the median pass.
`identical` counts sentences where both searches return the same ids: a check that they
search alike (all 1000 at the defaults; a near tie that float rounding flips would show here).

    python benchmarks/translate_speed.py                         # random model, 1000 sents (~3 min)
    python benchmarks/translate_speed.py --limit 50 --repeats 1  # a quick check
    python benchmarks/translate_speed.py --run runs/multi30k     # a trained run's weights

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import transformers

from lmforge.export.hf_marian import check_mappable, to_hf_marian
from lmforge.infer.seq2seq_decode import DecodeConfig, translate_batches
from lmforge.infer.translate import read_lines
from lmforge.model.seq2seq import Seq2Seq, Seq2SeqConfig
from lmforge.tokenizer.tokenizer import Tokenizer, TokenizerConfig, train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
MULTI30K = ROOT.parent / "shared" / "data" / "translation" / "multi30k"


def random_model(config: Seq2SeqConfig, seed: int) -> Seq2Seq:
    """A randomly initialised model of `config`'s sizes in Marian's layout, without dropout."""
    cfg = dataclasses.replace(
        config, norm_position="post", pos_emb="sinusoidal", bias=True, norm_eps=1e-5, dropout=0.0
    )
    torch.manual_seed(seed)
    return Seq2Seq(cfg).eval()


def build_model(args: argparse.Namespace) -> tuple[Seq2Seq, Tokenizer, dict]:
    """The model both libraries decode with, its (source) tokenizer, and what it is."""
    if args.run:
        from lmforge.infer.load import load_run

        run = load_run(args.run, which=args.which, families={"seq2seq"}, command=__file__)
        info = {"source": f"run {args.run} ({run.checkpoint.name})"}
        if run.tgt_tokenizer is not None:
            info["note"] = "separate source and target vocabularies"
        try:
            check_mappable(run.model.config)
            return run.model.eval(), run.tokenizer, info
        except ValueError as e:
            info["note"] = (
                f"{e}. Fell back to a random model of the run's sizes in Marian's layout, "
                "with the run's tokenizer; its decoding speed is not the trained model's."
            )
            return random_model(run.model.config, args.seed), run.tokenizer, info
    lines = read_lines(MULTI30K / "train.en.gz") + read_lines(MULTI30K / "train.de.gz")
    tok = train_tokenizer(lines, TokenizerConfig(kind="bpe", vocab_size=args.vocab_size))
    cfg = Seq2SeqConfig(
        vocab_size=tok.vocab_size,
        n_encoder_layers=3,
        n_decoder_layers=3,
        n_heads=4,
        d_model=256,
        d_ff=1024,
        max_seq_len=64,
        pad_id=tok.pad_id,
        bos_id=tok.bos_id,
        eos_id=tok.eos_id,
    )
    info = {"source": f"random weights (seed {args.seed}), BPE {tok.vocab_size} on Multi30k train"}
    return random_model(cfg, args.seed), tok, info


def encode_sources(tok: Tokenizer, texts: list[str], max_seq_len: int) -> list[list[int]]:
    """Token ids of each non-empty text, cut to max_seq_len - 1, then EOS (as in training)."""
    ids = tok.encode_batch([t.strip() for t in texts])
    return [[*seq[: max_seq_len - 1], tok.eos_id] for seq in ids if seq]


def batches_like_ours(src_ids: list[list[int]], batch_size: int) -> list[list[int]]:
    """Sentence indices of each batch, as `translate_batches` cuts them (longest first)."""
    order = sorted(range(len(src_ids)), key=lambda i: len(src_ids[i]), reverse=True)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def hf_translate(
    hf, cfg: Seq2SeqConfig, src_ids: list[list[int]], dc: DecodeConfig, batch_size: int
) -> list[list[int]]:
    """HF `generate` over the same batches as ours; ids without BOS, EOS or padding."""
    out: list[list[int]] = [[] for _ in src_ids]
    max_len = dc.max_len or cfg.max_seq_len
    for chunk in batches_like_ours(src_ids, batch_size):
        width = max(len(src_ids[i]) for i in chunk)
        ids = torch.full((len(chunk), width), cfg.pad_id, dtype=torch.long)
        for row, i in enumerate(chunk):
            ids[row, : len(src_ids[i])] = torch.tensor(src_ids[i])
        gen = hf.generate(
            input_ids=ids,
            attention_mask=(ids != cfg.pad_id).long(),
            num_beams=dc.beam_size,
            do_sample=False,
            max_new_tokens=max_len - 1,
            length_penalty=dc.length_penalty,
            early_stopping=False,
            decoder_start_token_id=cfg.bos_id,
            bos_token_id=cfg.bos_id,
            eos_token_id=cfg.eos_id,
            pad_token_id=cfg.pad_id,
            suppress_tokens=[cfg.bos_id, cfg.pad_id],
            forced_eos_token_id=None,
            use_cache=True,
        )  # (n, 1 + new tokens)
        for i, row in zip(chunk, gen[:, 1:].tolist()):
            for j, token in enumerate(row):
                if token in (cfg.eos_id, cfg.pad_id):
                    row = row[:j]
                    break
            out[i] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="a trained seq2seq run directory (default: random model)")
    parser.add_argument("--which", default="best", help="checkpoint of --run: best, last, step-N")
    parser.add_argument(
        "--source",
        type=Path,
        default=MULTI30K / "test_2016_flickr.en.gz",
        help="source sentences, one per line (.gz read as it is)",
    )
    parser.add_argument("--limit", type=int, default=0, help="first N sentences only; 0 = all")
    parser.add_argument("--beam-size", type=int, default=4, help="beams per sentence")
    parser.add_argument("--batch-size", type=int, default=64, help="sentences per batch, both")
    parser.add_argument(
        "--max-len", type=int, default=0, help="longest target with BOS/EOS; 0 = max_seq_len"
    )
    parser.add_argument("--length-penalty", type=float, default=1.0, help="HF's length_penalty")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per library")
    parser.add_argument(
        "--vocab-size", type=int, default=8000, help="BPE vocabulary of the random model"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random model")
    args = parser.parse_args()
    if args.repeats < 1 or args.limit < 0 or args.batch_size < 1:
        parser.error("--repeats and --batch-size must be >= 1 and --limit >= 0")
    if not args.source.is_file():
        parser.error(f"{args.source} does not exist; see ../shared/data/README.md")

    model, tok, info = build_model(args)
    cfg = model.config
    hf = to_hf_marian(model, attn_implementation="sdpa").eval()
    texts = read_lines(args.source)
    if args.limit:
        texts = texts[: args.limit]
    src_ids = encode_sources(tok, texts, cfg.max_seq_len)
    dc = DecodeConfig(
        beam_size=args.beam_size, length_penalty=args.length_penalty, max_len=args.max_len
    )
    bs = args.batch_size

    runners = {
        "lmforge": lambda ids: translate_batches(model, ids, dc, batch_size=bs),
        "hf": lambda ids: hf_translate(hf, cfg, ids, dc, bs),
    }
    warm = src_ids[: min(bs, 8)]
    for run in runners.values():
        run(warm)
    seconds: dict[str, list[float]] = {k: [] for k in runners}
    outputs: dict[str, list[list[int]]] = {}
    order = list(runners)
    for r in range(args.repeats):
        for key in order if r % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            outputs[key] = runners[key](src_ids)
            seconds[key].append(time.perf_counter() - t0)

    n = len(src_ids)
    max_len = args.max_len or cfg.max_seq_len
    result: dict = {
        "benchmark": "translate_speed",
        "model": {
            **info,
            "n_encoder_layers": cfg.n_encoder_layers,
            "n_decoder_layers": cfg.n_decoder_layers,
            "n_heads": cfg.n_heads,
            "d_model": cfg.d_model,
            "d_ff": cfg.d_ff,
            "vocab_size": cfg.vocab_size,
            "norm_position": cfg.norm_position,
            "params": model.num_params(),
        },
        "data": str(args.source),
        "sentences": n,
        "mean_source_tokens": round(sum(map(len, src_ids)) / n, 2),
        "decode": {
            "beam_size": args.beam_size,
            "batch_size": bs,
            "max_len": max_len,
            "length_penalty": args.length_penalty,
            "early_stopping": False,
        },
        "repeats": args.repeats,
    }
    for key in runners:
        median = statistics.median(seconds[key])
        result[key] = {
            "sentences_per_s": round(n / median, 2),
            "seconds": [round(s, 3) for s in seconds[key]],
            "mean_output_tokens": round(sum(map(len, outputs[key])) / n, 2),
            # max_len - 1 tokens after BOS and no EOS: stopped by the length limit.
            "at_length_limit": sum(len(o) >= max_len - 1 for o in outputs[key]),
        }
    result["ratio_lmforge_over_hf"] = round(
        statistics.median(seconds["hf"]) / statistics.median(seconds["lmforge"]), 3
    )
    result["identical"] = sum(a == b for a, b in zip(outputs["lmforge"], outputs["hf"]))
    result["identical_fraction"] = round(result["identical"] / n, 4)
    result.update(
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        transformers=transformers.__version__,
        python=platform.python_version(),
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
