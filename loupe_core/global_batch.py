"""What makes a training step's loss the same for any number of processes (DDP).

One optimiser step consumes a global batch of G pairs (``train.batch_size``). The trainer hands
the objective, with each micro-batch, its pairs' rows in that batch and its size G (in the
``objective.step.StepContext``, never in the batch dict; without them a batch is its own global
batch), and everything budgeted or random in the loss is a function of those rows, never of a
pair's place in its rank's micro-batch:

- label budget: the ``loss.pairs_per_step`` P labelled pairs of a step are the global rows
  floor(k G / P), k < min(P, G), spread evenly over the batch so that the ranks share the work;
  each rank labels those among its rows (:func:`label_rows`).
- randomness: each pair draws from its own generator, seeded by the step, the stream and its
  row (:func:`pair_seed`, :func:`pair_uniforms`): the contrast candidates, the hybrid decisions
  and the token- and semantic-level sampling (``objective.labels.token_scores_by_pair``,
  ``semantic_scores_by_pair``, which also cut a caption's batch padding, so that a label does
  not depend on the longest caption of the rank's batch). Dropout is the one draw that is not per
  pair (docs/RELIABILITY.md).
- normalisation: a term that is a mean over items of the batch (images, regions, captions,
  UNSIL targets) is :func:`global_mean` (sum, count): with :class:`Ranks` of W > 1 processes
  (in the step context, handed over by the trainer; nothing here reads torch.distributed's global
  state), this rank's share W x its sum / the count summed over ranks, whose mean over
  ranks (what DDP's gradient averaging and the trainer's logs take) is the mean over every
  rank's items; one process: sum / count.
- contrast sets: a term scoring pairs against the batch gathers the other ranks' rows with
  gradients (:func:`gather_with_grad`, :func:`gather_padded`).

This is the one module of collectives, over the one context type :class:`Ranks`: the trainer's
reductions (the logged means, skip counts, the bank's gather, stopping together on divergence,
checkpoint barriers) use them too (:func:`global_sum`, :func:`gather_with_grad`,
:func:`global_any`, :func:`global_barrier`, :func:`gather_objects`); ``train.distributed`` only
joins the process group and splits the global batch.

With ``train.accum_steps`` A > 1, micro-batch m of every rank together holds the rows
[m G / A, (m + 1) G / A) (``train.distributed.shard_bounds``): the one-process micro-batch m. The
means and contrast sets above are over that micro-step (with A = 1: the global batch), so W
processes give the one-process loss for any A; only L_CMC spans the whole step (its feature
bank).

The reductions are collectives: every rank must make the same calls in the same order, so the
model's control flow must not depend on a rank's data (a rank without a labelled pair still runs
its label and UNSIL code on empty tensors).
"""
from __future__ import annotations

import contextlib
from typing import Any, NamedTuple, Optional

import torch
import torch.nn.functional as F

# the one table of seed streams: stream s of step t is seeded t * SEED_STRIDE + STREAMS[s]
STREAMS = {"token": 0, "semantic": 1, "token_probe": 2, "semantic_probe": 3,
           "candidates": 8, "token_decision": 9, "views": 10, "semantic_decision": 11}
SEED_STRIDE = 1_000_003
_MASK64 = (1 << 64) - 1


# ---------------------------------------------------------------- rows and budget
def labelled_rows(size: int, budget: int) -> torch.Tensor:
    """long[min(budget, size)]: the global rows floor(k size / P) that carry labels (P = min(budget, size))."""
    count = min(int(budget), int(size))
    return torch.arange(count) * int(size) // max(count, 1)


def label_rows(rows: torch.Tensor, size: int, budget: int) -> torch.Tensor:
    """long[p]: the positions in this batch of its pairs among the step's labelled rows (ascending)."""
    return torch.isin(rows, labelled_rows(size, budget)).nonzero().squeeze(1)


# ---------------------------------------------------------------- per-pair randomness
def _mix64(x: int) -> int:
    """splitmix64's finaliser: a bijection of 64-bit integers that scatters nearby inputs."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def stream_seed(step: int, stream: str) -> int:
    """Deterministic seed of ``stream`` (a key of ``STREAMS``) at ``step``: same step, same draws
    (resume-safe). The label streams ("token", "semantic", their "_probe"s) seed whole calls; the
    others are split per pair by :func:`pair_seed`."""
    return int(step) * SEED_STRIDE + STREAMS[stream]


def pair_seed(seed: int, row: int) -> int:
    """The seed of global row ``row``'s own generator in the stream seeded ``seed``."""
    return _mix64(_mix64(int(seed) & _MASK64) ^ int(row))


def pair_uniforms(seed: int, rows: torch.Tensor, n: int, device=None) -> torch.Tensor:
    """float[len(rows), n]: row r's n draws of U(0, 1) from its own generator (``pair_seed``)."""
    out = torch.zeros(len(rows), int(n))
    for i, row in enumerate(rows.tolist()):
        out[i] = torch.rand(int(n), generator=torch.Generator().manual_seed(pair_seed(seed, row)))
    return out.to(device) if device is not None else out


# ---------------------------------------------------------------- collectives
_LOCAL_ONLY: list = []  # what runs now under local_only (innermost last)


@contextlib.contextmanager
def local_only(where: str):
    """Within it, a call of a collective below (:func:`global_mean`, :func:`global_sum`,
    :func:`global_moments`, :func:`gather_with_grad`, :func:`gather_padded`) raises RuntimeError
    naming ``where``, on any number of processes: code that runs on some steps or some ranks only
    (a diagnostic, a term marked ``collective = False``) cannot make one, which would hang the
    other ranks of a multi-process run."""
    _LOCAL_ONLY.append(where)
    try:
        yield
    finally:
        _LOCAL_ONLY.pop()


def _collective(name: str) -> None:
    if _LOCAL_ONLY:
        raise RuntimeError(f"global_batch.{name} called inside {_LOCAL_ONLY[-1]}, which must make no collective "
                           "call (every rank must make the same collective calls in the same order)")


class Ranks(NamedTuple):
    """The processes that share one step's global batch (torch.distributed with W > 1): this
    process's ``rank``, their number ``size`` W and their process ``group`` (None: the default one).

    The trainer hands it to the objective with each micro-batch (in the step context); the
    functions below take it as an argument and never read torch.distributed's global state: with
    ``ranks=None`` (one process) they are local.
    """

    rank: int
    size: int
    group: Any = None


def many_ranks(ranks: Optional[Ranks]) -> bool:
    """Whether ``ranks`` holds more than one process (else every function here is local)."""
    return ranks is not None and ranks.size > 1


def global_mean(total: torch.Tensor, count, ranks: Optional[Ranks] = None) -> torch.Tensor:
    """This rank's share of sum / count over every rank of ``ranks`` (module docstring): ``total`` a
    scalar with graph (0 where this rank has nothing), ``count`` its number (or weight) of items;
    0, with graph, where no rank has any."""
    _collective("global_mean")
    n = torch.as_tensor(count, device=total.device).detach().to(torch.float64).clone()
    scale = 1.0
    if many_ranks(ranks):
        torch.distributed.all_reduce(n, group=ranks.group)
        scale = float(ranks.size)
    return total * scale / n.clamp(min=1.0).to(total.dtype)


def global_sum(x: torch.Tensor, ranks: Optional[Ranks] = None) -> torch.Tensor:
    """``x`` summed over every rank of ``ranks`` (one all_reduce; ``x`` itself for one process).
    Every rank must call it."""
    _collective("global_sum")
    if not many_ranks(ranks):
        return x
    total = x.clone()
    torch.distributed.all_reduce(total, group=ranks.group)
    return total


def global_moments(values: torch.Tensor, ranks: Optional[Ranks] = None):
    """(count float, mean, M2) of float64 ``values`` float[n] of every rank of ``ranks`` together
    (Chan et al.; one all_gather); mean and M2 0-d tensors, 0 for no value."""
    _collective("global_moments")
    n = float(values.numel())
    mean = values.mean() if n else values.new_zeros(())
    m2 = (values - mean).square().sum() if n else values.new_zeros(())
    if not many_ranks(ranks):
        return n, mean, m2
    mine = torch.stack([values.new_tensor(n), mean, m2])
    parts = [torch.empty_like(mine) for _ in range(ranks.size)]
    torch.distributed.all_gather(parts, mine, group=ranks.group)
    counts, means, m2s = torch.stack(parts).unbind(1)
    total = float(counts.sum())
    if total == 0:
        return 0.0, values.new_zeros(()), values.new_zeros(())
    mean = (counts * means).sum() / total
    return total, mean, m2s.sum() + (counts * (means - mean).square()).sum()


class _GatherWithGrad(torch.autograd.Function):
    """x [b, ...] on every rank of ``ranks`` -> [W b, ...] in rank order; the gradient of this
    rank's rows is the sum over ranks of theirs (what the deprecated
    ``torch.distributed.nn.functional.all_gather`` did; torch's suggested
    ``_functional_collectives.all_gather_single`` is private)."""

    @staticmethod
    def forward(ctx, x, ranks):
        parts = [torch.empty_like(x) for _ in range(ranks.size)]
        torch.distributed.all_gather(parts, x.contiguous(), group=ranks.group)
        ctx.rows = (ranks.rank * x.shape[0], (ranks.rank + 1) * x.shape[0])
        ctx.group = ranks.group
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        torch.distributed.all_reduce(grad, group=ctx.group)
        return grad[ctx.rows[0]:ctx.rows[1]], None


def gather_with_grad(x: torch.Tensor, ranks: Optional[Ranks] = None) -> torch.Tensor:
    """Every rank's x [b, ...] (same shape on every rank) in rank order, with gradients; x for one process."""
    _collective("gather_with_grad")
    return _GatherWithGrad.apply(x, ranks) if many_ranks(ranks) else x


def gather_padded(x: torch.Tensor, mask: torch.Tensor, ranks: Optional[Ranks] = None):
    """(x float[W b, M*, ...] with gradients, mask bool[W b, M*], this rank's first row): every
    rank's x [b, M, ...] and mask bool[b, M], padded (zeros, mask False) to the largest M of
    any rank along dim 1; (x, mask, 0) for one process."""
    _collective("gather_padded")
    if not many_ranks(ranks):
        return x, mask, 0
    dist = torch.distributed
    longest = torch.tensor([x.shape[1]], device=x.device)
    dist.all_reduce(longest, op=dist.ReduceOp.MAX, group=ranks.group)
    extra = int(longest) - x.shape[1]
    if extra:
        x = F.pad(x, (0, 0) * (x.dim() - 2) + (0, extra))
        mask = torch.cat([mask, mask.new_zeros(mask.shape[0], extra)], dim=1)
    flags = mask.to(torch.uint8).contiguous()
    parts = [torch.empty_like(flags) for _ in range(ranks.size)]
    dist.all_gather(parts, flags, group=ranks.group)
    return _GatherWithGrad.apply(x, ranks), torch.cat(parts).bool(), ranks.rank * x.shape[0]


def global_any(flag: bool, ranks: Optional[Ranks] = None, device=None) -> bool:
    """Whether ``flag`` is True on any rank of ``ranks`` (one all_reduce of a tensor on ``device``,
    the device of the process group's backend), so that every rank stops together."""
    _collective("global_any")
    if not many_ranks(ranks):
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX, group=ranks.group)
    return bool(t.item() > 0)


def global_barrier(ranks: Optional[Ranks] = None) -> None:
    """Wait for every rank of ``ranks`` (nothing for one process)."""
    _collective("global_barrier")
    if many_ranks(ranks):
        torch.distributed.barrier(group=ranks.group)


def gather_objects(obj, ranks: Optional[Ranks] = None) -> list:
    """Every rank's picklable ``obj``, in rank order (a one-element list for one process)."""
    _collective("gather_objects")
    if not many_ranks(ranks):
        return [obj]
    out = [None] * ranks.size
    torch.distributed.all_gather_object(out, obj, group=ranks.group)
    return out
