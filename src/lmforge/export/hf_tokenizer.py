"""The tokenizer side of Hugging Face interop: lmforge vocabularies to HF tokenizer files and back.

`lmforge.export.hf` moves weights; this module moves what reads the text. Both directions keep
one rule: the ids `transformers.AutoTokenizer` gives for a text are the ids the model was
trained on, so a model and its tokenizer can never be exported or imported apart.

| family  | exported `tokenizer.json`          | `AutoTokenizer(text)` gives          |
|---------|------------------------------------|--------------------------------------|
| gpt     | lmforge's own, unchanged           | `encode_prompt(text)` (BOS if any)   |
| bert    | lmforge's own (WordPiece template) | `[CLS] + encode(text) + [SEP]`       |
| seq2seq | post-processor `$A <eos>` added    | `encode(text) + [eos]` (a source)    |

On import, a folder's `tokenizer.json` becomes an lmforge `Tokenizer`: kind `hf` with the
folder's special tokens named by role, or kind `wordpiece` for a BERT WordPiece vocabulary whose
special tokens are BERT's own (so whole-word masking and byte counts work as for one trained
here). Written by hand because the mapping between lmforge's roles and transformers'
`*_token` fields is lmforge's own; the files themselves are read and written by `tokenizers`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from lmforge.tokenizer import subword
from lmforge.tokenizer.tokenizer import HF_KIND, Tokenizer

log = logging.getLogger(__name__)

CHAT_TEMPLATE_FILE = "chat_template.jinja"  # where transformers 5 keeps a chat template
# BERT's special tokens, which lmforge's wordpiece kind also uses.
_BERT_ROLES = {
    "cls": subword.CLS,
    "sep": subword.SEP,
    "pad": subword.WP_PAD,
    "unk": subword.WP_UNK,
    "mask": subword.MASK,
}


class InteropError(ValueError):
    """A run or a Hugging Face folder that cannot be converted, and what to change."""


def tokenizer_files(tok: Tokenizer, *, max_seq_len: int, family: str = "gpt") -> dict[str, Any]:
    """The `tokenizer_config.json` and `special_tokens_map.json` contents for `tok`.

    `PreTrainedTokenizerFast` wraps `tokenizer.json` in transformers 4 and 5 alike. For a GPT,
    `add_bos_token` says whether a prompt starts with BOS, as `Tokenizer.encode_prompt` does:
    false for lmforge's own vocabularies, true for an imported one whose model was trained with
    BOS (transformers rebuilds the post-processor from it), so `AutoTokenizer(text)` gives
    `encode_prompt(text)`'s ids (for text that does not spell a special token: transformers, as
    usual, reads a literal "<|eos|>" as the EOS id, where lmforge reads it as text). An encoder
    or a translation model leaves the post-processor of `tokenizer.json` alone (it adds
    `[CLS]`/`[SEP]`, or the source's EOS); an encoder also returns `token_type_ids`, as
    `BertTokenizer` does, so sentence pairs get their segment ids.
    """
    special = {f"{role}_token": text for role, text in tok.special_roles.items() if text}
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", **special}
    if family == "gpt":
        config["add_bos_token"] = tok.add_bos
    if family == "bert":
        config["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"]
    config.update(model_max_length=max_seq_len, clean_up_tokenization_spaces=False)
    return {"tokenizer_config.json": config, "special_tokens_map.json": special}


def source_tokenizer_json(tok: Tokenizer) -> str:
    """`tok`'s tokenizer.json with a post-processor appending EOS, as a translation source
    ends; `encode` (no specials) is unchanged, so lmforge reads it back alike."""
    import tokenizers

    hf = tokenizers.Tokenizer.from_str(tok.to_json())
    eos = tok.id_to_token(tok.eos_id)
    hf.post_processor = tokenizers.processors.TemplateProcessing(
        single=f"$A:0 {eos}:0",
        pair=f"$A:0 {eos}:0 $B:1 {eos}:1",
        special_tokens=[(eos, tok.eos_id)],
    )
    return hf.to_str()


# ---------------------------------------------------------------- import


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file ({} if missing); invalid JSON is an error naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InteropError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise InteropError(f"{path} holds a {type(data).__name__}, expected a JSON object")
    return data


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _token_ids(value: Any) -> list[int]:
    """A config's `*_token_id`, which may be one id, a list of ids, or missing."""
    values = value if isinstance(value, list) else [value]
    return [v for v in values if type(v) is int and v >= 0]


def _adds_bos(hf_tok: Any, bos: str | None, tok_config: dict[str, Any]) -> bool:
    """Whether the model reads every sequence after BOS, as its own tokenizer encodes it.

    The post-processor in tokenizer.json decides where there is one (Llama's and Mistral's
    TemplateProcessing "<s> $A"), read by asking it to encode a text: `tokenizers` and
    transformers 5 apply it as it is, whatever tokenizer_config.json says. Without one,
    `add_bos_token` in tokenizer_config.json decides (transformers 4's Llama tokenizer builds
    its template from that flag).
    """
    if bos is None:
        return False
    if hf_tok.post_processor is None:
        return tok_config.get("add_bos_token") is True
    ids = hf_tok.encode("a", add_special_tokens=True).ids
    return bool(ids) and ids[0] == hf_tok.token_to_id(bos)


def _is_bert_wordpiece(hf_tok: Any, roles: dict[str, str | None]) -> bool:
    """A WordPiece vocabulary with BERT's own special tokens in BERT's roles."""
    model = json.loads(hf_tok.to_str()).get("model") or {}
    return (
        model.get("type") == "WordPiece"
        and model.get("continuing_subword_prefix") == "##"
        and all(roles.get(r) == t for r, t in _BERT_ROLES.items())
        and all(hf_tok.token_to_id(t) is not None for t in _BERT_ROLES.values())
    )


def load_hf_tokenizer(hf_dir: Path, hf_config: dict[str, Any], *, family: str = "gpt") -> Tokenizer:
    """The folder's `tokenizer.json` as an lmforge tokenizer (kind `hf`, or `wordpiece` for a
    BERT vocabulary); `family` is that of the model it belongs to."""
    import tokenizers

    path = hf_dir / "tokenizer.json"
    if not path.is_file():
        # Only the model's own tokenizer will do: any other numbers its tokens differently
        # from the model's embedding rows.
        spm = sorted(p.name for p in hf_dir.glob("*.spm"))
        found = (
            f" (it has SentencePiece files {', '.join(spm)}, as Marian folders do)" if spm else ""
        )
        how = (
            "with the `tokenizers` library (transformers has no fast tokenizer for Marian's "
            "SentencePiece files, so its save_pretrained writes no tokenizer.json)"
            if spm
            else "with transformers: `AutoTokenizer.from_pretrained(DIR, use_fast=True)"
            ".save_pretrained(DIR)` writes it"
        )
        raise InteropError(
            f"{hf_dir} has no tokenizer.json{found}; convert the model's own tokenizer to "
            f"tokenizer.json {how}"
        )
    try:
        hf_tok = tokenizers.Tokenizer.from_str(path.read_text(encoding="utf-8"))
    except Exception as e:  # tokenizers raises a bare Exception on malformed files
        raise InteropError(f"{path} is not a valid tokenizer.json ({e})") from None
    tok_config = read_json(hf_dir / "tokenizer_config.json")
    sources = [tok_config, read_json(hf_dir / "special_tokens_map.json")]
    gen = read_json(hf_dir / "generation_config.json")
    roles: dict[str, str | None] = {}
    # Decoders keep the three roles lmforge uses; an encoder also needs BERT's own.
    wanted = ("bos", "eos", "pad", *(("unk", "mask", "cls", "sep") if family == "bert" else ()))
    for role in wanted:
        texts = (_token_text(s.get(f"{role}_token")) for s in sources)
        roles[role] = next((t for t in texts if t), None)
        if roles[role] is None and role in ("bos", "eos", "pad"):
            # Else the (first) id the model config names.
            ids = _token_ids(hf_config.get(f"{role}_token_id", gen.get(f"{role}_token_id")))
            if ids:
                roles[role] = hf_tok.id_to_token(ids[0])
    if family == "bert":
        # An encoder's sequences are [CLS] ... [SEP]: lmforge's BOS and EOS roles.
        roles["bos"], roles["eos"] = roles["cls"] or roles["bos"], roles["sep"] or roles["eos"]
        if _is_bert_wordpiece(hf_tok, roles):
            try:
                return Tokenizer(hf_tok, "wordpiece")
            except ValueError as e:
                raise InteropError(f"{path}: {e}") from None
        if roles["mask"] is None:
            raise InteropError(
                f"{hf_dir}: no mask token in tokenizer_config.json or special_tokens_map.json "
                "(mask_token); a masked LM needs one to be evaluated or trained further"
            )
    if not roles["eos"]:
        raise InteropError(
            f"{hf_dir}: no end-of-sequence token in tokenizer_config.json, "
            "special_tokens_map.json or config.json (eos_token_id); lmforge needs one to end "
            "documents and generations"
        )
    # Generation ends at any of the ids `transformers`' generate stops at: generation_config's
    # eos_token_id (Llama 3 lists <|end_of_text|>, <|eom_id|> and <|eot_id|>), else config's.
    stops = _token_ids(gen.get("eos_token_id", hf_config.get("eos_token_id")))
    if family == "bert":
        stops = []  # an encoder generates nothing
    unknown = [i for i in stops if hf_tok.id_to_token(i) is None]
    if unknown:
        log.warning("%s: eos_token_id %s are not in tokenizer.json; ignoring them", hf_dir, unknown)
    # A decoder's BOS comes from its template; an encoder's [CLS] and a translation source's
    # EOS are added by the objective and `translate`, never by `encode_prompt`.
    add_bos = family == "gpt" and _adds_bos(hf_tok, roles["bos"], tok_config)
    try:
        return Tokenizer(
            hf_tok,
            HF_KIND,
            special_roles=roles,
            add_bos=add_bos,
            eos_ids=[i for i in stops if i not in unknown],
        )
    except ValueError as e:
        raise InteropError(f"{path}: {e}") from None


def chat_template(hf_dir: Path) -> str | None:
    """The folder's chat template: `chat_template.jinja` (v5) or tokenizer_config.json (v4)."""
    path = hf_dir / CHAT_TEMPLATE_FILE
    if path.is_file():
        return path.read_text(encoding="utf-8")
    template = read_json(hf_dir / "tokenizer_config.json").get("chat_template")
    return template if isinstance(template, str) else None
