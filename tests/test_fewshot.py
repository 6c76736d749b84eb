"""Few-shot adaptation (loupe_core.eval.fewshot): Tip-Adapter against loops written from the
formula in float64, CoOp against the written prompts' embeddings, frozen-tower and error checks,
and the ``fewshot`` task end to end on a tiny model."""
import json
import math

import numpy as np
import pytest
import torch

from loupe_core.data import Tokenizer
from loupe_core.data.eval_splits import ClassificationSplit
from loupe_core.data.images import encode_png
from loupe_core.eval import check_tasks, evaluate
from loupe_core.eval.classification import zero_shot_predictions
from loupe_core.eval.encode import encode_text_list, tokenize
from loupe_core.eval.fewshot import (CoOpPrompt, coop_class_embeddings, coop_prompt,
                                     evaluate_fewshot, fit_coop, frozen, sample_support, search_tip_adapter,
                                     tip_adapter_logits, usable_shots, zero_shot_logits)
from _trainer_helpers import tiny_model

CLASSES = ["circle", "square", "red triangle"]
TEMPLATE = "a photo of a {}."


def unit(*shape, seed):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=-1, keepdim=True)


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train(["a photo of a circle.", "a picture of a red triangle.", "a square."])


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model(tokenizer.vocab_size, patch_size=16, text_max_tokens=16, embed_dim=8, top_k=2)


# ----------------------------------------------------------------------------- Tip-Adapter
def reference_tip_logits(query, class_emb, keys, values, alpha, beta):
    """Straight from the formula, one entry at a time, float64."""
    q, w, k, v = (t.double() for t in (query, class_emb, keys, values))
    q, w, k = (t / t.norm(dim=1, keepdim=True) for t in (q, w, k))
    out = torch.zeros(q.shape[0], w.shape[0], dtype=torch.float64)
    for i in range(q.shape[0]):
        for c in range(w.shape[0]):
            zero_shot = 100.0 * sum(float(q[i, j] * w[c, j]) for j in range(q.shape[1]))
            cache = sum(math.exp(-beta * (1.0 - float(q[i] @ k[n]))) * float(v[n, c]) for n in range(k.shape[0]))
            out[i, c] = zero_shot + alpha * cache
    return out


def test_tip_adapter_matches_formula_loop():
    query, class_emb, keys = 2.0 * unit(5, 8, seed=1), unit(3, 8, seed=2), unit(6, 8, seed=3)
    values = torch.nn.functional.one_hot(torch.tensor([0, 0, 1, 1, 2, 2]), 3).float()
    for alpha, beta in ((1.0, 5.5), (3.0, 0.5), (0.2, 12.0)):
        got = tip_adapter_logits(query, class_emb, keys, values, alpha, beta)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, reference_tip_logits(query, class_emb, keys, values, alpha, beta),
                                   rtol=1e-12, atol=1e-10)


def test_alpha_zero_is_zero_shot():
    query, class_emb, keys = unit(7, 8, seed=4), unit(4, 8, seed=5), unit(4, 8, seed=6)
    values = torch.eye(4)
    got = tip_adapter_logits(query, class_emb, keys, values, alpha=0.0, beta=5.5)
    q, w = (t.double() / t.double().norm(dim=1, keepdim=True) for t in (query, class_emb))
    torch.testing.assert_close(got, 100.0 * q @ w.T, rtol=1e-12, atol=1e-10)
    assert torch.equal(got.argmax(dim=1), zero_shot_predictions(query, class_emb))


def test_large_alpha_and_beta_act_as_nearest_neighbour():
    keys = unit(12, 16, seed=7)
    labels = torch.tensor([0, 1, 2, 3] * 3)
    values = torch.nn.functional.one_hot(labels, 4).float()
    near = torch.tensor([5, 0, 11, 3, 7, 2, 9, 1])
    query = keys[near] + 0.05 * unit(8, 16, seed=8)  # each query close to one key
    got = tip_adapter_logits(query, unit(4, 16, seed=9), keys, values, alpha=1e8, beta=100.0).argmax(dim=1)
    nearest = (query / query.norm(dim=1, keepdim=True) @ keys.T).argmax(dim=1)
    assert torch.equal(nearest, near)
    assert torch.equal(got, labels[nearest])


def reference_search(keys, labels, class_emb, alphas, betas):
    """Leave-one-out grid search with the held-out image removed from the cache by hand."""
    best = None
    for beta in betas:
        for alpha in alphas:
            correct = 0
            for i in range(keys.shape[0]):
                rest = [n for n in range(keys.shape[0]) if n != i]
                values = torch.nn.functional.one_hot(labels[rest], class_emb.shape[0]).float()
                logits = reference_tip_logits(keys[i:i + 1], class_emb, keys[rest], values, alpha, beta)
                correct += int(logits.argmax() == labels[i])
            if best is None or correct > best[0] or (correct == best[0] and alpha < best[1]):
                best = (correct, alpha, beta)
    return best[1], best[2]


def test_search_is_leave_one_out_on_the_support_set():
    keys, labels = unit(9, 6, seed=10), torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    class_emb = unit(3, 6, seed=11)
    alphas, betas = (0.0, 1.0, 20.0, 200.0), (1.0, 5.5, 30.0)
    assert search_tip_adapter(keys, labels, class_emb, alphas, betas) == reference_search(
        keys, labels, class_emb, alphas, betas)
    assert search_tip_adapter(keys, labels, class_emb, (0.0,), (5.5,)) == (0.0, 5.5)


def test_sample_support_draws_distinct_shots_of_each_class():
    labels = torch.tensor([2, 0, 1, 0, 2, 1, 0, 2, 1, 0])
    idx = sample_support(labels, 3, 3, seed=0)
    assert idx.dtype == torch.long and idx.shape == (9,)
    assert labels[idx].tolist() == [0] * 3 + [1] * 3 + [2] * 3
    assert len(set(idx.tolist())) == 9
    assert torch.equal(idx, sample_support(labels, 3, 3, seed=0))
    assert any(not torch.equal(sample_support(labels, 2, 3, seed=s), sample_support(labels, 2, 3, seed=0))
               for s in range(1, 6))
    assert usable_shots(labels, 3, (1, 2, 4, 8)) == (1, 2)


@pytest.mark.parametrize("call, name", [
    (lambda: sample_support(torch.tensor([0, 1, 1]), 2, 2, seed=0), "shots"),
    (lambda: sample_support(torch.tensor([0, 1]), 0, 2, seed=0), "shots"),
    (lambda: tip_adapter_logits(unit(2, 4, seed=0), unit(2, 4, seed=1), unit(2, 4, seed=2), torch.eye(2),
                                alpha=-1.0), "alpha"),
    (lambda: tip_adapter_logits(unit(2, 4, seed=0), unit(2, 4, seed=1), unit(2, 4, seed=2), torch.eye(2),
                                beta=-1.0), "beta"),
    (lambda: tip_adapter_logits(unit(2, 4, seed=0), unit(2, 4, seed=1), unit(3, 4, seed=2), torch.eye(2)),
     "values"),
    (lambda: tip_adapter_logits(unit(2, 4, seed=0), unit(2, 5, seed=1), unit(2, 4, seed=2), torch.eye(2)),
     "class_emb"),
    (lambda: tip_adapter_logits(unit(2, 4, seed=0), unit(2, 4, seed=1), unit(2, 3, seed=2), torch.eye(2)),
     "keys"),
    (lambda: search_tip_adapter(unit(2, 4, seed=0), torch.tensor([0, 1]), unit(2, 4, seed=1), (-1.0,), (1.0,)),
     "alphas"),
    (lambda: search_tip_adapter(unit(2, 4, seed=0), torch.tensor([0, 2]), unit(2, 4, seed=1)), "labels"),
    (lambda: search_tip_adapter(unit(2, 4, seed=0), torch.tensor([0, 1]), unit(2, 4, seed=1), (), (1.0,)), "alphas"),
])
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


# ----------------------------------------------------------------------------- CoOp
def test_encode_text_embeddings_is_encode_texts_after_embed_tokens(model, tokenizer):
    ids, mask = tokenize(tokenizer, ["a red circle.", "a square."], 16)
    with torch.no_grad():
        direct = model.encode_texts(ids, mask)
        split = model.encode_text_embeddings(model.text_tower.embed_tokens(ids), mask)
    assert torch.equal(direct.global_emb, split.global_emb) and torch.equal(direct.token_emb, split.token_emb)
    with pytest.raises(ValueError, match="text_mask"):
        model.encode_text_embeddings(model.text_tower.embed_tokens(ids), mask[:, :-1])


def test_template_context_reproduces_the_written_prompts(model, tokenizer):
    prompt = coop_prompt(model, tokenizer, CLASSES, TEMPLATE)
    assert prompt.context.shape == (len(tokenizer.encode("a photo of a")[0]), 16)
    with torch.no_grad():
        got = coop_class_embeddings(model, prompt)
    written = encode_text_list(model, tokenizer, [TEMPLATE.format(c) for c in CLASSES], progress=False)
    torch.testing.assert_close(got, written, rtol=1e-5, atol=1e-6)


def separable_support(model, tokenizer, per_class=4):
    """Support embeddings near the written prompts' embeddings, class i near a different class's
    prompt (so the initial prompt is wrong and the context has something to learn)."""
    written = encode_text_list(model, tokenizer, [TEMPLATE.format(c) for c in CLASSES], progress=False)
    centres = torch.nn.functional.normalize(written.roll(1, dims=0) + unit(3, 8, seed=12), dim=-1)
    labels = torch.arange(3).repeat_interleave(per_class)
    x = torch.nn.functional.normalize(centres[labels] + 0.05 * unit(len(labels), 8, seed=13), dim=-1)
    return x, labels


def coop_loss(model, prompt, context, x, labels):
    with torch.no_grad():
        class_emb = coop_class_embeddings(model, prompt, context)
        return float(torch.nn.functional.cross_entropy(model.contrastive_scale().detach() * x @ class_emb.T, labels))


def test_coop_trains_only_the_context(model, tokenizer):
    prompt = coop_prompt(model, tokenizer, CLASSES, TEMPLATE)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    x, labels = separable_support(model, tokenizer)
    context = fit_coop(model, prompt, x, labels, steps=5, lr=1e-2)
    assert not torch.equal(context, prompt.context)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == flags and not model.training


def test_coop_learns_separable_data_from_a_random_context(model, tokenizer):
    prompt = coop_prompt(model, tokenizer, CLASSES, TEMPLATE, context_length=3, seed=1)
    assert prompt.context.shape == (3, 16) and float(prompt.context.std()) < 0.05
    x, labels = separable_support(model, tokenizer)
    context = fit_coop(model, prompt, x, labels, steps=60, lr=5e-2)
    assert coop_loss(model, prompt, context, x, labels) < coop_loss(model, prompt, prompt.context, x, labels)
    with torch.no_grad():
        accuracy = float((zero_shot_logits(x, coop_class_embeddings(model, prompt, context)).argmax(1) == labels)
                         .double().mean())
    assert accuracy >= 1.0 / len(CLASSES)


def test_frozen_restores_the_model(model):
    model.train()
    model.logit_scale.requires_grad_(False)
    with frozen(model):
        assert not model.training and not any(p.requires_grad for p in model.parameters())
        assert torch.is_grad_enabled()
    assert model.training and not model.logit_scale.requires_grad
    assert model.region_logit_scale.requires_grad
    model.logit_scale.requires_grad_(True)
    model.eval()


@pytest.mark.parametrize("kwargs, name", [
    (dict(steps=-1), "steps"), (dict(lr=0.0), "lr"), (dict(labels=torch.tensor([0, 3])), "support_labels"),
    (dict(labels=torch.tensor([0, 1, 2])), "support_labels")])
def test_coop_bad_input_names_the_argument(model, tokenizer, kwargs, name):
    prompt = coop_prompt(model, tokenizer, CLASSES, TEMPLATE)
    labels = kwargs.pop("labels", torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=name):
        fit_coop(model, prompt, unit(2, 8, seed=0), labels, **kwargs)


def test_coop_prompt_bad_input(model, tokenizer):
    with pytest.raises(ValueError, match="template"):
        coop_prompt(model, tokenizer, CLASSES, "a photo")
    with pytest.raises(ValueError, match="template"):
        coop_prompt(model, tokenizer, CLASSES, "{}.")
    with pytest.raises(ValueError, match="context_length"):
        coop_prompt(model, tokenizer, CLASSES, TEMPLATE, context_length=0)
    with pytest.raises(ValueError, match="context"):
        coop_class_embeddings(model, CoOpPrompt(torch.zeros(2, 5), *tokenize(tokenizer, ["circle."], 16)))


# ----------------------------------------------------------------------------- model level
def synthetic_split(n, seed):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    images[np.arange(n), :, :, labels] = 255  # the class in one colour channel
    return ClassificationSplit(images, labels.astype(np.int64), list(CLASSES), [TEMPLATE, "a {}."])


def test_evaluate_fewshot_reports_each_shot(model, tokenizer):
    support, query = synthetic_split(9, seed=0), synthetic_split(6, seed=1)
    out = evaluate_fewshot(model, support, query, tokenizer, seeds=(0, 1), coop_steps=2, batch_size=4,
                           progress=False)
    names = {"zero_shot_top1", "zero_shot_coop_template_top1"} | {
        f"{m}_k{k}{s}" for m in ("tip_adapter", "tip_adapter_tuned", "coop") for k in (1, 2) for s in ("", "_std")}
    assert set(out) == names
    assert all(0.0 <= v <= 100.0 for v in out.values())
    with pytest.raises(ValueError, match="shots"):
        evaluate_fewshot(model, support, query, tokenizer, shots=(4,), seeds=(0,), coop_steps=1, progress=False)


def write_split(folder, name, split):
    entries = []
    (folder / "images").mkdir(exist_ok=True)
    for i, (image, label) in enumerate(zip(split.images, split.labels)):
        (folder / "images" / f"{name}_{i}.png").write_bytes(encode_png(image))
        entries.append({"file_name": f"{name}_{i}.png", "label": int(label)})
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"classes": split.classes, "templates": split.templates, "images": entries}))
    return str(path)


def test_fewshot_task_runs_only_when_named(model, tokenizer, tmp_path):
    assert "fewshot" not in check_tasks("all") and check_tasks(["all", "fewshot"])[-1] == "fewshot"
    files = {"fewshot_support": write_split(tmp_path, "support", synthetic_split(6, seed=2)),
             "fewshot_query": write_split(tmp_path, "query", synthetic_split(3, seed=3))}
    metrics = evaluate(model, files, tokenizer, tasks=("fewshot",), batch_size=4, progress=False)
    assert {"fewshot/zero_shot_top1", "fewshot/tip_adapter_k2", "fewshot/coop_k1_std"} <= set(metrics)
    assert "fewshot/tip_adapter_k4" not in metrics  # 2 images a class: K = 1, 2 only
