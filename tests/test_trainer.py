"""The training loop: learning, exact resume, cached-feature accumulation, NaN stop."""
import json
import math
import os

import pytest
import torch

from _trainer_helpers import PairData, PairModel, collate, pair_config, shapesworld_run
from loupe_core.config import load_config
from loupe_core.errors import DivergenceError
from loupe_core.train import checkpoint as ckpt
from loupe_core.train.distributed import DistContext
from loupe_core.train.trainer import _StepRunner, train
from loupe_core.objective.losses import ContrastiveBank
from loupe_core.objective import LoupeObjective


def _fresh(seed=0, **kw):
    torch.manual_seed(seed)
    return PairModel(**kw)


def test_loss_falls_on_a_fixed_batch(tmp_path):
    cfg = pair_config(steps=25, schedule="constant", lr=1e-2, batch_size=8)
    res = train(cfg, str(tmp_path), _fresh(dropout=0.0), PairData(8), collate)
    assert all(math.isfinite(x) for x in res.losses)
    assert res.losses[-1] < 0.7 * res.losses[0]
    records = [json.loads(line) for line in open(res.history_path)]
    assert [r["step"] for r in records] == list(range(1, 26))
    assert {"loss", "loss/cmc", "loss/local", "log/scale", "train/lr", "train/samples_per_s"} <= set(records[0])
    assert os.path.exists(os.path.join(tmp_path, "metrics.csv"))
    saved = json.load(open(os.path.join(tmp_path, "config.json")))
    assert saved["train"]["steps"] == 25 and saved["train"]["lr"] == 1e-2


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    cfg = pair_config(steps=6, batch_size=8, ckpt_every=1)
    data = PairData(20)  # 2 steps per epoch: the resume crosses an epoch boundary
    full = train(cfg, str(tmp_path / "full"), _fresh(), data, collate)
    first = train(cfg, str(tmp_path / "cut"), _fresh(), data, collate, stop_at=3)
    assert first.step == 3 and len(first.losses) == 3
    resume = ckpt.resolve_resume("latest", str(tmp_path / "cut"))
    assert resume.endswith("step_00000003.pt")
    second = train(cfg, str(tmp_path / "cut"), _fresh(seed=123), data, collate, resume=resume)
    resumed = first.losses + second.losses
    assert len(resumed) == 6
    for a, b in zip(full.losses, resumed):
        assert abs(a - b) <= 1e-6 * abs(a)
    for p, q in zip(full.model.parameters(), second.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=0)
    history = [json.loads(line)["step"] for line in open(second.history_path)]
    assert history == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("local", [False, True])
def test_accumulation_matches_the_full_batch(local):
    """accum 2 x half batch == one full batch: the loss and every gradient, to 1e-5."""
    data = PairData(8)
    full_batch = collate([data[i] for i in range(8)])
    halves = [collate([data[i] for i in range(4)]), collate([data[i] for i in range(4, 8)])]
    results = []
    for accum, micros in ((1, [full_batch]), (2, halves)):
        cfg = pair_config(accum_steps=accum)
        model = _fresh(local=local, dropout=0.0)
        runner = _StepRunner(cfg, model, model, DistContext(), ContrastiveBank)
        means, _ = runner.run(micros, step=0, total=1)
        results.append((means, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (m1, g1), (m2, g2) = results
    assert runner.use_bank
    for name in m1:
        assert abs(m1[name] - m2[name]) <= 1e-5 * abs(m1[name]), name
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], rtol=1e-5, atol=1e-7)


def test_accumulation_gradient_equals_float64_full_batch_loss():
    """The independent reference: autograd of the plain full-batch CLIP loss in float64."""
    data = PairData(8)
    batch = collate([data[i] for i in range(8)])
    model = _fresh(local=False, dropout=0.0)
    ref = _fresh(local=False, dropout=0.0).double()
    img, txt = ref.embed({**batch, "images": batch["images"].double()})
    logits = ref.logit_scale.exp() * img @ txt.t()
    labels = torch.arange(8)
    loss = 0.5 * (torch.nn.functional.cross_entropy(logits, labels)
                  + torch.nn.functional.cross_entropy(logits.t(), labels))
    loss.backward()
    cfg = pair_config(accum_steps=4)
    micros = [collate([data[i] for i in range(j, j + 2)]) for j in range(0, 8, 2)]
    means, _ = _StepRunner(cfg, model, model, DistContext(), ContrastiveBank).run(micros, step=0, total=1)
    assert abs(means["cmc"] - loss.item()) <= 1e-5 * loss.item()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad.float(), rtol=1e-4, atol=1e-6)


def test_nan_loss_stops_naming_step_and_term(tmp_path):
    cfg = pair_config(steps=6, ckpt_every=1)
    with pytest.raises(DivergenceError, match=r"step 3: term 'cmc'.*step_00000002\.pt"):
        train(cfg, str(tmp_path), _fresh(nan_at=3), PairData(16), collate)
    last = ckpt.latest_checkpoint(str(tmp_path))
    state = ckpt.load_checkpoint(last)
    assert state["step"] == 2
    fresh = PairModel()
    fresh.load_state_dict(state["model"])
    assert all(torch.isfinite(p).all() for p in fresh.parameters())
    steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]
    assert steps == [1, 2]


def test_resume_with_a_different_schedule_length_is_refused(tmp_path):
    cfg = pair_config(steps=4)
    train(cfg, str(tmp_path), _fresh(), PairData(16), collate, stop_at=2)
    longer = pair_config(steps=8)
    with pytest.raises(ValueError, match="schedule cannot be stretched"):
        train(longer, str(tmp_path), _fresh(), PairData(16), collate,
              resume=ckpt.latest_checkpoint(str(tmp_path)))


def test_onecycle_schedule_follows_spec_section_6(tmp_path):
    cfg = pair_config(steps=40, lr=2e-4)
    res = train(cfg, str(tmp_path), _fresh(), PairData(16), collate)
    records = [json.loads(line) for line in open(res.history_path)]
    lrs = [r["train/lr"] for r in records]
    betas = [r["train/beta1"] for r in records]
    assert max(lrs) == pytest.approx(2e-4) and lrs[0] == pytest.approx(2e-4 / 25)
    assert max(betas) == pytest.approx(0.95) and min(betas) == pytest.approx(0.85, abs=1e-3)


class _Stream(torch.utils.data.IterableDataset):
    """PairData replayed in a fixed order, forever (a deterministic stream)."""

    def __init__(self, data):
        self.data = data

    def __iter__(self):
        while True:
            yield from (self.data[i] for i in range(len(self.data)))


def test_streaming_data_trains_and_resumes_exactly(tmp_path):
    stream = _Stream(PairData(12))
    with pytest.raises(ValueError, match="train.steps must be set"):
        train(pair_config(steps=0), str(tmp_path / "x"), _fresh(), stream, collate)
    cfg = pair_config(steps=4, batch_size=8, accum_steps=2)
    full = train(cfg, str(tmp_path / "full"), _fresh(), stream, collate)
    first = train(cfg, str(tmp_path / "cut"), _fresh(), stream, collate, stop_at=2)
    second = train(cfg, str(tmp_path / "cut"), _fresh(), stream, collate,
                   resume=ckpt.latest_checkpoint(str(tmp_path / "cut")))
    for a, b in zip(full.losses, first.losses + second.losses):
        assert abs(a - b) <= 1e-6 * abs(a)


def test_loupe_model_resume_is_exact_with_hybrid_labels_and_dropout(tmp_path):
    """Full LOUPE (CMC + TSA by the UNSIL hybrid + FSA exact), text dropout 0.1, 2 micro-batches."""
    root = str(tmp_path / "cache")
    over = ("train.steps=4", "train.ckpt_every=1", "train.accum_steps=2", "loss.warmup_fraction=0.25",
            "model.text_dropout=0.1")
    cfg, model, data = shapesworld_run(root, *over)
    assert cfg.loss.unsil and cfg.model.text_dropout > 0
    full = train(cfg, str(tmp_path / "full"), model, data.train, data.collate)
    cfg, model, data = shapesworld_run(root, *over)
    first = train(cfg, str(tmp_path / "cut"), model, data.train, data.collate, stop_at=2)
    cfg, model, data = shapesworld_run(root, *over)
    second = train(cfg, str(tmp_path / "cut"), model, data.train, data.collate,
                   resume=ckpt.latest_checkpoint(str(tmp_path / "cut")))
    assert len(full.losses) == 4 and all(math.isfinite(x) for x in full.losses)
    for a, b in zip(full.losses, first.losses + second.losses):
        assert abs(a - b) <= 1e-6 * abs(a)
    history = [json.loads(line) for line in open(full.history_path)]
    assert {"loss/cmc", "loss/tsa", "loss/fsa", "loss/unsil"} <= set(history[-1])


def test_loupe_model_accumulation_matches_the_full_batch_on_cmc(tmp_path):
    """Cached-feature accumulation (2 micro-batches) gives the full batch's L_CMC and gradients.

    float64: to 1e-9 entrywise (only the summation order differs), which shows the method is
    exact. float32 (spec section 6): loss to 1e-5, and the whole gradient vector within 1e-5
    (of its norm) of the float64 full-batch gradient, the same bound the float32 full batch
    itself meets; entrywise, float32 sums in another order differ by ~1e-5 relative on
    gradients that are small differences of large per-sample terms (biases, the logit scale).
    """
    cfg, _, data = shapesworld_run(str(tmp_path / "cache"), "loss.tsa=false", "loss.fsa=false",
                                   "loss.unsil=false", "model.text_dropout=0.0")
    batch = [data.train[i] for i in range(8)]
    splits = {1: [batch], 2: [batch[:4], batch[4:]]}

    def step(dtype, accum):
        cfg.train.accum_steps = accum
        torch.manual_seed(0)
        model = LoupeObjective(cfg.model, cfg.loss).to(dtype)
        micros = [{k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v
                   for k, v in data.collate(part).items()} for part in splits[accum]]
        means, _ = _StepRunner(cfg, model, model, DistContext(), ContrastiveBank).run(micros, step=0, total=1)
        grads = {n: p.grad for n, p in sorted(model.named_parameters()) if p.grad is not None}
        assert len(grads) > 10 and all(g.dtype == dtype for g in grads.values())
        return means["cmc"], grads

    (l64, g64), (l64_acc, g64_acc) = step(torch.float64, 1), step(torch.float64, 2)
    assert g64.keys() == g64_acc.keys() and abs(l64 - l64_acc) <= 1e-12 * l64
    for name in g64:
        torch.testing.assert_close(g64_acc[name], g64[name], rtol=1e-9, atol=1e-9 * float(g64[name].abs().max()))
    reference = torch.cat([g.flatten() for g in g64.values()])
    for accum in (1, 2):
        loss, grads = step(torch.float32, accum)
        assert grads.keys() == g64.keys() and abs(loss - l64) <= 1e-5 * l64
        flat = torch.cat([g.double().flatten() for g in grads.values()])
        assert float((flat - reference).norm()) <= 1e-5 * float(reference.norm()), accum


def test_webdataset_shards_train_and_resume_exactly(tmp_path):
    """data.dataset=webdataset: a resampled shard stream of ready micro-batches; resume replays it."""
    from loupe_core.data.shards import write_shapesworld_shards
    from loupe_core.pipeline import build_data

    root = str(tmp_path / "cache")
    cfg, _, sw = shapesworld_run(root)  # its tokenizer and evaluation files stand in for real ones
    shards = write_shapesworld_shards(str(tmp_path / "shards"), 24, image_size=cfg.model.image_size, shard_size=8)
    sw.tokenizer.save(str(tmp_path / "tokenizer.json"))
    over = ["data.dataset=webdataset", f"data.train_shards={tmp_path}/shards/shapes-{{000000..000002}}.tar",
            f"data.tokenizer={tmp_path}/tokenizer.json", "data.shuffle_buffer=4",
            f"data.eval_paths={json.dumps(sw.eval_paths)}", "train.steps=2", "loss.tsa=false", "loss.unsil=false"]
    assert len(shards) == 3
    runs = []
    for stop in (None, 1, None):
        cfg, model, data = shapesworld_run(root, *over)
        assert data.collate is None and data.eval_paths == sw.eval_paths
        resume = ckpt.latest_checkpoint(str(tmp_path / "cut")) if len(runs) == 2 else None
        out = str(tmp_path / ("full" if not runs else "cut"))
        runs.append(train(cfg, out, model, data.train, None, resume=resume, stop_at=stop).losses)
    assert len(runs[0]) == 2 and all(math.isfinite(x) for x in runs[0])
    for a, b in zip(runs[0], runs[1] + runs[2]):
        assert abs(a - b) <= 1e-6 * abs(a)
    with pytest.raises(ValueError, match="data.tokenizer must be set"):
        build_data(load_config("tiny", ["data.dataset=webdataset", "data.train_shards=x.tar"]), DistContext())


class _RaisingModel(PairModel):
    """PairModel whose forward raises ``exc`` at step 2 (1-based)."""

    def __init__(self, exc):
        super().__init__()
        self.exc = exc

    def forward(self, batch, step=None, embed_only=False):
        if not embed_only and step.index == 1:
            raise self.exc
        return super().forward(batch, step, embed_only)


def test_divergence_is_told_by_type_not_by_message(tmp_path):
    """A forward's DivergenceError stops the run naming the step; a ValueError whose text says NaN is
    not divergence and surfaces unchanged."""
    cfg = pair_config(steps=4, ckpt_every=1)
    torch.manual_seed(0)
    with pytest.raises(DivergenceError, match=r"step 2: term 'forward pass'.*features diverged.*step_00000001\.pt"):
        train(cfg, str(tmp_path / "a"), _RaisingModel(DivergenceError("the features diverged")), PairData(16), collate)
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="^x contains NaN values$"):
        train(cfg, str(tmp_path / "b"), _RaisingModel(ValueError("x contains NaN values")), PairData(16), collate)
