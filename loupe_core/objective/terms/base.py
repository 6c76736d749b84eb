"""A loss term of LOUPE's objective and the registry of terms (docs/ARCHITECTURE.md, "Loss").

A term is an ``nn.Module`` subclass of :class:`Term`, registered under its ``name`` with
:func:`register_term`. ``Term.section(loss_config)`` returns the term's typed config section (a
dataclass, validated on construction) or None where the config leaves the term out; the
objective builds the term as ``cls(section, model, objective)`` and calls ``forward(view, step)``
on every forward: ``view`` the lazy ``features.ForwardView`` of the model forward, ``step`` its
``StepContext``; it returns the term's loss, a scalar with graph (weight applied). Diagnostics go
into ``view.logs``.

``collective``: the term makes collective calls (``global_batch``'s means, sums and gathers over
``step.ranks``). Such a term makes them on every call, on every rank, in the same order,
whatever a rank's data: the objective calls every built term on every forward, and a rank with
nothing to score runs the term on empty tensors. A term with ``collective = False`` runs under
``global_batch.local_only``: a collective call inside it raises instead of hanging multi-rank
runs. ``bank``: the term is a loss over the whole accumulated batch (the trainer's
``ContrastiveBank``, ``step.bank``; ``LoupeObjective.bank_terms``). ``random_candidates``: the
term reads the region head's selection with its random candidates (``view.selection``).
``batch_keys``: the batch keys the term reads beyond images and captions (a built term may narrow
them by its section: :meth:`Term.needs`). ``Section``: the dataclass of the default
:meth:`Term.section` (a term configured under ``loss.terms``).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple, Type

import torch
from torch import nn

from ...errors import ConfigError
from ...schema import build

TERMS: Dict[str, Type["Term"]] = {}  # name -> Term class, in registration order (the order of the loss sum)


class Term(nn.Module):
    """One loss term (module docstring)."""

    name: str = ""
    Section: Optional[type] = None  # the dataclass of the default ``section`` (a term under ``loss.terms``)
    collective: bool = True
    bank: bool = False
    random_candidates: bool = False
    batch_keys: Tuple[str, ...] = ()

    def __init__(self, section, model, objective):
        super().__init__()
        self.config = section

    @classmethod
    def section(cls, loss_config) -> Optional[object]:
        """This term's config section from ``loss_config`` (a ``LossConfig``); None: not built.
        Default: ``loss_config.terms[name]`` (a dict of the section's fields) built into
        ``cls.Section``, for terms without keys of their own in ``LossConfig``."""
        raw = loss_config.terms.get(cls.name)
        if raw is None:
            return None
        if cls.Section is None:
            raise ConfigError(f"loss.terms.{cls.name}: the term {cls.__name__} takes no section there")
        return build(cls.Section, raw, f"loss.terms.{cls.name}.")

    def needs(self) -> Tuple[str, ...]:
        """The batch keys this built term reads beyond images and captions."""
        return self.batch_keys

    def forward(self, view, step) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def register_term(cls: Type[Term]) -> Type[Term]:
    """Class decorator: register ``cls`` under ``cls.name`` (ConfigError for a name taken by
    another class)."""
    if not cls.name:
        raise ConfigError(f"{cls.__name__}: a Term needs a name")
    if TERMS.get(cls.name, cls) is not cls:
        raise ConfigError(f"loss term {cls.name!r} is registered already ({TERMS[cls.name].__name__})")
    TERMS[cls.name] = cls
    return cls


def unregister_term(name: str) -> None:
    """Remove the term ``name`` from the registry (a test's own term, after the test)."""
    TERMS.pop(name, None)
