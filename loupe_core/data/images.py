"""Image decoding, resizing and normalisation shared by every loader.

Images travel as uint8 arrays ``[H, W, 3]`` (RGB) until the last step, ``normalize_image``, which
gives the model's input ``float32[3, H, W]`` normalised with ``IMAGE_MEAN`` / ``IMAGE_STD``
(OpenAI CLIP's per-channel statistics, used for ShapesWorld and real data alike).
"""
from __future__ import annotations

import io

import numpy as np
import torch

IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

_MEAN = torch.tensor(IMAGE_MEAN, dtype=torch.float32).view(3, 1, 1)
_STD = torch.tensor(IMAGE_STD, dtype=torch.float32).view(3, 1, 1)


def normalize_image(image: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` (or ``[N, H, W, 3]``) -> float32 ``[3, H, W]`` (``[N, 3, H, W]``), normalised."""
    x = torch.tensor(np.asarray(image, dtype=np.uint8), dtype=torch.float32).div_(255.0)  # a copy: inputs may be read-only
    x = x.movedim(-1, -3)
    return (x - _MEAN) / _STD


def resize_center_crop(img, size: int) -> np.ndarray:
    """PIL image -> uint8 ``[size, size, 3]``: shorter side resized to ``size`` (bicubic), centre crop."""
    from PIL import Image

    img = img.convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def resize_stretch(img, size: int) -> tuple[np.ndarray, tuple[float, float]]:
    """PIL image -> (uint8 ``[size, size, 3]``, (sx, sy)): whole image resized to a square, no crop.

    Used for detection / grounding, where boxes must keep their content; a box in the original
    pixels maps to the resized image as ``x * sx``, ``y * sy``.
    """
    from PIL import Image

    img = img.convert("RGB")
    w, h = img.size
    if (w, h) != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.uint8), (size / w, size / h)


def decode_image(data: bytes, size: int) -> np.ndarray:
    """Encoded image bytes (JPEG, PNG, ...) -> uint8 ``[size, size, 3]`` (``resize_center_crop``).

    Raises whatever PIL raises on corrupt bytes (``PIL.UnidentifiedImageError``, ``OSError``).
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return resize_center_crop(img, size)


def encode_png(image: np.ndarray) -> bytes:
    """uint8 ``[H, W, 3]`` -> PNG bytes (lossless, so ShapesWorld shards keep exact pixels)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image), mode="RGB").save(buf, format="PNG")
    return buf.getvalue()
