"""The objective as registered terms: a new term from this file alone, the terms each config
builds, the collective-call rule, earlier checkpoints and configs."""
import json
import os
from dataclasses import dataclass

import pytest
import torch

from loupe_core import global_batch as gb
from loupe_core.config import RunConfig
from loupe_core.errors import ConfigError
from loupe_core.objective import LoupeObjective, StepContext
from loupe_core.objective.losses import cmc_loss
from loupe_core.objective.terms import TERMS, Term, register_term, unregister_term
from loupe_core.train import checkpoint as ckpt
from test_model import FAST, TINY, make_batch

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


@dataclass
class ToySection:
    weight: float = 1.0

    def __post_init__(self):
        if not self.weight > 0:
            raise ValueError(f"weight must be > 0, got {self.weight}")


class ToyTerm(Term):
    """weight x the mean squared distance of each pair's global image and text embeddings."""

    name, collective, Section = "toy", False, ToySection

    def forward(self, view, step):
        return self.config.weight * (view.img.global_emb - view.txt.global_emb).square().sum(-1).mean()


@pytest.fixture
def toy():
    register_term(ToyTerm)
    yield ToyTerm
    unregister_term("toy")


def test_a_term_registered_here_trains_with_its_own_config_section(toy):
    torch.manual_seed(0)
    objective = LoupeObjective(TINY, dict(FAST, terms={"toy": {"weight": 0.5}}))
    assert list(objective.terms) == ["cmc", "toy"]
    batch = make_batch()
    out = objective(batch)
    img, txt = objective.embed(batch)
    want = {"cmc": cmc_loss(img, txt, objective.model.contrastive_scale()),
            "toy": 0.5 * (img - txt).square().sum(-1).mean()}
    assert set(out.terms) == set(want)
    for name in want:
        torch.testing.assert_close(out.terms[name], want[name])
    torch.testing.assert_close(out.total, want["cmc"] + want["toy"])
    out.total.backward()
    assert objective.model.logit_scale.grad is not None
    with pytest.raises(ValueError, match=r"loss.terms.toy.*weight must be > 0"):
        LoupeObjective(TINY, dict(FAST, terms={"toy": {"weight": -1.0}}))
    with pytest.raises(ValueError, match=r"unknown config key 'loss.terms.toy.wieght'"):
        LoupeObjective(TINY, dict(FAST, terms={"toy": {"wieght": 1.0}}))


def test_a_section_of_no_registered_term_is_refused_naming_it():
    with pytest.raises(ConfigError, match=r"loss.terms.nosuch: no such loss term"):
        LoupeObjective(TINY, dict(FAST, terms={"nosuch": {}}))
    with pytest.raises(ConfigError, match="registered already"):
        register_term(type("Other", (Term,), {"name": "cmc"}))
    register_term(type("Bare", (Term,), {"name": "bare"}))  # no Section: not configurable under loss.terms
    try:
        with pytest.raises(ConfigError, match=r"loss.terms.bare: the term Bare takes no section there"):
            LoupeObjective(TINY, dict(FAST, terms={"bare": {}}))
    finally:
        unregister_term("bare")


@pytest.mark.parametrize("loss, built", [
    (dict(), ["cmc"]),
    (dict(tsa=True, fsa=True, unsil=True, token_source="hybrid"), ["cmc", "tsa", "fsa", "unsil"]),
    (dict(cmc=False, fine_contrast=1.0, pacl=0.5, simclr=0.2), ["fine", "simclr", "pacl"]),
])
def test_each_config_builds_its_terms_in_the_registry_order(loss, built):
    objective = LoupeObjective(TINY, dict(FAST, **loss))
    assert list(objective.terms) == built
    assert [name for name in TERMS if name in built] == built
    assert objective.bank_terms == (("cmc",) if "cmc" in built else ())


def test_a_collective_call_where_none_is_allowed_raises_instead_of_hanging(toy, monkeypatch):
    """A term marked ``collective = False`` (and UNSIL's probe) runs under global_batch.local_only:
    a collective there fails on one process already, not only as a hang of a multi-rank run."""
    monkeypatch.setattr(ToyTerm, "forward", lambda self, view, step: gb.global_mean(view.img.global_emb.sum(), 4))
    objective = LoupeObjective(TINY, dict(FAST, terms={"toy": {}}))
    with pytest.raises(RuntimeError, match=r"global_mean called inside loss term 'toy'"):
        objective(make_batch())
    with gb.local_only("a probe"):
        with pytest.raises(RuntimeError, match="inside a probe"):
            gb.gather_with_grad(torch.ones(2))
    assert gb.global_sum(torch.ones(2)).tolist() == [1.0, 1.0]  # outside: allowed


def test_the_unsil_probe_makes_no_collective_call(monkeypatch):
    import loupe_core.objective.labels as lab

    calls = []
    real = lab.local_only
    monkeypatch.setattr(lab, "local_only", lambda where: calls.append(where) or real(where))
    objective = LoupeObjective(TINY, dict(FAST, tsa=True, unsil=True, token_source="hybrid", probe_size=2))
    out = objective(make_batch(), StepContext(index=5, total_steps=10))
    assert calls == ["UNSIL's token-level probe"] and "unsil_probe_error_token" in out.logs


def test_an_earlier_checkpoint_and_every_earlier_named_config_still_load():
    """tests/fixtures: a tiny checkpoint and the named configs written by main's code before the
    terms (flat LossConfig, no ``loss.terms``)."""
    state = ckpt.load_checkpoint(os.path.join(FIXTURES, "earlier_tiny_step0.pt"))
    cfg = RunConfig.from_dict(state["config"])
    objective = LoupeObjective(cfg.model, cfg.loss)
    objective.load_state_dict(state["model"])  # strict
    assert list(objective.terms) == ["cmc", "tsa", "fsa", "unsil"]
    for name, saved in json.load(open(os.path.join(FIXTURES, "earlier_configs.json"))).items():
        loaded = RunConfig.from_dict(saved)
        assert loaded.loss.terms == {} and loaded.to_dict()["loss"] == dict(saved["loss"], terms={}), name


def test_a_simclr_head_of_an_earlier_layout_moves_under_its_term():
    torch.manual_seed(0)
    objective = LoupeObjective(TINY, dict(FAST, simclr=0.5))
    state = objective.state_dict()
    earlier = {key.replace("terms.simclr.head.", "simclr_head."): value for key, value in state.items()}
    assert earlier != state
    fresh = LoupeObjective(TINY, dict(FAST, simclr=0.5))
    fresh.load_state_dict(earlier)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in state.items())
    flat = {key[len("model."):] if key.startswith("model.") else key: value for key, value in earlier.items()}
    fresh.load_state_dict(flat)  # the layout before the objective was split from the model
