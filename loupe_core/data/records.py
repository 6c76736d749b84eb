"""One raw record (encoded image, caption, optional phrase spans) -> a training sample, or None.

Shared by the webdataset and CSV loaders: bad records are counted in a ``DataStats`` and
dropped, never raised, so one corrupt image cannot stop a run.
"""
from __future__ import annotations

from typing import Optional, Sequence

from .batch import make_sample
from .images import decode_image
from .phrases import extract_noun_phrases
from .stats import DataStats
from .tokenizer import Tokenizer


def _decode_errors() -> tuple:
    from PIL import Image

    return (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _valid_spans(phrases, caption: str) -> Optional[list[tuple[int, int]]]:
    """``phrases`` as (start, end) pairs inside ``caption``, or None if absent or malformed."""
    if not isinstance(phrases, list):
        return None
    spans = []
    for span in phrases:
        if (not isinstance(span, (list, tuple)) or len(span) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in span)
                or not 0 <= span[0] <= span[1] <= len(caption)):
            return None
        spans.append((span[0], span[1]))
    return spans


def decode_record(image_bytes: Optional[bytes], caption: Optional[str], phrases: Optional[Sequence],
                  key: str, tokenizer: Tokenizer, image_size: int, stats: DataStats) -> Optional[dict]:
    """The ``make_sample`` dict of a record, or None when it is skipped (counted in ``stats``).

    image_bytes None: missing image; caption None, blank or without any token: empty caption;
    bytes PIL cannot decode: corrupt image. phrases: character spans (e.g. precomputed by
    ``loupe data phrases``); None or malformed spans: the noun-phrase chunker runs on the caption.
    """
    stats.seen += 1
    if image_bytes is None:
        stats.missing_image += 1
        return None
    if caption is None or not tokenizer.encode(caption)[0]:
        stats.empty_caption += 1
        return None
    try:
        image = decode_image(image_bytes, image_size)
    except _decode_errors():
        stats.corrupt_image += 1
        return None
    spans = _valid_spans(phrases, caption)
    if spans is None:
        spans = extract_noun_phrases(caption)
    if not spans:
        stats.no_phrase += 1
    stats.kept += 1
    return make_sample(image, caption, spans, key, tokenizer)
