"""Zero-shot image-text retrieval (spec section 7): R@1/5/10 in both directions.

Tensor level: :func:`retrieval_recalls` on a similarity matrix. Model level:
:func:`evaluate_retrieval` encodes a split's images and captions (global [CLS] embeddings,
cosine similarity) and calls it.

Ties are counted against the model (pessimistic): a wrong candidate that scores exactly as
high as the best right one ranks before it, so a constant model gets chance-level recall,
never 100%.
"""
from __future__ import annotations

from typing import Sequence

import torch

from shapley_kernels.checks import check_finite, check_tensor

from .encode import encode_image_array, encode_text_list

RECALL_KS = (1, 5, 10)


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive ints, got {ks!r}")
    return ks


def retrieval_recalls(sim: torch.Tensor, text_image: torch.Tensor, ks: Sequence[int] = RECALL_KS) -> dict:
    """Recall@k (in percent) of image->text and text->image retrieval.

    sim: float[N_img, N_txt] similarity of every image to every caption; text_image:
    long[N_txt], the image each caption belongs to (every image needs at least one caption).
    Image->text: an image is a hit at k when one of its captions ranks in the top k among all
    captions. Text->image: a caption is a hit when its image ranks in the top k.
    Returns ``{"i2t_r1": ..., "t2i_r1": ..., ...}`` (one pair per k) plus ``"rsum"`` of all of them.
    """
    check_tensor("sim", sim, dims=2, dtype_kind="float")
    check_finite("sim", sim)
    check_tensor("text_image", text_image, dims=1, dtype_kind="int")
    ks = _check_ks(ks)
    n_img, n_txt = sim.shape
    if text_image.shape[0] != n_txt:
        raise ValueError(f"text_image must have one entry per column of sim ({n_txt}), got {text_image.shape[0]}")
    if n_txt and (int(text_image.min()) < 0 or int(text_image.max()) >= n_img):
        raise ValueError(f"text_image must hold image indices in [0, {n_img}), got range "
                         f"[{int(text_image.min())}, {int(text_image.max())}]")
    text_image = text_image.to(sim.device)
    positive = torch.zeros_like(sim, dtype=torch.bool)
    positive[text_image, torch.arange(n_txt, device=sim.device)] = True
    if not bool(positive.any(dim=1).all()):
        missing = (~positive.any(dim=1)).nonzero()[0].item()
        raise ValueError(f"text_image: image {missing} has no caption")
    sim = sim.double()
    # image -> text: rank of the best caption = number of wrong captions scoring >= it
    best = sim.masked_fill(~positive, float("-inf")).max(dim=1).values
    i2t_rank = ((sim >= best[:, None]) & ~positive).sum(dim=1)
    # text -> image: rank of the caption's image = number of other images scoring >= it
    own = sim[text_image, torch.arange(n_txt, device=sim.device)]
    t2i_rank = ((sim >= own[None, :]) & ~positive).sum(dim=0)
    out = {}
    for k in ks:
        out[f"i2t_r{k}"] = 100.0 * float((i2t_rank < k).double().mean())
        out[f"t2i_r{k}"] = 100.0 * float((t2i_rank < k).double().mean())
    out["rsum"] = sum(out.values())
    return out


def evaluate_retrieval(model, split, tokenizer, *, device="cpu", batch_size: int = 64,
                       progress=None) -> dict:
    """Model level: R@1/5/10 both ways on a retrieval split.

    split: ``RetrievalSplit`` from ``loupe_core.data.eval_splits.load_retrieval_split`` (uint8
    images ``[N, S, S, 3]`` and captions with the image index of each).
    """
    img = encode_image_array(model, split.images, device=device, batch_size=batch_size,
                             progress=progress, desc="retrieval images")
    txt = encode_text_list(model, tokenizer, split.captions, device=device, batch_size=batch_size,
                           progress=progress, desc="retrieval captions")
    return retrieval_recalls(img @ txt.T, torch.as_tensor(split.caption_image, dtype=torch.long))
