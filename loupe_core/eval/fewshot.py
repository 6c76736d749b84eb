"""Few-shot adaptation of the zero-shot classifier: Tip-Adapter and CoOp (issue 16).

Both start from K labelled images per class (the *support set*, :func:`sample_support`, drawn
from a split other than the one scored) and the frozen encoders.

- Tip-Adapter (Zhang et al. 2022), training-free: a cache with keys = the support images'
  L2-normalised embeddings float[NK, d] and values = their one-hot labels float[NK, C]; a query
  f scores ``100 f W^T + alpha exp(-beta (1 - f keys^T)) values`` (W: the zero-shot class
  embeddings). :func:`search_tip_adapter` picks (alpha, beta) from a small grid by
  leave-one-out accuracy on the support set itself (each support image scored by the cache of
  the others), never on the scored split.
- CoOp (Zhou et al. 2022), unified context: M learned vectors replace the template words at the
  token-embedding level (``[ctx_1 .. ctx_M] + tokens of "{class}."``, positions as in the
  written prompt); the text tower is frozen and only the context is trained, by full-batch Adam
  on the cross-entropy of ``contrastive_scale() x`` cosine logits of the support set.

Model level: :func:`evaluate_fewshot` (zero-shot, Tip-Adapter with the paper's alpha=1,
beta=5.5, Tip-Adapter tuned, CoOp; each K, mean and sample std over the support seeds).
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from loupe_core.progress import progress as progress_report
from shapley_kernels.checks import check_count, check_finite, check_tensor

from .classification import encode_classes, top1_accuracy
from .encode import encode_image_array, evaluating, tokenize

ZERO_SHOT_SCALE = 100.0  # CLIP's zero-shot logit scale, as Tip-Adapter writes it
TIP_ALPHA, TIP_BETA = 1.0, 5.5  # the paper's defaults
TIP_ALPHAS = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0)
TIP_BETAS = (1.0, 3.0, 5.5, 8.0, 12.0)
COOP_TEMPLATE = "a photo of a {}."
COOP_STEPS = 200
COOP_LR = 1e-3
COOP_INIT_STD = 0.02
SHOTS = (1, 2, 4, 8, 16)
SEEDS = (0, 1, 2)


def _check_embeddings(name: str, x: torch.Tensor, width: Optional[int] = None) -> None:
    check_tensor(name, x, dims=2, dtype_kind="float")
    check_finite(name, x)
    if x.shape[0] == 0 or (width is not None and x.shape[1] != width):
        raise ValueError(f"{name} must be non-empty with width {width}, got shape {list(x.shape)}")


def sample_support(labels: torch.Tensor, shots: int, num_classes: int, seed: int) -> torch.Tensor:
    """long[num_classes * shots]: indices into labels long[N] of ``shots`` distinct images of each
    class (class-major order), drawn by ``numpy.random.default_rng(seed)``."""
    check_tensor("labels", labels, dims=1, dtype_kind="int")
    shots = check_count("shots", shots)
    num_classes = check_count("num_classes", num_classes)
    y = labels.cpu().numpy()
    rng = np.random.default_rng(seed)
    picks = []
    for c in range(num_classes):
        members = np.flatnonzero(y == c)
        if len(members) < shots:
            raise ValueError(f"shots={shots} is more than the {len(members)} images of class {c}")
        picks.append(rng.choice(members, size=shots, replace=False))
    return torch.as_tensor(np.concatenate(picks), dtype=torch.long)


def zero_shot_logits(image_emb: torch.Tensor, class_emb: torch.Tensor) -> torch.Tensor:
    """float64[N, C] = ZERO_SHOT_SCALE x cosine of image_emb float[N, d] and class_emb float[C, d]."""
    return ZERO_SHOT_SCALE * F.normalize(image_emb.double(), dim=-1) @ F.normalize(class_emb.double(), dim=-1).T


def cache_weights(query: torch.Tensor, keys: torch.Tensor, beta: float) -> torch.Tensor:
    """float64[N, NK] = exp(-beta (1 - cos(query, keys))); query float[N, d], keys float[NK, d]."""
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    affinity = F.normalize(query.double(), dim=-1) @ F.normalize(keys.double(), dim=-1).T
    return torch.exp(-beta * (1.0 - affinity))


def _check_cache(query, class_emb, keys, values) -> None:
    _check_embeddings("query", query)
    _check_embeddings("class_emb", class_emb, query.shape[1])
    _check_embeddings("keys", keys, query.shape[1])
    _check_embeddings("values", values, class_emb.shape[0])
    if values.shape[0] != keys.shape[0]:
        raise ValueError(f"values must have one row per key ({keys.shape[0]}), got {values.shape[0]}")


def tip_adapter_logits(query: torch.Tensor, class_emb: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                       alpha: float = TIP_ALPHA, beta: float = TIP_BETA) -> torch.Tensor:
    """Tip-Adapter logits float64[N, C] of query float[N, d]: zero-shot logits (class_emb
    float[C, d]) + alpha x cache_weights(query, keys float[NK, d]) @ values float[NK, C]."""
    _check_cache(query, class_emb, keys, values)
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    return zero_shot_logits(query, class_emb) + alpha * cache_weights(query, keys, beta) @ values.double()


def search_tip_adapter(keys: torch.Tensor, labels: torch.Tensor, class_emb: torch.Tensor,
                       alphas: Sequence[float] = TIP_ALPHAS, betas: Sequence[float] = TIP_BETAS) -> tuple[float, float]:
    """(alpha, beta) of the grid with the best leave-one-out top-1 on the support set: each key
    float[NK, d] (labels long[NK]) is scored with its own cache entry removed. Ties go to the
    smaller alpha, then to the earlier beta (with alpha = 0, beta is ``betas[0]``)."""
    check_tensor("labels", labels, dims=1, dtype_kind="int")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= class_emb.shape[0]):
        raise ValueError(f"labels must lie in [0, {class_emb.shape[0]}), got {labels.tolist()}")
    if not alphas or not betas:
        raise ValueError("alphas and betas must each hold at least one value")
    values = F.one_hot(labels, class_emb.shape[0]).double()
    _check_cache(keys, class_emb, keys, values)
    zero_shot = zero_shot_logits(keys, class_emb)
    best = None
    for beta in betas:
        weights = cache_weights(keys, keys, beta).fill_diagonal_(0.0)
        cached = weights @ values
        for alpha in alphas:
            if alpha < 0:
                raise ValueError(f"alphas must be >= 0, got {alpha}")
            score = top1_accuracy((zero_shot + alpha * cached).argmax(dim=1), labels)
            if best is None or (score, -alpha) > best[0]:
                best = ((score, -alpha), alpha, beta)
    return float(best[1]), float(best[2])


class CoOpPrompt(NamedTuple):
    """CoOp's prompt pieces: context float[M, text_dim] (the learnable vectors, at positions
    0..M-1), class_ids long[C, L_c] with class_mask bool[C, L_c] (each class's tokens of
    ``"{class}."``, padded with 0, after the context)."""

    context: torch.Tensor
    class_ids: torch.Tensor
    class_mask: torch.Tensor


def coop_prompt(model, tokenizer, classes: Sequence[str], template: str = COOP_TEMPLATE,
                context_length: Optional[int] = None, seed: int = 0) -> CoOpPrompt:
    """The prompt of ``template`` (one ``{}``): the context starts as the token embeddings of the
    words before ``{}`` ("a photo of a"), the class part is the tokens of the rest with the class
    name ("{class}."). ``context_length`` M: M random N(0, 0.02) vectors (generator seeded by
    ``seed``) instead of the words. At the initial context, :func:`coop_class_embeddings` is the
    embedding of the written prompt ``template.format(class)`` (when tokenising the two parts
    apart gives the tokens of the whole, as with whitespace-split WordPiece)."""
    if not isinstance(template, str) or template.count("{}") != 1:
        raise ValueError(f"template must hold one '{{}}', got {template!r}")
    if not classes:
        raise ValueError("classes must name at least one class")
    prefix, rest = template[: template.index("{}")].strip(), template[template.index("{}"):]
    max_tokens = model.config.text_max_tokens
    class_ids, class_mask = tokenize(tokenizer, [rest.format(c) for c in classes], max_tokens)
    if context_length is None:
        ids, mask = tokenize(tokenizer, [prefix], max_tokens)
        if not bool(mask.any()):
            raise ValueError(f"template {template!r} has no words before '{{}}' to start the context from")
        with torch.no_grad():
            context = model.text_tower.embed_tokens(ids[:, mask[0]].to(model.logit_scale.device))[0]
    else:
        width = model.text_tower.word_embed.embedding_dim
        gen = torch.Generator().manual_seed(seed)
        context = COOP_INIT_STD * torch.randn(check_count("context_length", context_length), width, generator=gen)
        context = context.to(model.logit_scale.device)
    return CoOpPrompt(context.detach().clone(), class_ids.to(context.device), class_mask.to(context.device))


def coop_class_embeddings(model, prompt: CoOpPrompt, context: Optional[torch.Tensor] = None) -> torch.Tensor:
    """float[C, d] (unit rows): the text tower's [CLS] embedding of ``[context] + class tokens``
    for each class; context float[M, text_dim] (default ``prompt.context``), differentiable."""
    context = prompt.context if context is None else context
    check_tensor("context", context, dims=2, dtype_kind="float")
    if context.shape[1] != model.text_tower.word_embed.embedding_dim:
        raise ValueError(f"context must have width {model.text_tower.word_embed.embedding_dim}, "
                         f"got {list(context.shape)}")
    C, M = prompt.class_ids.shape[0], context.shape[0]
    words = model.text_tower.embed_tokens(prompt.class_ids)
    tokens = torch.cat([context.to(words.dtype).expand(C, M, -1), words], dim=1)
    mask = torch.cat([prompt.class_mask.new_ones(C, M), prompt.class_mask], dim=1)
    return model.encode_text_embeddings(tokens, mask).global_emb


@contextlib.contextmanager
def frozen(model):
    """The model in eval mode with gradients enabled and every parameter's ``requires_grad``
    off (restored on exit, with the train flag)."""
    was_training, flags = model.training, [p.requires_grad for p in model.parameters()]
    model.eval().requires_grad_(False)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)


def fit_coop(model, prompt: CoOpPrompt, support_emb: torch.Tensor, support_labels: torch.Tensor, *,
             steps: int = COOP_STEPS, lr: float = COOP_LR) -> torch.Tensor:
    """The trained context float[M, text_dim]: ``steps`` full-batch Adam steps from
    ``prompt.context`` on the cross-entropy of ``contrastive_scale() x support_emb @ class_emb^T``
    (support_emb float[NK, d] L2-normalised image embeddings, support_labels long[NK]); the
    model's parameters are untouched (no gradient reaches them)."""
    num_classes = prompt.class_ids.shape[0]
    _check_embeddings("support_emb", support_emb)
    check_tensor("support_labels", support_labels, dims=1, dtype_kind="int")
    if support_labels.shape[0] != support_emb.shape[0] or int(support_labels.min()) < 0 \
            or int(support_labels.max()) >= num_classes:
        raise ValueError(f"support_labels must hold one class in [0, {num_classes}) per support_emb row "
                         f"({support_emb.shape[0]}), got {list(support_labels.shape)}")
    check_count("steps", steps, 0)
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    device = prompt.context.device
    x, y = support_emb.detach().clone().to(device), support_labels.to(device)  # clone: not an inference tensor
    context = prompt.context.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([context], lr=lr)
    with frozen(model):
        scale = model.contrastive_scale().detach()
        for _ in range(steps):
            class_emb = coop_class_embeddings(model, prompt, context)
            loss = F.cross_entropy(scale * x @ class_emb.to(x.dtype).T, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return context.detach()


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return top1_accuracy(logits.argmax(dim=1).cpu(), labels)


def usable_shots(labels: torch.Tensor, num_classes: int, shots: Sequence[int] = SHOTS) -> tuple[int, ...]:
    """The ``shots`` that every class of labels long[N] has enough images for."""
    fewest = min(int((labels == c).sum()) for c in range(num_classes))
    return tuple(k for k in shots if k <= fewest)


def _mean_std(name: str, values: list[float]) -> dict[str, float]:
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {name: float(np.mean(values)), f"{name}_std": std}


def _one_draw(model, prompt, class_emb, support_x, support_y, query_x, query_y, shots, seed, coop_steps):
    """{method: top-1} of one support draw (``shots`` per class, seed ``seed``)."""
    num_classes = class_emb.shape[0]
    idx = sample_support(support_y, shots, num_classes, seed)
    keys, labels = support_x[idx], support_y[idx]
    values = F.one_hot(labels, num_classes).double()
    alpha, beta = search_tip_adapter(keys, labels, class_emb)
    context = fit_coop(model, prompt, keys, labels, steps=coop_steps)
    with evaluating(model):
        coop_emb = coop_class_embeddings(model, prompt, context).float().cpu()
    return {"tip_adapter": _accuracy(tip_adapter_logits(query_x, class_emb, keys, values), query_y),
            "tip_adapter_tuned": _accuracy(tip_adapter_logits(query_x, class_emb, keys, values, alpha, beta), query_y),
            "coop": _accuracy(zero_shot_logits(query_x, coop_emb), query_y)}


def evaluate_fewshot(model, support_split, query_split, tokenizer, *, shots: Optional[Sequence[int]] = None,
                     seeds: Sequence[int] = SEEDS, coop_steps: int = COOP_STEPS, device="cpu", batch_size: int = 64,
                     progress=None) -> dict:
    """Model level: top-1 (percent) on ``query_split`` of zero-shot (the template ensemble,
    ``zero_shot_top1``; CoOp's template alone, ``zero_shot_coop_template_top1``) and, for each K
    in ``shots`` (default: the ``SHOTS`` the support split allows), the mean over ``seeds`` of
    Tip-Adapter (``tip_adapter_k<K>``), tuned Tip-Adapter (``tip_adapter_tuned_k<K>``) and CoOp
    (``coop_k<K>``), each with ``_std`` (sample std over the seeds). The support images come
    from ``support_split`` (a classification split with the same classes)."""
    if list(support_split.classes) != list(query_split.classes):
        raise ValueError("support_split and query_split must have the same classes")
    classes = list(query_split.classes)
    support_y = torch.as_tensor(support_split.labels, dtype=torch.long)
    query_y = torch.as_tensor(query_split.labels, dtype=torch.long)
    shots = usable_shots(support_y, len(classes)) if shots is None else tuple(shots)
    if not shots:
        raise ValueError("shots: the support split has a class without any image")
    if not seeds:
        raise ValueError("seeds must name at least one support seed")
    common = dict(device=device, batch_size=batch_size, progress=progress)
    class_emb = encode_classes(model, tokenizer, classes, query_split.templates, **common)
    support_x = encode_image_array(model, support_split.images, desc="support images", **common)
    query_x = encode_image_array(model, query_split.images, desc="query images", **common)
    prompt = coop_prompt(model, tokenizer, classes)
    with evaluating(model):
        template_emb = coop_class_embeddings(model, prompt).float().cpu()
    out = {"zero_shot_top1": _accuracy(zero_shot_logits(query_x, class_emb), query_y),
           "zero_shot_coop_template_top1": _accuracy(zero_shot_logits(query_x, template_emb), query_y)}
    draws = {k: [] for k in shots}
    for k, seed in progress_report([(k, seed) for k in shots for seed in seeds], desc="few-shot support draws",
                                   unit="draw", enabled=progress is not False, leave=False):
        draws[k].append(_one_draw(model, prompt, class_emb, support_x, support_y, query_x, query_y, k, seed,
                                  coop_steps))
    for k, of_k in draws.items():
        for method in of_k[0]:
            out.update(_mean_std(f"{method}_k{k}", [d[method] for d in of_k]))
    return out
