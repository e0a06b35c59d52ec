"""Training, saving and loading lmforge vocabularies.

Every kind of vocabulary is a Hugging Face `tokenizers.Tokenizer`, composed as
normalizer -> pre-tokenizer -> model -> decoder and saved as one `tokenizer.json`, so the same
file serves lmforge, `tokenizers` and `transformers.PreTrainedTokenizerFast`:

| kind        | model                                   | pre-tokenizer           | decoder      |
|-------------|-----------------------------------------|-------------------------|--------------|
| `bpe`       | byte-level BPE (GPT-2 style), trained   | ByteLevel + GPT-2 regex | ByteLevel    |
| `char`      | BPE, no merges: seen chars + `<0xNN>`   | none                    | ByteFallback |
| `byte`      | BPE, no merges: the 256 bytes           | ByteLevel, no regex     | ByteLevel    |
| `wordpiece` | WordPiece (BERT), `##` pieces, trained  | BertPreTokenizer        | WordPiece    |
| `unigram`   | Unigram (SentencePiece) + byte fallback | Metaspace `▁`           | Metaspace    |

`bpe`, `char` and `byte` (`EXACT_KINDS`) have no normalizer, so `decode(encode(s)) == s` for
every string; `wordpiece` normalizes (and lowercases or strips accents by option) and `unigram`
loses a leading space: `subword.py` says exactly what they keep, and what their tokens count
as bytes. Special tokens: `<|bos|>`, `<|eos|>`, `<|pad|>` (ids 0, 1, 2) in every kind but
`wordpiece`, plus `<unk>` (3) in `unigram`; `wordpiece` has BERT's `[PAD] [UNK] [CLS] [SEP]
[MASK]` (0..4), whose roles are bos = `[CLS]`, eos = `[SEP]` (so documents end with `[SEP]`),
pad, unk, mask, cls and sep. `Tokenizer.encode` treats text that happens to spell a special
token as ordinary text, so data can never inject an EOS; callers add special ids explicitly
(`tok.eos_id`). `train_tokenizer_from_texts` trains and saves in one call: once on source and
target text for a shared translation vocabulary, once per side for two.

A fourth kind, `hf`, is not trained here: it is a `tokenizer.json` taken as it is from a Hugging
Face model (`lmforge import hf`), with that model's own special tokens (`<|endoftext|>`, `<s>`,
`</s>`, ...), named by role in `tokenizer_meta.json` (`special_roles`). Two more facts about the
model it came from are kept there: `add_bos` (Llama and Mistral were trained with `<s>` before
every sequence, which their `tokenizer.json` adds through its post-processor) and `eos_ids`
(every id that ends a generation, e.g. Llama 3's `<|end_of_text|>` and `<|eot_id|>`).

`encode` is the same for every kind: text to ids, no specials, never padded or truncated (an
imported `tokenizer.json` may carry padding or truncation settings, as many BERT folders do;
lmforge encodes with a copy without them and keeps the file, and so its fingerprint, as it
is). Text that a model reads as a prompt or a document (generation, serving, evaluation
contexts, classification) goes through `encode_prompt`, which also puts BOS first where the
model expects it; for lmforge's own kinds the two are the same.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from lmforge import __version__
from lmforge.io import write_json_atomic, write_text_atomic
from lmforge.tokenizer import subword

logger = logging.getLogger(__name__)

BOS = "<|bos|>"
EOS = "<|eos|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = (BOS, EOS, PAD)
KINDS = ("bpe", "char", "byte", "wordpiece", "unigram")
EXACT_KINDS = ("bpe", "char", "byte")  # decode(encode(s)) == s for every string
HF_KIND = "hf"  # imported from a Hugging Face model; loadable, never trained here
_BASE_ROLES = ("bos", "eos", "pad")
ROLES = (*_BASE_ROLES, "unk", "mask", "cls", "sep")
# role -> token of the kinds trained here; a role a kind lacks is None.
_KIND_ROLES: dict[str, dict[str, str]] = {
    "wordpiece": {
        "bos": subword.CLS,
        "eos": subword.SEP,
        "pad": subword.WP_PAD,
        "unk": subword.WP_UNK,
        "mask": subword.MASK,
        "cls": subword.CLS,
        "sep": subword.SEP,
    },
    "unigram": {"bos": BOS, "eos": EOS, "pad": PAD, "unk": subword.UNK},
}
_DEFAULT_ROLES = {"bos": BOS, "eos": EOS, "pad": PAD}
# Each trained kind's special tokens in id order (ids 0, 1, ...).
_KIND_SPECIALS = {
    "wordpiece": subword.WORDPIECE_SPECIALS,
    "unigram": (*SPECIAL_TOKENS, subword.UNK),
}

TOKENIZER_FILE = "tokenizer.json"
META_FILE = "tokenizer_meta.json"
SPLITS = ("train", "val", "test")

# The smallest byte-level BPE vocabulary: the 256-symbol byte alphabet plus the specials.
_MIN_BPE_VOCAB = 256 + len(SPECIAL_TOKENS)
_MIN_UNIGRAM_VOCAB = subword.min_unigram_vocab(_KIND_SPECIALS["unigram"])


@dataclass(kw_only=True)
class TokenizerConfig:
    """How to build a vocabulary.

    `vocab_size` applies to `bpe`, `wordpiece` and `unigram` (counting specials, and unigram's
    256 byte tokens); a `char` vocabulary is sized by the characters in the training text
    (+256 byte-fallback tokens +3 specials) and `byte` is always 256 + 3. `min_frequency` applies
    to `bpe` and `wordpiece`; `lowercase` and `strip_accents` (é -> e) only to `wordpiece`.
    """

    kind: str = "bpe"
    vocab_size: int = 4096
    min_frequency: int = 2
    lowercase: bool = False
    strip_accents: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(
                f"TokenizerConfig.kind={self.kind!r} is not a known kind; "
                f"expected one of {', '.join(KINDS)}"
            )
        if self.kind == "bpe" and self.vocab_size < _MIN_BPE_VOCAB:
            raise ValueError(
                f"TokenizerConfig.vocab_size={self.vocab_size} is too small for a byte-level BPE: "
                f"it needs at least {_MIN_BPE_VOCAB} (256 bytes + {len(SPECIAL_TOKENS)} special "
                f"tokens); raise vocab_size or use kind='byte'"
            )
        n_wordpiece = len(subword.WORDPIECE_SPECIALS)
        if self.kind == "wordpiece" and self.vocab_size <= n_wordpiece:
            raise ValueError(
                f"TokenizerConfig.vocab_size={self.vocab_size} leaves no room for pieces in a "
                f"wordpiece vocabulary after its {n_wordpiece} special tokens; use a few "
                f"thousand (BERT uses 30522)"
            )
        if self.kind == "unigram" and self.vocab_size < _MIN_UNIGRAM_VOCAB:
            raise ValueError(
                f"TokenizerConfig.vocab_size={self.vocab_size} is too small for a unigram "
                f"vocabulary: it needs at least {_MIN_UNIGRAM_VOCAB} (4 special tokens, 256 "
                f"byte-fallback tokens and the characters they are spelled with) plus the "
                f"characters of the training text; raise vocab_size"
            )
        for name in ("lowercase", "strip_accents"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"TokenizerConfig.{name}={value!r} must be true or false")
            if value and self.kind != "wordpiece":
                raise ValueError(
                    f"TokenizerConfig.{name}=True is only for kind='wordpiece' (the other kinds "
                    f"keep text exactly as it is), not kind={self.kind!r}; drop it or use "
                    f"kind='wordpiece'"
                )
        if self.min_frequency < 1:
            raise ValueError(
                f"TokenizerConfig.min_frequency={self.min_frequency} must be >= 1 "
                f"(the number of times a pair must occur to be merged)"
            )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from each byte to a printable character (what ByteLevel uses)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


class Tokenizer:
    """A thin wrapper over `tokenizers.Tokenizer` with lmforge's conventions.

    `encode` never adds BOS/EOS and never turns text into special ids; `decode` renders special
    ids as their text, so round trips are exact. `encode_prompt` is `encode` with BOS first
    when `add_bos` (only ever set for an imported vocabulary whose model expects it).
    """

    def __init__(
        self,
        hf: tokenizers.Tokenizer,
        kind: str,
        *,
        special_roles: dict[str, str | None] | None = None,
        add_bos: bool = False,
        eos_ids: Iterable[int] = (),
    ) -> None:
        if kind not in (*KINDS, HF_KIND):
            raise ValueError(
                f"unknown tokenizer kind {kind!r}; expected one of {(*KINDS, HF_KIND)}"
            )
        self._hf = hf
        # Not serialised in tokenizer.json, so it is set on every construction: literal
        # "<|eos|>" in the data is ordinary text, never the EOS id.
        self._hf.encode_special_tokens = True
        # Padding would add pad ids (offsets (0, 0)) and truncation would drop text without a
        # word, so encodings come from a copy without either; `hf` stays as loaded, so that
        # tokenizer.json and the fingerprint recorded with token data do not change.
        self._enc = hf
        if hf.padding is not None or hf.truncation is not None:
            self._enc = tokenizers.Tokenizer.from_str(hf.to_str())
            self._enc.no_padding()
            self._enc.no_truncation()
            self._enc.encode_special_tokens = True
        self._kind = kind
        # role -> token text. Trained kinds have theirs fixed by kind (`_KIND_ROLES`); an
        # imported (`hf`) vocabulary has its model's own, and may lack any role but EOS.
        if kind == HF_KIND:
            roles = {r: (special_roles or {}).get(r) for r in ROLES}
            if not roles["eos"]:
                raise ValueError("an imported (hf) tokenizer needs an end-of-sequence token")
        else:
            roles = {r: _KIND_ROLES.get(kind, _DEFAULT_ROLES).get(r) for r in ROLES}
        self._roles = roles
        missing = [t for t in roles.values() if t is not None and hf.token_to_id(t) is None]
        if missing:
            raise ValueError(f"tokenizer lacks the special tokens {missing}; retrain it")
        eos_ids = tuple(eos_ids)
        if kind != HF_KIND and (add_bos or eos_ids):
            # lmforge's own models never saw a BOS and end at <|eos|> only.
            raise ValueError(
                f"add_bos and eos_ids are for imported (hf) vocabularies, not {kind!r}"
            )
        if add_bos and roles["bos"] is None:
            raise ValueError("add_bos is set but the tokenizer has no BOS token")
        self._add_bos = bool(add_bos)
        # The EOS role's id first, then any other id that ends a generation (imported models).
        stops = [self._role_id("eos"), *eos_ids]
        bad = [i for i in stops if type(i) is not int or not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(
                f"eos_ids {bad} are not ids of this vocabulary (0..{self.vocab_size - 1})"
            )
        self._eos_ids = tuple(dict.fromkeys(stops))
        self._token_bytes: np.ndarray | None = None
        self._id_to_bytes: list[bytes] | None = None
        self._word_starts: np.ndarray | None = None

    @property
    def hf(self) -> tokenizers.Tokenizer:
        return self._hf

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def vocab_size(self) -> int:
        return self._hf.get_vocab_size(with_added_tokens=True)

    @property
    def bos_id(self) -> int | None:
        """None only for an imported (hf) vocabulary without a BOS token."""
        return self._role_id("bos")

    @property
    def eos_id(self) -> int:
        return self._role_id("eos")

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """Every id that ends a generation: `eos_id` first (more only for imported models)."""
        return self._eos_ids

    @property
    def add_bos(self) -> bool:
        """Whether `encode_prompt` puts BOS first (the model was trained with it)."""
        return self._add_bos

    @property
    def pad_id(self) -> int | None:
        """None only for an imported (hf) vocabulary without a padding token."""
        return self._role_id("pad")

    @property
    def unk_id(self) -> int | None:
        """The unknown-word token (`wordpiece`'s [UNK], `unigram`'s <unk>); None if none."""
        return self._role_id("unk")

    @property
    def mask_id(self) -> int | None:
        """The masked-LM token (`wordpiece`'s [MASK]); None for kinds without one."""
        return self._role_id("mask")

    @property
    def cls_id(self) -> int | None:
        """`wordpiece`'s [CLS] (also its BOS); None for kinds without one."""
        return self._role_id("cls")

    @property
    def sep_id(self) -> int | None:
        """`wordpiece`'s [SEP] (also its EOS); None for kinds without one."""
        return self._role_id("sep")

    @property
    def special_roles(self) -> dict[str, str | None]:
        """Role -> the token text standing for it: bos, eos, pad always (None: there is none),
        unk, mask, cls, sep where the vocabulary has them."""
        return {r: t for r, t in self._roles.items() if r in _BASE_ROLES or t is not None}

    @property
    def normalization(self) -> dict[str, bool]:
        """`wordpiece`'s lowercase / strip_accents, read from its normalizer ({} otherwise)."""
        norm = json.loads(self.to_json()).get("normalizer") or {}
        if self._kind != "wordpiece" or norm.get("type") != "BertNormalizer":
            return {}
        return {k: bool(norm.get(k)) for k in ("lowercase", "strip_accents")}

    def _role_id(self, role: str) -> int | None:
        token = self._roles[role]
        return None if token is None else self._hf.token_to_id(token)

    def _special_ids(self) -> set[int]:
        if self._kind != HF_KIND:
            return {self._hf.token_to_id(t) for t in self._roles.values() if t is not None}
        return {i for i, t in self._hf.get_added_tokens_decoder().items() if t.special}

    def encode(self, text: str) -> list[int]:
        return self._enc.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.encodings(texts)]

    def encodings(self, texts: list[str]) -> list[tokenizers.Encoding]:
        """`encode_batch` with each token's character offsets (`tokenizers.Encoding`)."""
        return self._enc.encode_batch(texts, add_special_tokens=False)

    def encode_prompt(self, text: str) -> list[int]:
        """`text` as the model reads the start of a sequence: `encode`, after BOS if `add_bos`.

        An empty text gives [BOS] or []; callers that need a token then start after an EOS,
        as documents do in lmforge's training data.
        """
        return [*self._prompt_start(), *self.encode(text)]

    def encode_prompt_batch(self, texts: list[str]) -> list[list[int]]:
        """`encode_prompt` for each text (encoded in parallel, as `encode_batch`)."""
        start = self._prompt_start()
        return [[*start, *ids] for ids in self.encode_batch(texts)]

    def _prompt_start(self) -> list[int]:
        return [self._role_id("bos")] if self._add_bos else []

    def decode(self, ids: Iterable[int]) -> str:
        return self._hf.decode(list(ids), skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        return self._hf.token_to_id(token)

    def id_to_token(self, id_: int) -> str | None:
        return self._hf.id_to_token(id_)

    @property
    def id_to_bytes(self) -> list[bytes]:
        """The raw bytes each id stands for (special tokens: their text).

        Concatenating these and decoding as UTF-8 gives `decode`'s text (`wordpiece` and
        `unigram`: with a space in front, see `subword.py`); a streaming decoder uses it to emit
        characters as soon as their last byte arrives, which decoding ids again (where a run of
        byte tokens is judged as a whole) cannot do stably.
        """
        if self._id_to_bytes is None:
            table = [b""] * self.vocab_size
            specials = self._special_ids()
            byte_of = {c: b for b, c in _bytes_to_unicode().items()}
            byte_level, metaspace = self._kind in ("bpe", "byte"), self._kind == "unigram"
            if self._kind == HF_KIND:
                # An imported vocabulary says how it spells bytes through its decoder:
                # GPT-2's ByteLevel, or SentencePiece's "▁" for a space with <0xNN> fallbacks.
                decoder = json.dumps(json.loads(self.to_json()).get("decoder"), ensure_ascii=False)
                byte_level = "ByteLevel" in decoder
                metaspace = "Metaspace" in decoder or "\u2581" in decoder
                specials |= set(self._hf.get_added_tokens_decoder())  # added tokens: as text
            for token, i in self._hf.get_vocab(with_added_tokens=True).items():
                if self._kind == "wordpiece":
                    # Its decoder puts a space before specials too: " [SEP]".
                    table[i] = subword.wordpiece_token_bytes(token)
                elif i in specials:
                    table[i] = token.encode("utf-8")
                elif byte_level and all(c in byte_of for c in token):
                    # Byte-level tokens spell one printable character per byte.
                    table[i] = bytes(byte_of[c] for c in token)
                else:
                    is_fallback = len(token) == 6 and token.startswith("<0x") and token[-1] == ">"
                    if metaspace:
                        token = token.replace("\u2581", " ")
                    table[i] = bytes([int(token[3:5], 16)]) if is_fallback else token.encode()
            self._id_to_bytes = table
        return self._id_to_bytes

    @property
    def token_bytes(self) -> np.ndarray:
        """int32 array: how many UTF-8 bytes of text each id stands for (specials count 0).

        Summing it over a sequence's ids gives the text's byte length, which is what
        bits-per-byte (a tokenizer-independent loss) divides by.
        """
        if self._token_bytes is None:
            out = np.array([len(b) for b in self.id_to_bytes], dtype=np.int32)
            out[sorted(self._special_ids())] = 0
            self._token_bytes = out
        return self._token_bytes

    def word_start_mask(self) -> np.ndarray:
        """bool array over ids: which tokens begin a word (for whole-word masking).

        A token begins a word when its bytes begin with a space: `wordpiece` pieces without
        `##`, `unigram` pieces beginning with `▁` (and `bpe` pieces with a leading space).
        Specials and byte-fallback tokens (`<0x20>`) are False. A word is a start token and the
        non-start tokens after it.
        """
        if self._word_starts is None:
            out = np.array([b[:1] == b" " for b in self.id_to_bytes], dtype=bool)
            out[sorted(self._special_ids())] = False
            for token, i in self._hf.get_vocab().items():
                if len(token) == 6 and token.startswith("<0x") and token[-1] == ">":
                    out[i] = False
            self._word_starts = out
        return self._word_starts.copy()

    def to_json(self) -> str:
        return self._hf.to_str()

    @property
    def fingerprint(self) -> str:
        """sha256 of the tokenizer.json text: token data records it to detect a vocabulary swap."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def meta(self) -> dict[str, Any]:
        meta = {
            "kind": self._kind,
            "vocab_size": self.vocab_size,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
            "pad_id": self.pad_id,
            "special_tokens": {
                t: self._hf.token_to_id(t) for t in self._roles.values() if t is not None
            },
            "fingerprint": self.fingerprint,
            "lmforge_version": __version__,
        }
        if self._kind in (*_KIND_ROLES, HF_KIND):
            meta["special_roles"] = self.special_roles
        if self._kind == "wordpiece":
            meta["normalization"] = self.normalization
        if self._kind == HF_KIND:
            meta["add_bos"] = self._add_bos
            meta["eos_ids"] = list(self._eos_ids)
        return meta

    def save(self, directory: str | os.PathLike) -> Path:
        """Write `tokenizer.json` and `tokenizer_meta.json` into `directory`, each atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_text_atomic(directory / TOKENIZER_FILE, self.to_json())
        write_json_atomic(directory / META_FILE, self.meta())
        logger.info("saved %s tokenizer (%d tokens) to %s", self._kind, self.vocab_size, directory)
        return directory

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self._kind!r}, vocab_size={self.vocab_size})"


def _build_bpe(texts: Iterable[str], cfg: TokenizerConfig, progress: bool, length: int | None):
    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress,
    )
    hf.train_from_iterator(texts, trainer=trainer, length=length)
    if hf.get_vocab_size() < cfg.vocab_size:
        logger.warning(
            "bpe vocabulary has %d tokens, fewer than vocab_size=%d: the training text is too "
            "small or min_frequency=%d too high to find more merges",
            hf.get_vocab_size(),
            cfg.vocab_size,
            cfg.min_frequency,
        )
    return hf


def _build_char(texts: Iterable[str], progress: bool, length: int | None):
    chars: set[str] = set()
    if progress:
        from tqdm.auto import tqdm

        texts = tqdm(texts, total=length, desc="collecting characters", unit="text")
    for text in texts:
        chars.update(text)
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for c in sorted(chars):
        vocab[c] = len(vocab)
    # No merges and no pre-tokenizer: each character is looked up alone, unseen ones fall back
    # to their UTF-8 bytes, so any string round-trips.
    hf = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
    hf.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    return hf


def _build_byte():
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    # Ids follow byte values: byte b is id b + 3.
    for _, ch in sorted(_bytes_to_unicode().items()):
        vocab[ch] = len(vocab)
    hf = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    hf.decoder = decoders.ByteLevel()
    return hf


def train_tokenizer(
    texts: Iterable[str],
    cfg: TokenizerConfig,
    *,
    progress: bool = False,
    length: int | None = None,
) -> Tokenizer:
    """Build a vocabulary of `cfg.kind` from a stream of texts (`length`: optional count hint).

    `byte` needs no data and does not consume `texts`.
    """
    if cfg.kind == "bpe":
        hf = _build_bpe(texts, cfg, progress, length)
    elif cfg.kind == "char":
        hf = _build_char(texts, progress, length)
    elif cfg.kind == "wordpiece":
        hf = subword.build_wordpiece(
            texts,
            vocab_size=cfg.vocab_size,
            min_frequency=cfg.min_frequency,
            lowercase=cfg.lowercase,
            strip_accents=cfg.strip_accents,
            progress=progress,
            length=length,
        )
    elif cfg.kind == "unigram":
        hf = subword.build_unigram(
            texts,
            vocab_size=cfg.vocab_size,
            specials=_KIND_SPECIALS["unigram"],
            progress=progress,
            length=length,
        )
    else:
        hf = _build_byte()
    # Specials are (re-)registered as added tokens so they decode as text and HF loaders see them.
    specials = _KIND_SPECIALS.get(cfg.kind, SPECIAL_TOKENS)
    hf.add_special_tokens(list(specials))
    if [hf.token_to_id(t) for t in specials] != list(range(len(specials))):
        raise RuntimeError(f"{cfg.kind} special tokens {specials} did not get ids 0, 1, ...")
    tok = Tokenizer(hf, cfg.kind)
    logger.info("trained %r", tok)
    return tok


def train_tokenizer_from_texts(
    texts: Iterable[str],
    out_dir: str | os.PathLike,
    cfg: TokenizerConfig,
    progress: bool = True,
    length: int | None = None,
) -> Tokenizer:
    """`train_tokenizer` on `texts`, then `save` into `out_dir`; returns the tokenizer.

    For translation, call it once on source and target texts together for a shared vocabulary
    (needed to tie the two sides' embeddings), or once per side for two.
    """
    tok = train_tokenizer(texts, cfg, progress=progress, length=length)
    tok.save(out_dir)
    return tok


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer saved by `Tokenizer.save`."""
    directory = Path(directory)
    hint = "run `lmforge tokenizer train` first"
    if not directory.is_dir():
        raise FileNotFoundError(f"tokenizer directory {directory} does not exist; {hint}")
    paths = {name: directory / name for name in (TOKENIZER_FILE, META_FILE)}
    for path in paths.values():
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; {hint}")
    try:
        meta = json.loads(paths[META_FILE].read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{paths[META_FILE]} is not valid JSON ({e}); {hint} again") from e
    text = paths[TOKENIZER_FILE].read_text(encoding="utf-8")
    try:
        json.loads(text)
        hf = tokenizers.Tokenizer.from_str(text)
    except Exception as e:  # tokenizers raises a bare Exception on malformed files
        raise ValueError(
            f"{paths[TOKENIZER_FILE]} is not a valid tokenizer.json ({e}); {hint} again"
        ) from e
    kind = meta.get("kind") if isinstance(meta, dict) else None
    if kind not in (*KINDS, HF_KIND):
        raise ValueError(
            f"{paths[META_FILE]} has kind={kind!r}; expected one of {(*KINDS, HF_KIND)}"
        )
    roles = meta.get("special_roles")
    if kind == HF_KIND and not (isinstance(roles, dict) and roles.get("eos")):
        raise ValueError(
            f"{paths[META_FILE]} has kind='hf' but no special_roles with an 'eos' token; "
            "import the model again with `lmforge import hf`"
        )
    extra: dict[str, Any] = {}
    if kind == HF_KIND:
        # Runs imported before these fields existed lack them: no BOS, one EOS, as then.
        extra = {"add_bos": meta.get("add_bos", False), "eos_ids": meta.get("eos_ids", [])}
        if not isinstance(extra["add_bos"], bool) or not isinstance(extra["eos_ids"], list):
            raise ValueError(
                f"{paths[META_FILE]}: add_bos must be true/false and eos_ids a list of ids, got "
                f"add_bos={extra['add_bos']!r}, eos_ids={extra['eos_ids']!r}; import the model "
                "again with `lmforge import hf`"
            )
    try:
        tok = Tokenizer(hf, kind, special_roles=roles if kind == HF_KIND else None, **extra)
    except ValueError as e:
        raise ValueError(f"{directory}: {e}") from None
    if meta.get("fingerprint") != tok.fingerprint:
        logger.warning(
            "%s was changed after it was saved (fingerprint %s, meta says %s); token data "
            "encoded with the old file will not match",
            paths[TOKENIZER_FILE],
            tok.fingerprint[:12],
            str(meta.get("fingerprint"))[:12],
        )
    return tok


def split_shards(data_dir: str | os.PathLike, split: str) -> list[Path]:
    """The JSONL shards `{split}-*.jsonl` of a prepared data dir, in order."""
    return sorted(Path(data_dir).glob(f"{split}-*.jsonl"))


def read_records(path: Path) -> Iterator[tuple[str, bool, int]]:
    """Yield `(text, ends_document, line_bytes)` for each record of a prepared JSONL shard.

    A record with `"last": false` is a non-final part of a document that continues in the next.
    """
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                text = record["text"]
                if not isinstance(text, str):
                    raise TypeError(f"'text' is {type(text).__name__}, expected str")
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(
                    f"{path}:{lineno}: bad record ({e!r}); expected a JSON object with a "
                    f"string 'text', as written by `lmforge data prepare`"
                ) from e
            yield text, record.get("last", True) is not False, len(line)


def train_tokenizer_from_data(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    cfg: TokenizerConfig,
    *,
    progress: bool = False,
) -> Tokenizer:
    """Train on the texts of a prepared data dir's train split and save into `out_dir`."""
    shards = split_shards(data_dir, "train")
    if not shards:
        raise FileNotFoundError(
            f"no train split in data dir {data_dir} (expected train-*.jsonl files); "
            f"run `lmforge data prepare` first"
        )

    def texts() -> Iterator[str]:
        for shard in shards:
            for text, _, _ in read_records(shard):
                yield text

    tok = train_tokenizer(texts(), cfg, progress=progress)
    tok.save(out_dir)
    return tok
