"""The training loop: AdamW + OneCycle, cached-feature gradient accumulation, DDP, exact resume.

One optimiser step consumes one global batch of ``train.batch_size`` pairs, split over the
ranks and into ``train.accum_steps`` micro-batches per rank (``sampler.StepBatchSampler``).

Gradient accumulation that is right for a contrastive loss (OpenCLIP's ``accum_freq``): with
more than one micro-batch, a no-grad pass ``model(micro, embed_only=True)`` first embeds every
micro-batch of every rank (all-gathered) into a ``ContrastiveBank`` [G, d]; each micro-batch
is then run with the bank, its live rows replacing the cached ones, so its L_CMC is the full
G x G loss and its gradient is exactly that micro-batch's share of the full-batch gradient.
With W ranks (DDP averages gradients over ranks) and A micro-batches, a micro-batch therefore
back-propagates ``W * L_CMC + (L_total - L_CMC) / A``: the CMC shares add up to the full-batch
CMC gradient and the per-sample-mean terms (TSA, FSA, UNSIL) average. With one micro-batch per
rank no bank is used: the model gathers features across ranks itself (L_CMC local loss).

The model is called ``model(micro, step)`` with an explicit ``objective.StepContext``: the step
index and length, the micro-batch's pairs' rows in the global batch (``loupe_core.global_batch``),
micro-batch m of all ranks being the one-process micro-batch m (``distributed.shard_bounds``),
the ranks, the bank and whether the step is logged; nothing of it goes into the batch dict.
DDP:
the model's label budget and draws follow the rows and its other terms are means over the
micro-step of all ranks, so W processes give the one-process loss. DDP searches for unused
parameters (``find_unused_parameters``) only where a probe forward at the start finds some.

Logged values per step: every term and the total, averaged over micro-batches and ranks (the
global batch's loss); the model's diagnostic logs (rank 0's, averaged over its micro-batches);
learning rate, beta1, samples/s. A NaN or inf in any term stops training (all ranks) with
``loupe_core.errors.DivergenceError`` naming the step and the term, before the optimiser step:
the last checkpoint on disk is the last good state. So do weights that an optimiser step made
non-finite and a forward pass that raises ``DivergenceError`` itself (the objective's label games
meeting NaN / inf features, e.g. ``train.lr=1e30``), both before any checkpoint of that state is
written. Divergence is told by its type, never by an error's wording.

Streaming data may yield ``(batch, DataStats)`` items (the real-data loaders do): the counts
of skipped records are summed over ranks and reach ``metrics.jsonl`` (``data/<count>``, run
totals at each logged step), the progress bar (``skipped=``) and ``TrainResult.data_counts``.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch.nn.parallel import DistributedDataParallel

from loupe_core.config import RunConfig, save_config
from loupe_core.errors import CheckpointError, ConfigError, DataError, DivergenceError
from loupe_core.global_batch import gather_objects, gather_with_grad, global_any, global_barrier, global_sum
from loupe_core.objective.losses import ContrastiveBank
from loupe_core.objective.step import StepContext
from loupe_core.progress import progress
from loupe_core.train import checkpoint as ckpt
from loupe_core.train.distributed import DistContext, init_distributed, shard_bounds
from loupe_core.train.logging import MetricLogger
from loupe_core.train.sampler import StepBatchSampler
from loupe_core.train.schedule import build_optimizer, build_scheduler


@dataclass
class TrainResult:
    """What :func:`train` returns.

    model: the trained (unwrapped) model; step: optimiser steps completed in all;
    losses: the global-batch total loss of each step run by this call; checkpoint: the last
    checkpoint written (None if none); history_path: the run's ``metrics.jsonl``;
    data_counts: the run's record counts summed over ranks (``DataStats.as_dict()``), None for
    data that does not count (map-style datasets).
    """

    model: torch.nn.Module
    run_dir: str
    step: int
    total_steps: int
    losses: list
    checkpoint: Optional[str]
    history_path: str
    data_counts: Optional[dict] = None


def _length(dataset) -> Optional[int]:
    return None if isinstance(dataset, torch.utils.data.IterableDataset) else len(dataset)


def _batches(cfg: RunConfig, dataset, collate_fn, ctx: DistContext, start: int, total: int):
    """Iterator over this rank's micro-batches from step ``start`` on.

    Map-style data: ``StepBatchSampler`` (order a pure function of seed and epoch). Streaming
    data (an IterableDataset that yields this rank's own samples, in an order fixed by its
    seed): micro-batches of ``batch_size / (world * accum)``, or, with ``collate_fn=None``, the
    stream's own items taken as ready micro-batches; a resumed run replays the stream up to
    its position.
    """
    tc = cfg.train
    common = dict(collate_fn=collate_fn, num_workers=cfg.data.num_workers, pin_memory=ctx.device.type == "cuda",
                  generator=torch.Generator().manual_seed(tc.seed))
    if _length(dataset) is not None:
        sampler = StepBatchSampler(len(dataset), tc.batch_size, seed=tc.seed, start_step=start, total_steps=total,
                                   world_size=ctx.world_size, rank=ctx.rank, accum_steps=tc.accum_steps)
        return _CountedBatches(iter(torch.utils.data.DataLoader(dataset, batch_sampler=sampler, **common)))
    micro = shard_bounds(tc.batch_size, ctx.world_size, ctx.rank, tc.accum_steps)[0]
    size = None if collate_fn is None else micro[1] - micro[0]
    stream = _CountedBatches(iter(torch.utils.data.DataLoader(dataset, batch_size=size, drop_last=size is not None,
                                                              **common)))
    for _ in range(start * tc.accum_steps):  # replayed: the counts of a resumed run are the straight run's
        stream.next(_)
    return stream


class _CountedBatches:
    """The micro-batches of ``batches``; items ``(batch | None, DataStats)`` (tuple or list) have their counts
    summed into ``counts`` (a ``DataStats``, None until the stream yields one) and a None batch
    (counts only) passed over."""

    def __init__(self, batches):
        self.batches, self.counts = batches, None

    def next(self, step: int):
        while True:
            try:
                item = next(self.batches)
            except StopIteration:
                raise DataError(f"the training data ran out at step {step + 1}; a stream must repeat its "
                                 "epochs") from None
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and hasattr(item[1], "as_dict")):
                return item
            batch, counts = item
            self.counts = counts if self.counts is None else self.counts.add(counts)
            if batch is not None:
                return batch


def total_steps_for(cfg: RunConfig, dataset_size: Optional[int]) -> int:
    """``train.steps`` if set, else ``train.epochs`` full passes of whole global batches."""
    if cfg.train.steps > 0:
        return cfg.train.steps
    if dataset_size is None:
        raise ConfigError("train.steps must be set (> 0) for streaming training data, which has no length")
    per_epoch = dataset_size // cfg.train.batch_size
    if per_epoch < 1:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} exceeds the training set ({dataset_size} pairs)")
    return cfg.train.epochs * per_epoch


def _to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _autocast(cfg, device: torch.device):
    precision = cfg.train.precision
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision='fp16' needs a CUDA device (use 'bf16' or 'fp32' on the CPU)")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _first_non_finite(out) -> Optional[tuple]:
    for name, value in list(out.terms.items()) + [("total", out.total)]:
        if not torch.isfinite(value.detach()).all():
            return name, float(value.detach().float())
    return None


class _StepRunner:
    """Runs one optimiser step's forward/backward over this rank's micro-batches."""

    def __init__(self, cfg: RunConfig, module, ddp, ctx: DistContext, bank_cls):
        self.cfg, self.module, self.ddp, self.ctx, self.bank_cls = cfg, module, ddp, ctx, bank_cls
        self.accum = cfg.train.accum_steps
        # the module's terms that are losses over the whole accumulated batch (``bank_terms``)
        self.bank_terms = tuple(getattr(module, "bank_terms", ()))
        self.use_bank = self.accum > 1 and bool(self.bank_terms)

    def _bank_embeddings(self, micros):
        with torch.no_grad(), _autocast(self.cfg, self.ctx.device):
            embs = [self.module(mb, embed_only=True) for mb in micros]
        # float32 under bf16/fp16 autocast, float64 for a float64 model
        img, txt = (torch.cat([e[k] for e in embs]) for k in (0, 1))
        img, txt = (x.to(torch.promote_types(x.dtype, torch.float32)) for x in (img, txt))

        def in_global_order(x):  # gathered [rank, micro, row] -> the global batch's rows (shard_bounds)
            x = gather_with_grad(x, self.ctx.ranks)  # under no_grad: a plain gather
            return x.view(self.ctx.world_size, self.accum, -1, x.shape[-1]).transpose(0, 1).reshape(x.shape)

        return in_global_order(img), in_global_order(txt)

    def contexts(self, micros, step: int, total: int, diagnostics: bool, bank_rows=None) -> list:
        """One ``StepContext`` per micro-batch: its pairs' rows in the global batch and the ranks
        that share it (``global_batch``: the model's label budget and per-pair seeds are functions
        of the rows, not of the rank; its means and contrast sets span the ranks), and its view of
        the bank (``bank_rows`` (img, txt) [G, d], None: no bank)."""
        G = self.cfg.train.batch_size
        bounds = shard_bounds(G, self.ctx.world_size, self.ctx.rank, self.accum)
        return [StepContext(index=step, total_steps=total, rows=torch.arange(start, start + _batch_size(mb)),
                            global_size=G, ranks=self.ctx.ranks, diagnostics=diagnostics,
                            bank=None if bank_rows is None else self.bank_cls(bank_rows[0], bank_rows[1], start))
                for mb, (start, _) in zip(micros, bounds)]

    def run(self, micros, step: int, total: int, diagnostics: bool = True):
        """(term means over micro-batches and ranks, this rank's log means), gradients accumulated.

        diagnostics: whether the model computes its log-only diagnostics (UNSIL's probe).

        On a non-finite term anywhere: (None, (term, value) on the rank that saw it else None),
        before any backward of that micro-batch.
        """
        bank_rows = self._bank_embeddings(micros) if self.use_bank else None
        sums, logs = {}, {}
        W, A = self.ctx.world_size, self.accum
        for m, (mb, context) in enumerate(zip(micros, self.contexts(micros, step, total, diagnostics, bank_rows))):
            last = m == A - 1
            sync = contextlib.nullcontext() if (last or not self.ctx.distributed) else self.ddp.no_sync()
            with sync:
                try:
                    with _autocast(self.cfg, self.ctx.device):
                        out = self.ddp(mb, context)
                except DivergenceError as exc:  # the objective met NaN / inf features
                    bad = ("forward pass", str(exc))
                    global_any(True, self.ctx.ranks, self.ctx.device)
                    return None, bad
                bad = _first_non_finite(out)
                if global_any(bad is not None, self.ctx.ranks, self.ctx.device):
                    return None, bad
                banked = sum(out.terms[t] for t in self.bank_terms) if self.use_bank else 0.0
                (W * banked + (out.total - banked) / A).backward()
            for name, value in list(out.terms.items()) + [("total", out.total)]:
                sums[name] = sums.get(name, 0.0) + value.detach().float() / A
            for name, value in out.logs.items():
                logs[name] = logs.get(name, 0.0) + float(value) / A
        names = sorted(sums)
        means = (global_sum(torch.stack([sums[n] for n in names]), self.ctx.ranks) / W).tolist()
        return dict(zip(names, means)), logs


_COMPILE_OPTIONS: dict = {}  # more torch.compile options for train.compile (tests: a cheaper backend)


def _compile(model: torch.nn.Module, tc) -> None:
    """``train.compile``: "towers" calls the model's ``compile_towers(mode=train.compile_mode)``
    (``LoupeObjective``: the towers' dense pass in training forwards), before any DDP wrapping."""
    if tc.compile == "none":
        return
    compile_towers = getattr(model, "compile_towers", None)
    if tc.compile != "towers" or compile_towers is None:
        raise ConfigError(f"train.compile={tc.compile!r}: expected 'none' or 'towers' on a model with "
                         f"compile_towers ({type(model).__name__} has {'it' if compile_towers else 'none'})")
    try:
        compile_towers(mode=tc.compile_mode, **_COMPILE_OPTIONS)
    except ValueError as exc:
        raise ConfigError(f"train.compile='towers': {exc}") from None


def _unused_parameters(model, micro, context: StepContext, cfg, ctx: DistContext) -> list:
    """Names of the trainable parameters that the loss of the micro-batch ``micro`` does not reach
    (DDP without ``find_unused_parameters`` needs every other one in every backward): one forward
    of the unwrapped model, every rank together (the model's collectives), whose graph is walked,
    not run backward (``context``: the micro-batch's step context, diagnostics off); the RNG
    streams and the buffers (UNSIL's statistics) are left as they were."""
    rng = ckpt.capture_rng_state()
    buffers = [b.detach().clone() for b in model.buffers()]
    try:
        with _autocast(cfg, ctx.device):
            out = model(micro, context)
        reached, seen, todo = set(), set(), [out.total.grad_fn]
        while todo:
            node = todo.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            if getattr(node, "variable", None) is not None:  # AccumulateGrad: a leaf tensor
                reached.add(id(node.variable))
            todo.extend(fn for fn, _ in node.next_functions)
    finally:
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers):
                b.copy_(saved)
        ckpt.restore_rng_state(rng)
    return [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in reached]


def _weights_finite(model: torch.nn.Module, ctx: DistContext) -> bool:
    """Whether every parameter of ``model`` is finite on every rank (one reduction per tensor)."""
    flags = [torch.isfinite(p.detach()).all() for p in model.parameters()]
    ok = bool(torch.stack(flags).all()) if flags else True
    return not global_any(not ok, ctx.ranks, ctx.device)


def _batch_size(batch) -> int:
    """Pairs in a micro-batch: the leading size of its first tensor."""
    return int(next(v for v in batch.values() if torch.is_tensor(v)).shape[0])


def train(cfg: RunConfig, run_dir: str, model: torch.nn.Module, dataset, collate_fn, *,
          resume: Optional[str] = None, ctx: Optional[DistContext] = None,
          evaluate_fn: Optional[Callable[[torch.nn.Module], dict]] = None,
          stop_at: Optional[int] = None) -> TrainResult:
    """Train ``model`` on the map-style ``dataset`` (batches made by ``collate_fn``).

    model: the module trained and checkpointed, a ``loupe_core.objective.LoupeObjective`` (or any
    module whose ``forward(batch, step)`` with a ``StepContext`` returns ``LossOutput`` and
    ``forward(batch, embed_only=True)`` the global embeddings, and whose ``bank_terms`` names the
    terms that are losses over the whole accumulated batch: with ``train.accum_steps`` > 1 those
    see every micro-batch's embeddings through a ``ContrastiveBank``), built with the run's seed
    already set. With ``train.compile="towers"`` it also needs ``compile_towers(mode=)``.
    resume: a checkpoint path (see ``checkpoint.resolve_resume``): continues exactly, the same
      data order, RNG streams, optimiser, schedule and scaler state.
    evaluate_fn: called with the unwrapped model every ``eval.every`` steps (0: never here),
      returns metrics to log; it runs with the RNG state saved and restored, so it does not
      change the training run.
    stop_at: stop after this many completed steps, with a checkpoint (a time-limited job).
    """
    ctx = ctx or init_distributed(cfg.train.device, cfg.train.collective_timeout)
    tc = cfg.train
    total = total_steps_for(cfg, _length(dataset))
    if ctx.is_main:
        ckpt.remove_partial_writes(run_dir)
    model.to(ctx.device)
    _compile(model, tc)
    optimizer = build_optimizer(model, tc)
    scheduler = build_scheduler(optimizer, tc, total)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=tc.precision == "fp16")
    start = 0
    if resume is not None:
        start = _load_state(resume, model, optimizer, scheduler, scaler, ctx, total, cfg)
    if ctx.is_main:
        os.makedirs(run_dir, exist_ok=True)
        save_config(cfg, os.path.join(run_dir, "config.json"))
    batches = _batches(cfg, dataset, collate_fn, ctx, start, total)
    runner = _StepRunner(cfg, model, model, ctx, ContrastiveBank)
    end = total if stop_at is None else min(total, stop_at)
    model.train()
    first = None
    if ctx.distributed and start < end:
        # DDP searches the graph for unused parameters (find_unused_parameters) only where the
        # run's loss leaves some out (a config without a term), as one probe forward finds
        first = [_to_device(batches.next(start), ctx.device) for _ in range(tc.accum_steps)]
        probe_context = runner.contexts(first, start, total, diagnostics=False)[0]
        unused = _unused_parameters(model, first[0], probe_context, cfg, ctx)
        runner.ddp = DistributedDataParallel(model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None,
                                             find_unused_parameters=bool(unused))
    logger = MetricLogger(run_dir, enabled=ctx.is_main, tensorboard=tc.tensorboard,
                          resume_step=start if resume is not None else None)
    losses, last_ckpt = [], None
    bar = _progress(ctx.is_main and tc.progress, total, start)
    try:
        for step in range(start, end):
            t0 = time.perf_counter()
            micros, first = first or [_to_device(batches.next(step), ctx.device) for _ in range(tc.accum_steps)], None
            logged = (step + 1) % tc.log_every == 0 or step + 1 == end
            means, logs = runner.run(micros, step, total, diagnostics=logged)
            if means is None:  # logs holds (term, value) of this rank's non-finite term, or None
                name, value = logs or ("(on another rank)", float("nan"))
                raise DivergenceError(
                    f"non-finite loss at step {step + 1}: term {name!r} = {value}; training stopped before "
                    f"the optimiser step. {_last_good(run_dir)}")
            if tc.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            lr, beta1 = optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["betas"][0]
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            if not _weights_finite(model, ctx):
                raise DivergenceError(f"non-finite weights after the optimiser step of step {done} (train.lr={lr:g}); "
                                       f"nothing of that state was saved. {_last_good(run_dir)}")
            losses.append(means["total"])
            sps = tc.batch_size / max(time.perf_counter() - t0, 1e-9)
            counts = _global_counts(batches.counts, ctx)
            if logged:
                record = {"loss": means["total"], **{f"loss/{k}": v for k, v in means.items() if k != "total"},
                          **{f"log/{k}": v for k, v in logs.items()},
                          "train/lr": lr, "train/beta1": beta1, "train/samples_per_s": sps,
                          **{f"data/{k}": v for k, v in (counts or {}).items()}}
                logger.log(done, record)
            bar.update(1)
            bar.set_postfix(loss=f"{means['total']:.4f}", samples_per_s=f"{sps:.1f}",
                            **({"skipped": counts["skipped"]} if counts else {}))
            if evaluate_fn is not None and cfg.eval.every > 0 and done % cfg.eval.every == 0:
                metrics = _evaluate_keeping_rng(evaluate_fn, model, ctx)
                logger.log(done, {f"eval/{k}": v for k, v in metrics.items()})
            if (tc.ckpt_every > 0 and done % tc.ckpt_every == 0) or done == end:
                last_ckpt = _save_state(cfg, run_dir, done, total, model, optimizer, scheduler, scaler, ctx)
    finally:
        bar.close()
        logger.close()
    return TrainResult(model=model, run_dir=run_dir, step=max(start, end), total_steps=total, losses=losses,
                       checkpoint=last_ckpt or ckpt.latest_checkpoint(run_dir), history_path=logger.jsonl_path,
                       data_counts=_global_counts(batches.counts, ctx))


def _last_good(run_dir: str) -> str:
    return f"Last good checkpoint: {ckpt.latest_checkpoint(run_dir) or 'none'}"


def _global_counts(counts, ctx: DistContext) -> Optional[dict]:
    """``counts`` (a DataStats or None) as a dict summed over ranks; None when the data has none."""
    if counts is None:
        return None
    local = counts.as_dict()
    names = sorted(local)
    summed = global_sum(torch.tensor([float(local[n]) for n in names], dtype=torch.float64), ctx.ranks)
    return {n: int(v) for n, v in zip(names, summed.tolist())}


def _progress(enabled: bool, total: int, start: int):
    return progress(total=total, initial=start, enabled=enabled, desc="pretrain", unit="step")


def _evaluate_keeping_rng(evaluate_fn, model, ctx: DistContext) -> dict:
    """Run ``evaluate_fn(model)`` on the main rank in eval mode; RNG and train mode restored."""
    metrics = {}
    if ctx.is_main:
        rng = ckpt.capture_rng_state()
        model.eval()
        try:
            metrics = evaluate_fn(model)
        finally:
            model.train()
            ckpt.restore_rng_state(rng)
    global_barrier(ctx.ranks)
    return metrics


def _save_state(cfg, run_dir, step, total, model, optimizer, scheduler, scaler, ctx) -> str:
    rngs = gather_objects(ckpt.capture_rng_state(), ctx.ranks)
    path = ckpt.checkpoint_path(run_dir, step)
    if ctx.is_main:
        ckpt.save_checkpoint(path, {
            "step": step, "total_steps": total, "world_size": ctx.world_size,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "rng": rngs, "config": cfg.to_dict(),
        })
        ckpt.prune_checkpoints(run_dir, cfg.train.keep_checkpoints)
    global_barrier(ctx.ranks)
    return path


def _load_state(path, model, optimizer, scheduler, scaler, ctx, total, cfg) -> int:
    """Restore every state from the checkpoint ``path``; returns its step. CheckpointError naming the
    file for a damaged or foreign file, another schedule length or a model it does not fit (with
    the config keys that differ)."""
    state = ckpt.load_training_state(path)
    if state["total_steps"] != total:
        raise CheckpointError(f"--resume {path!r}: the checkpoint's run has {state['total_steps']} steps in all, this "
                         f"config {total}; the schedule cannot be stretched (keep train.steps / train.epochs)")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"--resume {path!r}: the checkpoint's weights do not fit this model "
                         f"({_config_difference(state['config'], cfg)}): {str(exc).splitlines()[0]}") from None
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        rngs = state["rng"]
        ckpt.restore_rng_state(rngs[ctx.rank] if ctx.rank < len(rngs) else rngs[0])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
        raise CheckpointError(f"--resume {path!r}: its optimiser, schedule or RNG state does not fit this run "
                         f"({type(exc).__name__}: {exc})") from None
    return int(state["step"])


def _config_difference(saved: dict, cfg: RunConfig) -> str:
    """``"model.embed_dim: 64 in the checkpoint, 32 here; ..."`` over the model and loss sections."""
    now = cfg.to_dict()
    diffs = [f"{section}.{key}: {saved.get(section, {}).get(key)!r} in the checkpoint, {value!r} here"
             for section in ("model", "loss") for key, value in now[section].items()
             if isinstance(saved.get(section), dict) and saved[section].get(key) != value]
    return "; ".join(diffs) if diffs else "the model and loss configs are the same"
