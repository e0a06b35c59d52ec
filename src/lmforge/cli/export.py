"""`lmforge export hf|gguf` and `lmforge import hf`."""

from __future__ import annotations

import argparse

from lmforge.cli import command


def _export_hf_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run directory written by `lmforge train` (or `import hf`)")
    p.add_argument(
        "--out",
        required=True,
        help="the folder to write (must not exist or be empty): config.json, model.safetensors, "
        "generation_config.json, tokenizer.json, tokenizer_config.json, special_tokens_map.json",
    )
    p.add_argument(
        "--checkpoint", default="best", help="best, last, or a folder name like step-0001000"
    )
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default="float32",
        help="weight precision; float32 keeps the logits equal to lmforge's, the others halve "
        "the size",
    )
    p.epilog = (
        "GPT-2-style models (learned positions, LayerNorm, GELU, biases) are written as "
        "GPT2LMHeadModel, Llama-style ones (RoPE, RMSNorm, SwiGLU, no biases, any n_kv_heads) "
        "as LlamaForCausalLM (load with AutoModelForCausalLM); post-norm encoders with learned "
        "positions (model.family='bert', a wordpiece vocabulary) as BertForMaskedLM "
        "(AutoModelForMaskedLM; AutoTokenizer adds [CLS]/[SEP]); post-norm seq2seq models with "
        "sinusoidal positions and one shared vocabulary as MarianMTModel "
        "(AutoModelForSeq2SeqLM; AutoTokenizer ends sources with EOS). Anything else, e.g. a "
        "pre-norm seq2seq run, is refused with the settings to change."
    )


@command(
    "export",
    "hf",
    help="write a run as a Hugging Face transformers model folder",
    args=_export_hf_args,
)
def cmd_export_hf(a: argparse.Namespace) -> int:
    from lmforge.export.hf import export_hf

    s = export_hf(a.run, a.out, which=a.checkpoint, dtype=a.dtype)
    print(
        f"wrote {s['checkpoint']} as {s['architecture']} ({s['parameters']:,} parameters, "
        f"{s['dtype']}) to {s['out']}: {', '.join(s['files'])}"
    )
    return 0


def _import_hf_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "hf_dir",
        help="a local Hugging Face model folder: config.json, *.safetensors weights (pickled "
        ".bin files are refused) and tokenizer.json; GPT-2, Llama or Mistral (a gpt run), "
        "BertForMaskedLM (a bert run) or MarianMTModel (a seq2seq run)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="the run directory to write (must not exist or be empty): config.json, "
        "checkpoints/step-0000000/, tokenizer/; then generate, translate, eval, serve or "
        "fine-tune it",
    )
    p.add_argument(
        "--max-seq-len",
        type=int,
        help="cap the context at this many tokens (default: the model's own, which for recent "
        "Llamas is long enough that generate's KV cache would not fit in memory)",
    )
    p.epilog = (
        "No code from the folder is run (no trust_remote_code); weights are stored as float32. "
        "A BERT WordPiece vocabulary imports as kind wordpiece ([CLS] = BOS, [SEP] = EOS). "
        "Helsinki-NLP Marian folders are refused: they have SentencePiece files instead of "
        "tokenizer.json and start decoding at the pad id. RoBERTa, DistilBERT, T5 and BART are "
        "named and refused."
    )


@command(
    "import",
    "hf",
    help="turn a local Hugging Face model folder into an lmforge run",
    args=_import_hf_args,
)
def cmd_import_hf(a: argparse.Namespace) -> int:
    from lmforge.export.hf import import_hf

    s = import_hf(a.hf_dir, a.out, max_seq_len=a.max_seq_len)
    print(
        f"imported {s['architecture']} as a {s['family']} run ({s['parameters']:,} parameters, "
        f"vocabulary "
        f"{s['vocab_size']:,}, context {s['max_seq_len']:,}) into {s['out']}"
    )
    return 0


def _export_gguf_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run directory written by `lmforge train` (or `import hf`)")
    p.add_argument("--out", required=True, help="the .gguf file to write (replaced if it exists)")
    p.add_argument(
        "--checkpoint", default="best", help="best, last, or a folder name like step-0001000"
    )
    p.add_argument(
        "--dtype",
        choices=["f32", "f16"],
        default="f32",
        help="precision of the weight matrices; norms and biases are always f32",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.epilog = (
        "Llama-style models are written as llama.cpp's 'llama' architecture (q/k rows permuted "
        "to its RoPE layout), GPT-2-style ones as 'gpt2'; the tokenizer must be byte-level BPE "
        "(kinds bpe or byte). Needs the gguf package: pip install 'lmforge[gguf]'."
    )


@command("export", "gguf", help="write a run as a GGUF file for llama.cpp", args=_export_gguf_args)
def cmd_export_gguf(a: argparse.Namespace) -> int:
    from lmforge.export.llamacpp import export_gguf

    s = export_gguf(a.run, a.out, which=a.checkpoint, dtype=a.dtype, progress=not a.no_progress)
    print(
        f"wrote {s['checkpoint']} as gguf architecture {s['architecture']} ({s['tensors']} "
        f"tensors, {s['dtype']}, {s['bytes']:,} bytes) to {s['out']}"
    )
    return 0
