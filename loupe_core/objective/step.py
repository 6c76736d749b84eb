"""The step context: what the trainer knows about one micro-step that the objective needs, handed
over explicitly (``objective(batch, step)``), never inside the data batch.

``StepContext(index, total_steps, rows, global_size, ranks, bank, diagnostics)``: the optimiser
step (0-based) of ``total_steps``; each pair's row in the step's global batch and that batch's size
(``loupe_core.global_batch``: the label budget and every per-pair draw follow the rows, so W
processes give the one-process loss); the processes sharing the step (``global_batch.Ranks``,
None for one process); the contrastive bank of the accumulated step (None without accumulation);
whether to compute log-only diagnostics (UNSIL's probe). The seeds of the step's random streams
come from the one table ``global_batch.STREAMS`` (:meth:`StepContext.seed`).

The default context is one process, a batch that is its own global batch, step 0 of 1.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch

from .. import global_batch as gb
from ..errors import EstimatorInputError
from .losses import ContrastiveBank


@dataclass(frozen=True)
class StepContext:
    """One micro-step's context (module docstring). rows: long[b] on the CPU or None (the batch's
    own rows 0..b-1); global_size: G or None (b)."""

    index: int = 0
    total_steps: int = 1
    rows: Optional[torch.Tensor] = None
    global_size: Optional[int] = None
    ranks: Optional[gb.Ranks] = None
    bank: Optional[ContrastiveBank] = None
    diagnostics: bool = True

    @staticmethod
    def resolve(step: Optional["StepContext"], size: int) -> "StepContext":
        """``step`` (None: the default context) resolved for a micro-batch of ``size`` pairs
        (:meth:`for_batch`); EstimatorInputError naming ``step`` for anything but a StepContext."""
        if step is not None and not isinstance(step, StepContext):
            raise EstimatorInputError(f"step must be a loupe_core.objective.StepContext (or None), got "
                                      f"{type(step).__name__} {step!r}: build StepContext(index=..., total_steps=...)")
        return (step or StepContext()).for_batch(size)

    def for_batch(self, size: int) -> "StepContext":
        """This context with ``rows`` and ``global_size`` resolved for a micro-batch of ``size``
        pairs, and ``ranks`` None for one process; EstimatorInputError naming ``step.rows`` where
        they do not fit."""
        rows = torch.arange(size) if self.rows is None else torch.as_tensor(self.rows).detach().cpu().long()
        if rows.shape != (size,):
            raise EstimatorInputError(f"step.rows must be long[{size}] (one row per pair of the batch), "
                                      f"got {list(rows.shape)}")
        global_size = self.global_size if self.global_size is not None else (int(rows.max()) + 1 if size else 0)
        if size and not 0 <= int(rows.min()) <= int(rows.max()) < global_size:
            raise EstimatorInputError(f"step.rows must lie in [0, step.global_size={global_size}), "
                                      f"got {rows.tolist()}")
        ranks = self.ranks if gb.many_ranks(self.ranks) else None
        return replace(self, rows=rows, global_size=global_size, ranks=ranks)

    def seed(self, stream: str) -> int:
        """The seed of ``stream`` (a key of ``global_batch.STREAMS``) at this step."""
        return gb.stream_seed(self.index, stream)

    def uniforms(self, stream: str, n: int, device=None) -> torch.Tensor:
        """float[b, n]: each pair's n draws of U(0, 1) in ``stream``, from its own row's generator
        (``global_batch.pair_uniforms``; a resolved context, :meth:`for_batch`)."""
        return gb.pair_uniforms(self.seed(stream), self.rows, n, device)

    def in_warmup(self, fraction: float) -> bool:
        """Whether this step lies in the first ``fraction`` of the run's steps."""
        return self.index < fraction * self.total_steps
