"""Webdataset tar shards: writing (ShapesWorld), reading, and the phrase-precomputation step.

A shard holds samples as members ``<key>.<ext>`` (webdataset convention: the key is the path up
to the first dot of the file name). Written here: ``<key>.png`` (image), ``<key>.txt``
(caption, UTF-8), ``<key>.json`` (annotation; ``"phrases"``: noun-phrase character spans, used
by the loaders instead of running the chunker). Shards are written to a temporary file and
renamed into place, with fixed member metadata, so the same content gives the same bytes.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from typing import Iterable, Iterator, Optional

from ..errors import DataError
from .images import encode_png
from .phrases import extract_noun_phrases
from .shapesworld import generate_split


def split_key(name: str) -> tuple[str, str]:
    """``"dir/abc.seg.png"`` -> (``"dir/abc"``, ``"seg.png"``) (webdataset's key rule)."""
    directory, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return os.path.join(directory, stem) if directory else stem, ext


def read_shard(path: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) for each sample of a tar shard, in order."""
    with tarfile.open(path) as tar:
        key, members = None, {}
        for info in tar:
            if not info.isfile():
                continue
            k, ext = split_key(info.name)
            if k != key and members:
                yield key, members
                members = {}
            key = k
            members[ext] = tar.extractfile(info).read()
        if members:
            yield key, members


def write_shard(path: str, samples: Iterable[tuple[str, dict[str, bytes]]]) -> int:
    """Write (key, {extension: bytes}) samples to the tar ``path`` atomically; returns the count."""
    tmp = f"{path}.tmp-{os.getpid()}"
    count = 0
    try:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for key, members in samples:
                for ext in sorted(members):
                    data = members[ext]
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime, info.mode = len(data), 0, 0o444
                    tar.addfile(info, io.BytesIO(data))
                count += 1
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return count


def _json_bytes(obj) -> bytes:
    return json.dumps(obj, sort_keys=True).encode()


def write_shapesworld_shards(out_dir: str, num: int, *, image_size: int = 64, seed: int = 0,
                             split: str = "train", shard_size: int = 1000) -> list[str]:
    """ShapesWorld ``split`` scenes (as ``generate_split``) as shards ``shapes-000000.tar``, ...

    Per sample: ``png``; ``txt`` (the first caption); ``json`` with ``caption``, ``phrases``
    (chunker spans of that caption), ``refs`` (gold phrase spans and objects), ``objects``
    (with ``box`` xyxy pixels, x2/y2 exclusive) and ``background``. Returns the shard paths.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    os.makedirs(out_dir, exist_ok=True)
    images, records, _ = generate_split(split, num, image_size=image_size, seed=seed)
    paths = []
    for start in range(0, num, shard_size):
        path = os.path.join(out_dir, f"shapes-{start // shard_size:06d}.tar")
        samples = []
        for image, rec in zip(images[start:start + shard_size], records[start:start + shard_size]):
            cap = rec["captions"][0]
            meta = {"caption": cap["text"], "phrases": cap["phrases"], "refs": cap["refs"],
                    "objects": rec["objects"], "background": rec["background"]}
            samples.append((rec["key"], {"png": encode_png(image), "txt": cap["text"].encode(),
                                         "json": _json_bytes(meta)}))
        write_shard(path, samples)
        paths.append(path)
    return paths


def json_member(data: bytes) -> dict:
    """A json member as a dict; ``{}`` when it is not a valid JSON object (a bad record, not a crash)."""
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def caption_of(members: dict[str, bytes], caption_key: str) -> Optional[str]:
    """The caption of a sample: member ``caption_key`` (``txt``: the text itself; ``json``: its
    ``"caption"`` field), or None when the member is there but holds no caption."""
    data = members[caption_key]
    if caption_key.endswith("json"):
        value = json_member(data).get("caption")
        return value if isinstance(value, str) else None
    return data.decode("utf-8", errors="replace")


def shard_captions(shards: list[str], caption_key: str = "txt") -> Iterator[str]:
    """The captions of every sample of ``shards`` that holds member ``caption_key`` (a sample
    without it, or whose json member has no caption, is passed over). DataError naming a shard
    that cannot be read."""
    for path in shards:
        try:
            for _, members in read_shard(path):
                caption = caption_of(members, caption_key) if caption_key in members else None
                if caption:
                    yield caption
        except (OSError, tarfile.TarError) as exc:
            raise DataError(f"shard {path!r} could not be read ({type(exc).__name__}: {exc})") from None


def add_phrases_to_shards(shards: list[str], out_dir: str, *, caption_key: str = "txt",
                          backend: str = "pattern") -> dict:
    """Copy each shard to ``out_dir`` (same file name) with ``"phrases"`` set in every sample's json.

    Members other than the json are copied byte for byte; a sample without json gets one.
    Raises ValueError naming ``caption_key`` if a sample lacks it. Returns counts: samples,
    with_phrases, without_phrases (captions with no noun phrase: still usable for L_CMC).
    """
    os.makedirs(out_dir, exist_ok=True)
    counts = {"samples": 0, "with_phrases": 0, "without_phrases": 0}

    def annotated(path):
        for key, members in read_shard(path):
            if caption_key not in members:
                raise DataError(f"caption_key {caption_key!r} missing from sample {key!r} of {path} "
                                f"(it has {sorted(members)})")
            caption = caption_of(members, caption_key) or ""
            meta = json_member(members["json"]) if "json" in members else {}
            meta["phrases"] = [list(s) for s in extract_noun_phrases(caption, backend=backend)]
            counts["samples"] += 1
            counts["with_phrases" if meta["phrases"] else "without_phrases"] += 1
            yield key, {**members, "json": _json_bytes(meta)}

    for path in shards:
        target = os.path.join(out_dir, os.path.basename(path))
        if os.path.abspath(target) == os.path.abspath(path):
            raise DataError(f"out_dir: would overwrite the input shard {path}")
        write_shard(target, annotated(path))
    return counts
