"""WordPiece and Unigram vocabularies: how lmforge composes them and what their tokens stand for.

Training and encoding are Hugging Face `tokenizers`' (`WordPieceTrainer`, `UnigramTrainer`);
this module only composes the two pipelines and fixes the few choices a `tokenizer.json` leaves
open. `tokenizer.py` wraps the result in lmforge's `Tokenizer`.

`wordpiece`, as BERT (Devlin et al. 2019; WordPiece: Wu et al. 2016):
    BertNormalizer (control characters dropped, every whitespace made a space, spaces put
    around CJK characters; lowercasing and accent stripping only when asked) -> BertPreTokenizer
    (split on whitespace and around each punctuation character) -> WordPiece, `##` marking a
    piece that continues a word -> WordPiece decoder without its "cleanup" (which would turn
    " ," into "," but also " do not" into " don't"). Specials `[PAD] [UNK] [CLS] [SEP] [MASK]`
    are ids 0..4, BERT's order. A post-processor gives `[CLS] A [SEP]` and `[CLS] A [SEP] B [SEP]`
    (type ids 0, then 1) to whoever encodes with special tokens (`transformers`); lmforge's
    `Tokenizer.encode` never adds them.

`unigram`, as SentencePiece (Kudo 2018; Kudo & Richardson 2018):
    no normalizer -> Metaspace (each space becomes `▁`, a `▁` goes before the text unless it
    already starts with one, and the text is split before each `▁`) -> Unigram with
    SentencePiece's byte fallback: a character the vocabulary lacks is spelled by its UTF-8 bytes
    `<0xNN>` (id 4 + NN) -> ByteFallback and Metaspace decoders. Specials `<|bos|> <|eos|>
    <|pad|> <unk>` are ids 0..3; `<unk>` is never produced (byte fallback spells everything) but
    the Unigram model needs one. `vocab_size` counts the specials and the 256 byte tokens.

What round-trips (`decode(encode(s)) == s`):
    unigram: every `s` that does not begin with a space and holds no `▁` (U+2581). The decoder
    drops the one space the pre-tokenizer put in front, so a text's own leading space is lost,
    and a literal `▁` comes back as a space. Runs of spaces, newlines, tabs and any Unicode
    (through byte fallback) survive.
    wordpiece: only text already in its normal form. `decode` gives the words joined by single
    spaces with punctuation split off ("Hello, world!\\n" -> "Hello , world !"), lowercased and
    accent-stripped when asked ("Héllo" -> "hello"); a word the vocabulary cannot spell (a
    character never seen in training, or a word over 100 characters) is one `[UNK]`.

Training is not deterministic: `tokenizers` walks hash maps in a per-process order, so two
trainings on the same text can give different ids (WordPiece's `##` pieces, huggingface/tokenizers
issue 1794) or different scores for rare characters (Unigram's characters the model dropped and
the trainer puts back). A vocabulary is trained once and saved; token data records its
fingerprint.

Bytes per token (`Tokenizer.id_to_bytes`, `token_bytes`, bits per byte, streaming decode):
    wordpiece: a word-start piece is " " + its text, a `##` piece its text without `##`;
    unigram: `▁` is one space byte, `<0xNN>` the byte NN, any other piece its UTF-8 text;
    specials count 0 bytes (their `id_to_bytes` is their text, after a space for wordpiece, as
    its decoder writes them). A per-token table cannot know which token comes first, so every
    word start carries its space: the token bytes of `encode(s)` spell the text as the
    pre-tokenizer saw it, which is `decode`'s text with one space more in front (for unigram:
    `s` itself, after a space unless it starts with one). Bits per byte over wordpiece tokens
    therefore count the normalized text (one space between words, one around punctuation),
    not the raw bytes, and an `[UNK]` counts none.
    A token starts a word (`Tokenizer.word_start_mask`, for whole-word masking) when its bytes
    begin with a space: wordpiece pieces without `##`, unigram pieces beginning with `▁`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

logger = logging.getLogger(__name__)

WP_PAD, WP_UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
WORDPIECE_SPECIALS = (WP_PAD, WP_UNK, CLS, SEP, MASK)
CONTINUATION = "##"
UNK = "<unk>"
METASPACE = "\u2581"
N_BYTES = 256
# Characters of the byte tokens' names: always in a unigram vocabulary (see `_never_score`).
_BYTE_NAME_CHARS = "<0x>123456789ABCDEF"


def byte_token(b: int) -> str:
    """The name of byte `b`'s fallback token, as SentencePiece writes it: `<0x0A>`."""
    return f"<0x{b:02X}>"


def min_unigram_vocab(specials: Sequence[str]) -> int:
    """The smallest unigram vocab_size: specials, 256 bytes, the characters always kept, 1 more.

    (With no room for a piece beyond the characters, tokenizers' trainer keeps every piece.)
    """
    return len(specials) + N_BYTES + len(_always_kept(specials)) + 1


def _always_kept(specials: Sequence[str]) -> set[str]:
    return set("".join(specials)) | set(_BYTE_NAME_CHARS) | {METASPACE}


def build_wordpiece(
    texts: Iterable[str],
    *,
    vocab_size: int,
    min_frequency: int,
    lowercase: bool,
    strip_accents: bool,
    progress: bool,
    length: int | None,
) -> tokenizers.Tokenizer:
    """A BERT-style WordPiece tokenizer trained on `texts`."""
    hf = tokenizers.Tokenizer(
        models.WordPiece(unk_token=WP_UNK, continuing_subword_prefix=CONTINUATION)
    )
    # strip_accents must be a bool: BertNormalizer's None means "whatever lowercase says".
    hf.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=True,
        strip_accents=bool(strip_accents),
        lowercase=bool(lowercase),
    )
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf.decoder = decoders.WordPiece(prefix=CONTINUATION, cleanup=False)
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(WORDPIECE_SPECIALS),
        continuing_subword_prefix=CONTINUATION,
        show_progress=progress,
    )
    hf.train_from_iterator(texts, trainer=trainer, length=length)
    hf.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(t, hf.token_to_id(t)) for t in (CLS, SEP)],
    )
    if hf.get_vocab_size() != vocab_size:
        # The trainer keeps every character seen (and its ## form) whatever vocab_size says.
        logger.warning(
            "wordpiece vocabulary has %d tokens, not vocab_size=%d: %s",
            hf.get_vocab_size(),
            vocab_size,
            "the training text has more characters than that"
            if hf.get_vocab_size() > vocab_size
            else f"the training text is too small or min_frequency={min_frequency} too high",
        )
    return hf


def _metaspace() -> tuple[pre_tokenizers.Metaspace, decoders.Metaspace]:
    kwargs = {"replacement": METASPACE, "prepend_scheme": "always", "split": True}
    return pre_tokenizers.Metaspace(**kwargs), decoders.Metaspace(**kwargs)


def _never_score(pieces: list[tuple[str, float]], names: Iterable[str]) -> float:
    """A score low enough that no text is ever segmented into a special or byte token.

    Those tokens sit in the Unigram model's vocabulary (so they keep their ids and byte fallback
    finds them), and the model would match a text that spells one ("<0x41>", "<|eos|>") like
    any piece, turning data into a special id or the wrong byte. Every character of those names
    is a piece (`_always_kept`), so spelling a name of n characters out costs at least
    n * lowest; a score below that makes the spelled-out path win.
    """
    lowest = min(0.0, *(score for _, score in pieces))
    return _short(max(len(n) for n in names) * lowest - 1.0)


def _short(score: float) -> float:
    return float(f"{score:.8g}")


def build_unigram(
    texts: Iterable[str],
    *,
    vocab_size: int,
    specials: Sequence[str],
    progress: bool,
    length: int | None,
) -> tokenizers.Tokenizer:
    """A SentencePiece-style Unigram tokenizer with byte fallback trained on `texts`."""
    seen: set[str] = set()

    def counted() -> Iterator[str]:
        for text in texts:
            seen.update(text)
            yield text

    pre_tokenizer, decoder = _metaspace()
    kept = _always_kept(specials)
    hf = tokenizers.Tokenizer(models.Unigram())
    hf.pre_tokenizer = pre_tokenizer
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size - N_BYTES,
        special_tokens=list(specials),
        unk_token=UNK,
        initial_alphabet=sorted(kept),
        show_progress=progress,
    )

    def too_small() -> ValueError:
        # The trainer keeps every character it sees (spaces are `▁` by then) as a piece and
        # needs room for one more; short of that it refuses, or (exactly that) keeps all pieces.
        chars = (seen - {" "}) | kept
        return ValueError(
            f"unigram vocab_size={vocab_size} is too small for the training text: besides "
            f"{len(specials)} specials and {N_BYTES} byte tokens it keeps every character seen "
            f"and those the specials are spelled with ({len(chars)} here); use vocab_size >= "
            f"{len(specials) + N_BYTES + len(chars) + 1}"
        )

    try:
        hf.train_from_iterator(counted(), trainer=trainer, length=length)
    except Exception as e:  # tokenizers raises a bare Exception
        if "not large enough" not in str(e):
            raise
        raise too_small() from None
    if hf.get_vocab_size() > vocab_size - N_BYTES:
        raise too_small()
    trained = json.loads(hf.to_str())["model"]["vocab"]
    # Scores to 8 digits: tokenizers reads a 17-digit float back one ulp off, which would change
    # the file (and its fingerprint) on every load; 8 digits read back exactly. Equal scores
    # are ordered by piece rather than in the trainer's hash-map order.
    pieces = sorted(
        ((piece, _short(score)) for piece, score in trained if piece not in specials),
        key=lambda p: (-p[1], p[0]),
    )
    bytes_ = [byte_token(b) for b in range(N_BYTES)]
    never = _never_score(pieces, [*specials, *bytes_])
    # Specials, then the bytes (id len(specials) + b), then the pieces, as SentencePiece orders.
    vocab = [(t, never) for t in (*specials, *bytes_)] + pieces
    out = tokenizers.Tokenizer(
        models.Unigram(vocab, unk_id=list(specials).index(UNK), byte_fallback=True)
    )
    out.pre_tokenizer = pre_tokenizer
    out.decoder = decoders.Sequence([decoders.ByteFallback(), decoder])
    if out.get_vocab_size() < vocab_size:
        logger.warning(
            "unigram vocabulary has %d tokens, fewer than vocab_size=%d: the training text is "
            "too small to find more pieces",
            out.get_vocab_size(),
            vocab_size,
        )
    return out


def wordpiece_token_bytes(token: str) -> bytes:
    """The text a WordPiece token adds: `##x` continues the word, any other starts one."""
    if token.startswith(CONTINUATION):
        return token[len(CONTINUATION) :].encode("utf-8")
    return b" " + token.encode("utf-8")
