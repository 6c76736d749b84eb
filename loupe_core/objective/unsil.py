"""UNSIL: uncertainty-aware neural Shapley interaction learning (spec section 5, paper App. D).

A small network predicts an interaction I^ (in units of a running standard deviation of the
level's sampled targets) and an uncertainty sigma in (0, 1). Both levels share one input form:

- token level: query = region embedding h [d]; sequence A = the image's patch embeddings
  (targets: the region's patches); sequence B = the caption's word-token embeddings.
- semantic level: query = [h_i, h_j] (target region and phrase) [2d]; sequence A = [CLS_I] and
  the K region embeddings (target: region i); sequence B = [CLS_T] and the M phrase embeddings
  (target: phrase j).

Architecture: "mlp_attention" (additive attention with the query, u_k = w3 . tanh(W4 h + W5 x_k)),
the design the paper keeps (App. D). Its other two designs (Conv1D, a 3-layer transformer) were
removed: no config selected them and no measurement gave them a place.
Inputs are detached by the caller, so L_UNSIL trains UNSIL only.
"""
from typing import NamedTuple, Optional

import torch
from torch import nn

from ..global_batch import Ranks, global_moments, global_sum

SIGMA_FLOOR = 1e-6  # keeps 1/sigma in Eq. 12 finite


class UnsilInputs(NamedTuple):
    """One row per interaction target T.

    query:    float[T, Dq]
    seq_a:    float[T, Na, D]   mask_a bool[T, Na] (True = present)   target_a bool[T, Na]
    seq_b:    float[T, Nb, D]   mask_b bool[T, Nb]                    target_b bool[T, Nb]
    """

    query: torch.Tensor
    seq_a: torch.Tensor
    mask_a: torch.Tensor
    target_a: torch.Tensor
    seq_b: torch.Tensor
    mask_b: torch.Tensor
    target_b: torch.Tensor


def _mlp(width_in: int, hidden: int, layers: int) -> nn.Sequential:
    """``layers`` linear layers with GELU between, ending in one output."""
    mods, width = [], width_in
    for _ in range(layers - 1):
        mods += [nn.Linear(width, hidden), nn.GELU()]
        width = hidden
    mods.append(nn.Linear(width, 1))
    return nn.Sequential(*mods)


class _AdditiveAttention(nn.Module):
    """e = sum_k alpha_k x_k, alpha = softmax_k(w3 . tanh(W4 h + W5 x_k)) over present x_k."""

    def __init__(self, hidden: int):
        super().__init__()
        self.w4 = nn.Linear(hidden, hidden, bias=False)
        self.w5 = nn.Linear(hidden, hidden)
        self.w3 = nn.Linear(hidden, 1, bias=False)

    def forward(self, h: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """h float[T, H], x float[T, N, H], mask bool[T, N] -> float[T, H] (0 with no present x)."""
        u = self.w3(torch.tanh(self.w4(h)[:, None, :] + self.w5(x))).squeeze(-1)
        u = u.masked_fill(~mask, torch.finfo(u.dtype).min)
        alpha = u.softmax(dim=1) * mask.to(u.dtype)
        return (alpha[:, :, None] * x).sum(dim=1)


class MlpAttentionUnsil(nn.Module):
    """App. D's kept design: attention-pooled A and B, concat [e_A, e_B, h], two 3-layer MLP heads."""

    def __init__(self, query_dim: int, feat_dim: int, hidden: int):
        super().__init__()
        self.query = nn.Linear(query_dim, hidden)
        self.in_a, self.in_b = nn.Linear(feat_dim, hidden), nn.Linear(feat_dim, hidden)
        self.att_a, self.att_b = _AdditiveAttention(hidden), _AdditiveAttention(hidden)
        self.estimate_head, self.sigma_head = _mlp(3 * hidden, hidden, 3), _mlp(3 * hidden, hidden, 3)

    def forward(self, x: UnsilInputs):
        h = self.query(x.query)
        e_a = self.att_a(h, self.in_a(x.seq_a), x.mask_a)
        e_b = self.att_b(h, self.in_b(x.seq_b), x.mask_b)
        feat = torch.cat([e_a, e_b, h], dim=1)
        return self.estimate_head(feat).squeeze(-1), self.sigma_head(feat).squeeze(-1)


ARCHITECTURES = {"mlp_attention": MlpAttentionUnsil}


TRACK_DECAY = 0.95  # per step: the correlation reflects about the last 20 steps


class Unsil(nn.Module):
    """One level's UNSIL network with the running standard deviation of its sampled targets.

    ``forward(inputs) -> (estimate float[T], sigma float[T])``: estimate in units of ``scale()``
    (raw interaction / running std), sigma in [1e-6, 1]. The running statistics (count, mean,
    M2 of every target observed) are registered buffers, so they live in ``state_dict`` and in
    checkpoints. So are the exponentially weighted moments of (estimate, sampled target) pairs
    that ``track`` records (decay ``TRACK_DECAY`` per call) and ``correlation`` reads: how well
    UNSIL's estimates, made before it trained on those targets, follow them.
    """

    def __init__(self, arch: str, query_dim: int, feat_dim: int, hidden: int):
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)}, got {arch!r}")
        self.net = ARCHITECTURES[arch](query_dim, feat_dim, hidden)
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("m2", torch.zeros((), dtype=torch.float64))
        # n, sum x, sum y, sum x^2, sum y^2, sum xy of tracked (estimate, target) pairs, decayed
        self.register_buffer("moments", torch.zeros(6, dtype=torch.float64))

    def forward(self, inputs: UnsilInputs):
        estimate, sigma_logit = self.net(inputs)
        return estimate, SIGMA_FLOOR + (1.0 - SIGMA_FLOOR) * torch.sigmoid(sigma_logit)

    def scale(self) -> float:
        """Running standard deviation of the observed targets (1.0 until two distinct values)."""
        if self.count.item() < 2:
            return 1.0
        std = (self.m2 / self.count).sqrt().item()
        return std if std > 1e-12 else 1.0

    @torch.no_grad()
    def observe(self, targets: torch.Tensor, ranks: Optional[Ranks] = None) -> None:
        """Merge raw sampled targets float[T] into the running statistics (Chan et al.); with
        ``ranks`` those of every rank (one all_gather: every rank must call it)."""
        t = targets.detach().to(self.mean.dtype).flatten()
        n_b, mean_b, m2_b = global_moments(t, ranks)  # every DDP rank's targets: the same statistics on every rank
        if n_b == 0:
            return
        n = self.count + n_b
        delta = mean_b - self.mean
        self.m2.add_(m2_b + delta.square() * self.count * n_b / n)
        self.mean.add_(delta * n_b / n)
        self.count.copy_(n)

    @torch.no_grad()
    def track(self, estimate: torch.Tensor, target: torch.Tensor, ranks: Optional[Ranks] = None) -> None:
        """Record held-out pairs: estimate float[T] (before training on them) and the sampled
        target float[T] in the same units (T may be 0); older pairs are down-weighted by
        ``TRACK_DECAY``. With ``ranks`` the pairs of every rank are recorded on every rank
        (one all_reduce: every rank must call it), so ``correlation`` and the gate it
        drives are the same on every rank."""
        x, y = estimate.detach().double().flatten(), target.detach().double().flatten()
        if x.shape != y.shape:
            raise ValueError(f"estimate and target must have the same shape, got {list(x.shape)} and {list(y.shape)}")
        stats = torch.stack([x.new_tensor(float(x.numel())), x.sum(), y.sum(), x.square().sum(), y.square().sum(),
                             (x * y).sum()]).to(self.moments.device)
        self.moments.mul_(TRACK_DECAY).add_(global_sum(stats, ranks))

    def correlation(self) -> float:
        """Pearson correlation of the tracked (estimate, target) pairs; 0.0 before it is defined."""
        n, sx, sy, sxx, syy, sxy = self.moments.tolist()
        if n < 2:
            return 0.0
        var_x, var_y = sxx - sx * sx / n, syy - sy * sy / n
        if var_x <= 1e-12 * max(sxx, 1e-300) or var_y <= 1e-12 * max(syy, 1e-300):
            return 0.0
        return (sxy - sx * sy / n) / (var_x * var_y) ** 0.5
