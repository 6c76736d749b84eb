"""One HTML page per run (``<run_dir>/report/index.html``) with the metrics and every picture.

Pictures (PNG, under ``<run_dir>/report/``): training curves from the run's ``metrics.jsonl``;
for the first ``num_examples`` pairs of the retrieval split, Fig. 5 left (regions with their
token-level interactions and confidences) and Fig. 5 right (alignment matrix beside the
semantic-level interactions); Fig. 3a (instability of the sampling estimator against samples
per target) on the first example's alignment game and on random logits (K=8, M=6).
"""
from __future__ import annotations

import html
import os
from typing import Optional

import torch

from loupe_core.eval.splits import load_split

from .curves import instability_curve, plot_instability, plot_training_curves
from .matrices import alignment_figure, pair_interactions
from .pair import inspect_pair
from .regions import region_interaction_figure

RANDOM_GAME_SHAPE = (8, 6)


def _examples(model, eval_paths, num_examples: int):
    """(images uint8 [n, S, S, 3], captions) of the first pairs of the retrieval split."""
    split = load_split(eval_paths, "retrieval", model.config.image_size)
    first = {}
    for caption, image in zip(split.captions, split.caption_image):
        first.setdefault(int(image), caption)
        if len(first) == num_examples:
            break
    index = sorted(first)
    return [split.images[i] for i in index], [first[i] for i in index]


def _instability_curves(view, *, sample_counts, seeds) -> dict:
    g = torch.Generator().manual_seed(0)
    K, M = RANDOM_GAME_SHAPE
    random_A = 5.0 * torch.randn(1, K, M, generator=g, dtype=torch.float64)
    ones = torch.ones
    curves = {f"random logits K={K}, M={M}": instability_curve(
        random_A, ones(1, K, dtype=torch.bool), ones(1, M, dtype=torch.bool), sample_counts=sample_counts, seeds=seeds)}
    phrase_mask = view.batch["phrase_mask"].cpu()
    A = view.A.detach().double().cpu().contiguous()
    region_mask = ones(A.shape[:2], dtype=torch.bool)
    # instability is undefined where every interaction is exactly 0 (no phrase, or one region)
    if bool(phrase_mask.any()) and float(pair_interactions(view).abs().max()) > 0:
        curves["model, example 0"] = instability_curve(A, region_mask, phrase_mask, sample_counts=sample_counts,
                                                       seeds=seeds)
    return curves


def _metrics_table(metrics: dict) -> str:
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{float(v):.2f}</td></tr>"
                   for k, v in sorted(metrics.items()))
    return f"<table border='1' cellpadding='4'><tr><th>metric</th><th>value</th></tr>{rows}</table>"


def write_run_report(run_dir: str, *, model, tokenizer, eval_paths, metrics: dict,
                     history_path: Optional[str], num_examples: int = 2, num_samples: int = 64,
                     sample_counts=(10, 30, 100, 300), seeds=(0, 1, 2, 3), device=None,
                     token_baseline: str = "zero") -> str:
    """Write the pictures and ``<run_dir>/report/index.html``; returns the HTML's path.

    model: a ``LoupeModel`` (CONTRACTS s5); tokenizer: ``loupe_core.data.Tokenizer``; eval_paths:
    ``ShapesWorldPaths`` or {task: JSON path}; metrics: name -> number; history_path: the run's
    ``metrics.jsonl`` (None or missing: no training-curve picture). num_samples: samples per region
    of the token-level interactions (the picture's estimate), whose masked players are set to
    ``token_baseline`` (the run's ``loss.token_baseline``).
    """
    out_dir = os.path.join(run_dir, "report")
    os.makedirs(out_dir, exist_ok=True)
    device = device if device is not None else next(model.parameters()).device
    sections = [f"<h2>Metrics</h2>{_metrics_table(metrics) if metrics else '<p>none</p>'}"]
    if history_path is not None and os.path.isfile(history_path):
        plot_training_curves(history_path, os.path.join(out_dir, "training_curves.png"))
        sections.append("<h2>Training curves</h2><img src='training_curves.png'>")
    images, captions = _examples(model, eval_paths, num_examples)
    views = []
    for n, (image, caption) in enumerate(zip(images, captions)):
        view = inspect_pair(model, tokenizer, image, caption, device=device)
        views.append(view)
        region_interaction_figure(model, view, image, os.path.join(out_dir, f"regions_{n}.png"),
                                  num_samples=num_samples, seed=n, baseline=token_baseline)
        alignment_figure(view, os.path.join(out_dir, f"alignment_{n}.png"), seed=n)
        sections.append(f"<h2>Example {n}: {html.escape(caption)}</h2>"
                        f"<img src='regions_{n}.png'> <img src='alignment_{n}.png'>")
    curves = _instability_curves(views[0], sample_counts=sample_counts, seeds=seeds)
    plot_instability(curves, os.path.join(out_dir, "instability.png"))
    sections.append("<h2>Instability of the sampling estimator (Fig. 3a)</h2><img src='instability.png'>")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>LOUPE run report</title></head><body>"
            f"<h1>LOUPE run: {html.escape(os.path.basename(os.path.abspath(run_dir)))}</h1>"
            + "\n".join(sections) + "</body></html>\n")
    path = os.path.join(out_dir, "index.html")
    with open(path, "w") as fh:
        fh.write(page)
    return path
