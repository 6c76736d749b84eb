"""WordPiece tokenizer (HF ``tokenizers``) with character offsets, and phrase -> token masks.

Ids carry no special tokens (the text tower owns [CLS]); id 0 is padding; at most
``max_length`` (60) tokens. Each token keeps its character span in the original caption, so a
phrase's character span maps to the tokens it covers (``phrase_token_mask``).
"""
from __future__ import annotations

import os
from typing import Iterable, Optional, Sequence

import torch

from loupe_core.errors import DataError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
MAX_TOKENS = 60


def _bert_pipeline(model):
    """A ``tokenizers.Tokenizer`` with BERT's uncased normaliser and pre-tokeniser around ``model``."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    tok = HFTokenizer(model)
    tok.normalizer = BertNormalizer(lowercase=True, clean_text=True, handle_chinese_chars=True)
    tok.pre_tokenizer = BertPreTokenizer()
    return tok


class Tokenizer:
    """Lowercasing WordPiece tokenizer returning ids and character offsets.

    Build one with ``Tokenizer.train(captions)`` (a small vocabulary, as saved with ShapesWorld),
    ``Tokenizer.from_file(path)`` (a BERT ``vocab.txt`` or a ``tokenizer.json``), and store it
    with ``save(path)`` (``tokenizer.json``).
    """

    pad_id = 0

    def __init__(self, hf_tokenizer, max_length: int = MAX_TOKENS):
        if isinstance(max_length, bool) or not isinstance(max_length, int):
            raise TypeError(f"max_length must be an int, got {type(max_length).__name__}")
        if not 1 <= max_length <= MAX_TOKENS:
            raise ValueError(f"max_length must be in [1, {MAX_TOKENS}], got {max_length}")
        pad = hf_tokenizer.id_to_token(0)
        if pad != "[PAD]":
            raise DataError(f"hf_tokenizer: id 0 must be the [PAD] token (pad id 0), got {pad!r}")
        hf_tokenizer.no_padding()  # a saved tokenizer.json may carry padding / truncation settings:
        hf_tokenizer.no_truncation()  # ids here are unpadded and cut to max_length by encode
        self._tok = hf_tokenizer
        self.max_length = max_length

    @classmethod
    def train(cls, captions: Iterable[str], vocab_size: int = 1000, max_length: int = MAX_TOKENS) -> "Tokenizer":
        """A WordPiece vocabulary for ``captions``, deterministically.

        Entries: the special tokens, every character seen (plain and as a ``##`` continuation,
        so no word is unknown), then whole words by falling count (ties alphabetical) up to
        ``vocab_size`` entries in all. (HF's WordPieceTrainer breaks ties in hash order, so
        its vocabulary differs between runs.)
        """
        from collections import Counter

        from tokenizers.models import WordPiece

        pipeline = _bert_pipeline(WordPiece({t: i for i, t in enumerate(SPECIAL_TOKENS)}, unk_token="[UNK]"))
        words = Counter()
        for caption in captions:
            normalized = pipeline.normalizer.normalize_str(caption)
            words.update(w for w, _ in pipeline.pre_tokenizer.pre_tokenize_str(normalized))
        chars = sorted({ch for w in words for ch in w})
        vocab = SPECIAL_TOKENS + chars + [f"##{ch}" for ch in chars]
        if len(vocab) > vocab_size:
            raise ValueError(f"vocab_size must be >= {len(vocab)} (special tokens and characters), got {vocab_size}")
        ranked = sorted((w for w in words if len(w) > 1), key=lambda w: (-words[w], w))
        vocab += ranked[:vocab_size - len(vocab)]
        return cls(_bert_pipeline(WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]")), max_length)

    @classmethod
    def from_file(cls, path: str, max_length: int = MAX_TOKENS) -> "Tokenizer":
        """Load a BERT ``vocab.txt`` (one token a line, [PAD] first) or a ``tokenizer.json``; a file
        that is neither (not UTF-8, not a tokenizer, no [PAD] at id 0) is a DataError naming it."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers.models import WordPiece

        if not isinstance(path, str) or not os.path.isfile(path):
            raise DataError(f"path: no tokenizer file at {path!r}")
        try:
            if path.endswith(".json"):
                hf = HFTokenizer.from_file(path)
            else:
                with open(path, "rb") as fh:
                    fh.read().decode("utf-8")  # WordPiece.from_file would take undecodable bytes as tokens
                hf = _bert_pipeline(WordPiece.from_file(path, unk_token="[UNK]"))
        except Exception as exc:  # the tokenizers library raises plain Exception on a bad file
            lines = str(exc).strip().splitlines()
            raise DataError(f"tokenizer file {path!r} cannot be read: "
                            f"{type(exc).__name__}: {lines[0] if lines else ''}") from None
        if hf.id_to_token(0) != "[PAD]":
            raise DataError(f"tokenizer file {path!r}: id 0 must be the [PAD] token, got {hf.id_to_token(0)!r}")
        return cls(hf, max_length)

    def __call__(self, texts, context_length: Optional[int] = None) -> torch.Tensor:
        """OpenCLIP's ``tokenizer(texts)``: a string or list of strings -> ids LongTensor[B,
        context_length] (default ``max_length``), 0-padded, cut at ``context_length``; what
        ``Loupe.encode_text`` takes as ids."""
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise DataError("texts must be a string or a list of strings")
        length = self.max_length if context_length is None else context_length
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise DataError(f"context_length must be a positive int, got {context_length!r}")
        out = torch.zeros(len(texts), length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self.encode(text)[0][:length]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def save(self, path: str) -> None:
        """Write the tokenizer as ``tokenizer.json`` (loadable with ``from_file``)."""
        self._tok.save(path)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def token(self, token_id: int) -> str:
        return self._tok.id_to_token(token_id)

    def encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """``text`` -> (ids, character offsets), both of length <= ``max_length``, no special tokens."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        enc = self._tok.encode(text, add_special_tokens=False)
        n = min(len(enc.ids), self.max_length)
        return list(enc.ids[:n]), [tuple(o) for o in enc.offsets[:n]]


def phrase_token_mask(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> torch.Tensor:
    """bool ``[M, L]``: token l belongs to phrase m when their character ranges overlap.

    offsets: L (start, end) character spans of the tokens; spans: M (start, end) phrase spans,
    end exclusive. A phrase cut off by truncation gets an all-False row.
    """
    off = torch.as_tensor(list(offsets), dtype=torch.long).reshape(-1, 2)
    sp = torch.as_tensor(list(spans), dtype=torch.long).reshape(-1, 2)
    if bool((sp[:, 1] < sp[:, 0]).any()):
        raise ValueError(f"spans: every span needs start <= end, got {sp.tolist()}")
    return (off[None, :, 0] < sp[:, None, 1]) & (off[None, :, 1] > sp[:, None, 0])
