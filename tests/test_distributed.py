"""2 processes on gloo see the 1-process global batch: same loss (1e-5 rel) and parameters after a step.

Also the full LOUPE configs (``tiny``: the published method, token-level hybrid labels on
``pairs_per_step`` pairs, UNSIL, L_FSA; ``tiny_default``: dense alignment-game labels and the
fine-grained contrast): every term and the gradient of every step match one process, with one
micro-batch per rank and with two (where one rank of a micro-step holds no labelled pair).
"""
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from _trainer_helpers import PairData, PairModel, collate, pair_config
from loupe_core import global_batch as gb
from loupe_core.errors import DivergenceError
from loupe_core.objective.step import StepContext
from loupe_core.train.distributed import DistContext, init_distributed, shard_bounds, shutdown
from loupe_core.train.trainer import _unused_parameters, train

CASES = ({"accum_steps": 1}, {"accum_steps": 2})  # the model's own gather, and the feature bank
# (config, accum_steps, overrides): the published method (hybrid token labels, UNSIL, L_FSA), the
# default recipe, and Table 4 row 4's sampled-or-UNSIL semantic labels
LOUPE_CASES = tuple((name, accum, ()) for name in ("tiny", "tiny_default") for accum in (1, 2)) + (
    ("tiny", 1, ("loss.semantic_source=hybrid", "loss.semantic_num_samples=8")),)
LOUPE_STEPS = 3  # step 0 is UNSIL's warm-up (all targets sampled), steps 1-2 decide by sigma


class PairModelWithSpare(PairModel):
    """PairModel with a parameter no loss reaches (a config that leaves a part out)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.spare = torch.nn.Linear(2, 2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(case, run_dir, ctx=None, model_cls=PairModel):
    torch.manual_seed(0)
    cfg = pair_config(steps=2, batch_size=8, lr=1e-2, **case)
    res = train(cfg, run_dir, model_cls(dropout=0.0), PairData(16), collate, ctx=ctx)
    return res.losses, [p.detach().clone() for p in res.model.parameters()]


def _loupe_run(name, accum, overrides, root, run_dir, ctx=None):
    """(logged terms per step, gradients per step) of LOUPE_STEPS steps of config ``name``.

    The learning rate is ~0, so the weights stay put: AdamW's first steps move every weight by
    about lr whatever its gradient's size, so on gradients that are rounding noise (the key
    biases of attention, whose exact gradient is 0) two runs would part by lr, not by rounding.
    """
    import loupe_core.train.trainer as trainer
    from loupe_core.config import load_config
    from loupe_core.objective import LoupeObjective
    from loupe_core.pipeline import build_data, seed_everything

    cfg = load_config(name, [f"data.root={root}", "train.device=cpu", "train.tensorboard=false", "eval.final=false",
                             f"train.steps={LOUPE_STEPS}", f"train.accum_steps={accum}", "train.ckpt_every=0",
                             "train.lr=1e-30", *overrides])
    seed_everything(cfg.train.seed)
    data = build_data(cfg, ctx or DistContext())
    model = LoupeObjective(cfg.model, cfg.loss)
    grads, build = [], trainer.build_optimizer

    def recording(module, tc):  # each step's gradients, as the optimiser gets them
        opt = build(module, tc)
        opt.register_step_pre_hook(lambda *_: grads.append(
            {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}))
        return opt

    trainer.build_optimizer = recording
    try:
        res = train(cfg, run_dir, model, data.train, data.collate, ctx=ctx)
    finally:
        trainer.build_optimizer = build
    history = [json.loads(line) for line in open(res.history_path)] if os.path.exists(res.history_path) else []
    terms = [{k: v for k, v in rec.items() if k == "loss" or k.startswith("loss/")} for rec in history]
    return terms, grads


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    import loupe_core.train.trainer as trainer

    searched, wrap = [], trainer.DistributedDataParallel

    def recording(*args, find_unused_parameters=False, **kwargs):  # what each run asked DDP for
        searched.append(find_unused_parameters)
        return wrap(*args, find_unused_parameters=find_unused_parameters, **kwargs)

    trainer.DistributedDataParallel = recording
    results = [_run(case, os.path.join(out_dir, f"run{i}"), ctx) for i, case in enumerate(CASES)]
    spare = _run(CASES[1], os.path.join(out_dir, "spare"), ctx, PairModelWithSpare)
    loupe = [_loupe_run(*case, os.path.join(out_dir, "cache"), os.path.join(out_dir, f"loupe{i}"), ctx)
             for i, case in enumerate(LOUPE_CASES)]
    if rank == 0:
        torch.save({"pairs": results, "spare": spare, "loupe": loupe, "searched": searched},
                   os.path.join(out_dir, "results.pt"))
    shutdown(ctx)


def test_shard_bounds_cover_the_global_batch_once():
    rows = [r for rank in range(3) for a, b in shard_bounds(24, 3, rank, 2) for r in range(a, b)]
    assert sorted(rows) == list(range(24))
    # micro-batch m of every rank together is the one-process micro-batch m
    for m in range(2):
        step = sorted(r for rank in range(3) for r in range(*shard_bounds(24, 3, rank, 2)[m]))
        assert step == list(range(*shard_bounds(24, 1, 0, 2)[m]))
    with pytest.raises(ValueError, match="train.batch_size=10 must be divisible"):
        shard_bounds(10, 2, 0, 3)


@pytest.mark.parametrize("size,budget", [(8, 2), (64, 16), (12, 5), (4, 9)])
def test_the_labelled_pairs_are_one_global_budget_spread_over_the_ranks(size, budget):
    chosen = gb.labelled_rows(size, budget)
    assert len(set(chosen.tolist())) == min(size, budget)
    for world, accum in ((1, 1), (2, 1), (4, 1), (2, 2)):
        if size % (world * accum):
            continue
        held = [rows[gb.label_rows(rows, size, budget)] for rank in range(world)
                for rows in (torch.arange(a, b) for a, b in shard_bounds(size, world, rank, accum))]
        assert sorted(torch.cat(held).tolist()) == chosen.tolist()  # every labelled pair once, on some rank
        if budget >= world and accum == 1 and size == 64:
            assert all(len(h) == budget // world for h in held)  # the ranks share the work


def test_a_pairs_draws_depend_on_its_row_only():
    a = gb.pair_uniforms(7, torch.tensor([3, 5]), 6)
    b = gb.pair_uniforms(7, torch.tensor([5, 3, 9]), 4)
    assert torch.equal(a[0, :4], b[1]) and torch.equal(a[1, :4], b[0]) and not torch.equal(a[0], a[1])
    assert not torch.equal(gb.pair_uniforms(8, torch.tensor([3]), 6)[0], a[0])


def test_token_labels_of_a_pair_do_not_depend_on_its_batch():
    """A pair's sampled token-level scores are the same alone and beside another pair with a longer caption."""
    from loupe_core.objective import labels as lab
    from loupe_core.model import LoupeModel

    torch.manual_seed(0)
    model = LoupeModel(dict(image_size=32, patch_size=8, image_dim=16, image_depth=1, image_heads=2, text_vocab_size=64,
                            text_dim=16, text_depth=1, text_heads=2, text_max_tokens=12, embed_dim=16))
    towers = (model.image_tower, model.text_tower)
    images = model.image_tower.embed_tokens(torch.randn(2, 3, 32, 32)).detach()
    texts = model.text_tower.embed_tokens(torch.randint(1, 64, (2, 9))).detach()
    mask = torch.arange(9)[None] < torch.tensor([[4], [9]])
    regions = torch.zeros(2, 3, 16, dtype=torch.bool)
    regions[:, 0, :2], regions[:, 1, 4:8], regions[:, 2, 10:13] = True, True, True
    common = dict(baseline="zero", num_samples=4, score="interaction")
    both = lab.token_scores_by_pair(towers, images, texts, mask, regions,
                                   torch.tensor([6, 2]), 11, **common)
    alone = lab.token_scores_by_pair(towers, images[:1], texts[:1, :4], mask[:1, :4],
                                    regions[:1], torch.tensor([6]), 11, **common)
    torch.testing.assert_close(both[:1], alone, rtol=1e-5, atol=1e-7)
    targets = torch.tensor([[0, 1], [1, 0], [1, 2]])
    labelled = torch.ones(2, 3, dtype=torch.bool)
    some = lab.token_scores_by_pair(towers, images, texts,
                                   mask, regions, torch.tensor([6, 2]), 11, labelled=labelled, targets=targets,
                                   **common)
    one = lab.token_scores_by_pair(towers, images[:1],
                                  texts[:1, :4], mask[:1, :4], regions[:1], torch.tensor([6]), 11,
                                  labelled=labelled[:1], targets=targets[:1], **common)
    torch.testing.assert_close(some[:1], one, rtol=1e-5, atol=1e-7)


def test_semantic_labels_of_a_pair_do_not_depend_on_its_batch():
    """A pair's sampled semantic-level interactions are the same alone and beside a pair with more
    phrases (whose padding widens the batch's M)."""
    from loupe_core.objective import labels as lab

    g = torch.Generator().manual_seed(3)
    A = torch.randn(2, 3, 4, generator=g)
    regions = torch.ones(2, 3, dtype=torch.bool)
    phrases = torch.tensor([[True, True, False, False], [True, True, True, True]])
    both = lab.semantic_scores_by_pair(A, regions, phrases, torch.tensor([6, 2]), 11,
                                      num_samples=8)
    alone = lab.semantic_scores_by_pair(A[:1, :, :2], regions[:1], phrases[:1, :2],
                                       torch.tensor([6]), 11, num_samples=8)
    torch.testing.assert_close(both[:1, :, :2], alone, rtol=0, atol=0)
    assert torch.equal(both[0, :, 2:], torch.zeros(3, 2)) and both[1].abs().sum() > 0
    moved = lab.semantic_scores_by_pair(A[:1], regions[:1], phrases[:1],
                                       torch.tensor([7]), 11, num_samples=8)
    assert not torch.equal(moved, both[:1])  # another row, other draws


def test_the_probe_finds_the_parameters_a_config_leaves_out():
    from loupe_core.config import load_config
    from loupe_core.objective import LoupeObjective
    from test_model import make_batch

    for over in ([], ["loss.tsa=false", "loss.fsa=false", "loss.unsil=false"]):  # the whole method, CMC only
        cfg = load_config("tiny", ["train.device=cpu", *over])
        torch.manual_seed(0)
        model = LoupeObjective(cfg.model, cfg.loss)
        buffers = [b.clone() for b in model.buffers()]
        draw = torch.get_rng_state()
        names = _unused_parameters(model, make_batch(), StepContext(index=8, total_steps=10, diagnostics=False), cfg,
                                   DistContext())  # after UNSIL's warm-up
        heads = {"model.region_logit_scale"} | {n for n, _ in model.named_parameters()
                                                if n.startswith("model.region_head.")}
        assert set(names) == (heads if over else set()), names
        assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))  # UNSIL's statistics untouched
        assert torch.equal(torch.get_rng_state(), draw)


def test_two_gloo_processes_match_one_process(tmp_path):
    cache = str(tmp_path / "cache")
    loupe1 = [_loupe_run(*case, cache, str(tmp_path / f"single{i}")) for i, case in enumerate(LOUPE_CASES)]
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    two = torch.load(tmp_path / "results.pt", weights_only=False)
    for case, (losses2, params2) in zip(CASES, two["pairs"]):
        losses1, params1 = _run(case, str(tmp_path / f"single{case['accum_steps']}"))
        for a, b in zip(losses1, losses2):
            assert abs(a - b) <= 1e-5 * abs(a), (case, losses1, losses2)
        for p, q in zip(params1, params2):
            torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)
    # DDP searches the graph for unused parameters (find_unused_parameters, and its warning where
    # there is none) only for the model with a parameter no loss reaches
    assert two["searched"] == [False, False, True] + [False] * len(LOUPE_CASES)
    losses1, params1 = _run(CASES[1], str(tmp_path / "spare1"), model_cls=PairModelWithSpare)
    assert all(abs(a - b) <= 1e-5 * abs(a) for a, b in zip(losses1, two["spare"][0]))
    for (name, accum, overrides), (terms1, grads1), (terms2, grads2) in zip(LOUPE_CASES, loupe1, two["loupe"]):
        assert len(terms1) == len(terms2) == len(grads1) == len(grads2) == LOUPE_STEPS
        for step, (t1, t2, g1, g2) in enumerate(zip(terms1, terms2, grads1, grads2)):
            where = f"{name} {list(overrides)} accum_steps={accum} step {step + 1}"
            assert t1.keys() == t2.keys() and g1.keys() == g2.keys(), where
            for key in t1:  # 1e-4: float32 sums in another order (2 threads, split batches); L_UNSIL's 1/sigma amplifies them
                assert abs(t1[key] - t2[key]) <= 1e-4 * abs(t1[key]) + 1e-7, (where, key, t1, t2)
            flat1, flat2 = (torch.cat([g[n].flatten() for n in sorted(g1)]) for g in (g1, g2))
            assert (flat1 - flat2).norm() <= 1e-5 * flat1.norm(), (where, float((flat1 - flat2).norm() / flat1.norm()))
            for n in g1:  # and no small part of the model far off (e.g. UNSIL's own weights)
                assert (g1[n] - g2[n]).norm() <= 1e-3 * g1[n].norm() + 1e-6 * flat1.norm(), (where, n)


def _track_worker(rank, world, port, out_dir):
    from loupe_core.objective.unsil import Unsil

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    ctx = init_distributed("cpu")
    unsil = Unsil("mlp_attention", 4, 4, 8)
    g = torch.Generator().manual_seed(rank)
    for step in range(3):   # rank 1 samples no target on step 1
        n = 0 if (rank, step) == (1, 1) else 3 + rank
        unsil.track(torch.randn(n, generator=g), torch.randn(n, generator=g), ctx.ranks)
    torch.save(unsil.moments, os.path.join(out_dir, f"moments{rank}.pt"))
    shutdown(ctx)


def test_unsil_tracks_every_ranks_targets_so_the_gate_agrees(tmp_path):
    """Two ranks with different (and on one step no) sampled targets hold the moments of one
    process that tracked both ranks' targets together, so their correlation (the gate) agrees."""
    from loupe_core.objective.unsil import Unsil

    mp.spawn(_track_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    got = [torch.load(tmp_path / f"moments{r}.pt") for r in range(2)]
    one = Unsil("mlp_attention", 4, 4, 8)
    gens = [torch.Generator().manual_seed(r) for r in range(2)]
    for step in range(3):
        pairs = [(torch.randn(n, generator=g), torch.randn(n, generator=g))
                 for r, g in enumerate(gens) for n in [0 if (r, step) == (1, 1) else 3 + r]]
        one.track(torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs]))
    torch.testing.assert_close(got[0], got[1], rtol=0, atol=0)
    torch.testing.assert_close(got[0], one.moments, rtol=1e-12, atol=1e-12)


def _ranks_worker(rank, world, port, out_dir):
    from loupe_core.objective.losses import cmc_loss, pacl_loss

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    ctx = init_distributed("cpu")
    img, txt, patches = _ranks_inputs()
    mine = slice(2 * rank, 2 * rank + 2)
    scale = torch.tensor(3.0, dtype=torch.float64)
    got = {f"{name}_{which}": fn(ranks).detach() for which, ranks in (("local", None), ("global", ctx.ranks))
           for name, fn in (("cmc", lambda r: cmc_loss(img[mine], txt[mine], scale, ranks=r)),
                            ("pacl", lambda r: pacl_loss(txt[mine], patches[mine], scale, ranks=r)))}
    torch.save(got, os.path.join(out_dir, f"losses{rank}.pt"))
    shutdown(ctx)


def _ranks_inputs():
    g = torch.Generator().manual_seed(5)
    norm = torch.nn.functional.normalize
    return (norm(torch.randn(4, 3, generator=g, dtype=torch.float64), dim=-1),
            norm(torch.randn(4, 3, generator=g, dtype=torch.float64), dim=-1),
            norm(torch.randn(4, 5, 3, generator=g, dtype=torch.float64), dim=-1))


def test_the_losses_span_the_ranks_they_are_given_not_the_process_group(tmp_path):
    """With a process group of 2 running, ``ranks=None`` gives each rank's own 2-pair loss and
    ``ranks=ctx.ranks`` the 4-pair loss (mean over ranks): the losses read no global state."""
    from loupe_core.objective.losses import cmc_loss, pacl_loss

    mp.spawn(_ranks_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    got = [torch.load(tmp_path / f"losses{r}.pt") for r in range(2)]
    img, txt, patches = _ranks_inputs()
    scale = torch.tensor(3.0, dtype=torch.float64)
    for rank in range(2):
        mine = slice(2 * rank, 2 * rank + 2)
        torch.testing.assert_close(got[rank]["cmc_local"], cmc_loss(img[mine], txt[mine], scale))
        torch.testing.assert_close(got[rank]["pacl_local"], pacl_loss(txt[mine], patches[mine], scale))
    for name, full in (("cmc", cmc_loss(img, txt, scale)), ("pacl", pacl_loss(txt, patches, scale))):
        torch.testing.assert_close((got[0][f"{name}_global"] + got[1][f"{name}_global"]) / 2, full)


class _FailsOnOneRank(PairModel):
    """PairModel whose forward raises ``DivergenceError`` on rank 1 at step 1, as the objective's label
    games do on activations that overflowed on that rank's data only."""

    def forward(self, batch, step=None, embed_only=False):
        if not embed_only and step.index == 1 and int(os.environ["RANK"]) == 1:
            raise DivergenceError("image activations contain NaN")
        return super().forward(batch, step, embed_only)


def _one_rank_fails_worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    cfg = pair_config(steps=3, batch_size=8, lr=1e-2, accum_steps=1)
    cfg.train.collective_timeout = 3.0
    ctx = init_distributed("cpu", cfg.train.collective_timeout)
    try:
        train(cfg, os.path.join(out_dir, "run"), _FailsOnOneRank(dropout=0.0), PairData(16), collate, ctx=ctx)
        outcome = "finished"
    except Exception as exc:  # noqa: BLE001 - what ended the rank is the result
        outcome = f"{type(exc).__name__}: {exc}"
    with open(os.path.join(out_dir, f"outcome{rank}.txt"), "w") as fh:
        fh.write(outcome)


def test_a_rank_that_fails_mid_step_ends_the_job_within_the_collective_timeout(tmp_path):
    """Rank 1 raises inside its forward while rank 0 waits in L_CMC's gather: the ranks' calls no
    longer match, and every rank ends with an error after ``train.collective_timeout``; none hangs."""
    context = mp.spawn(_one_rank_fails_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False)
    for p in context.processes:
        p.join(timeout=120)
        assert not p.is_alive(), "a rank hung"
    # a rank ends with its own error, with the collective timeout, or, when the other rank's
    # timeout fired first and that rank exited, with gloo's report of the vanished peer
    outcomes = [(tmp_path / f"outcome{r}.txt").read_text() for r in range(2)]
    shown = "\n".join(f"rank {r}: {o}" for r, o in enumerate(outcomes))
    endings = ("Timed out", "NaN", "Connection closed by peer", "Connection reset by peer", "Broken pipe")
    assert all(o != "finished" for o in outcomes), shown
    assert all(any(e in o for e in endings) for o in outcomes), shown
    assert any("Timed out" in o for o in outcomes), shown
