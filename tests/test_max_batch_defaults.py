"""The device-dependent default batch sizes (issue 29 item 4): the CPU default bounds every game
call, CUDA keeps the large one, and an explicit max_batch still wins."""
import torch

import shapley_kernels as sk
from shapley_kernels import defaults
from shapley_kernels.token_level import TransformerTower, dual_encoder_game


class RecordingGame:
    """A linear game recording the rows of each call; its exact Shapley values are its weights."""

    def __init__(self, weights):
        self.weights, self.calls = weights, []

    def __call__(self, z):
        self.calls.append(z.shape[0])
        return z.double() @ self.weights


def test_defaults_by_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert defaults.default_max_batch(cpu) == defaults.MAX_BATCH_CPU < defaults.default_max_batch(cuda)
    assert defaults.default_tokens_per_call(cpu) == defaults.TOKENS_PER_CALL_CPU
    assert defaults.default_tokens_per_call(cuda) == defaults.TOKENS_PER_CALL_GPU > defaults.TOKENS_PER_CALL_CPU


def test_cpu_default_bounds_game_calls_and_keeps_draws():
    n, budget = 12, 3000
    weights = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    default, large = RecordingGame(weights), RecordingGame(weights)
    got = sk.shapley_values(default, n, method="sampling", estimator="permutation", budget=budget, seed=4)
    want = sk.shapley_values(large, n, method="sampling", estimator="permutation", budget=budget, seed=4,
                             max_batch=defaults.MAX_BATCH_GPU)
    assert max(default.calls) <= defaults.MAX_BATCH_CPU < sum(default.calls)
    assert max(large.calls) > defaults.MAX_BATCH_CPU
    torch.testing.assert_close(got, want, rtol=0, atol=0)  # same draws, same values
    torch.testing.assert_close(got, weights, rtol=1e-9, atol=1e-9)  # linear game: phi = weights


def test_token_engine_cpu_default_rows_per_call(monkeypatch):
    monkeypatch.setattr(defaults, "TOKENS_PER_CALL_CPU", 40)
    torch.manual_seed(0)
    img = TransformerTower(dim=8, depth=1, heads=2, max_tokens=8, out_dim=6).double().eval()
    txt = TransformerTower(dim=8, depth=1, heads=2, max_tokens=8, out_dim=6).double().eval()
    rows = []

    def image_encoder(x, keep):
        rows.append(x.shape[0])
        return img(x, keep)

    x_img, x_txt = torch.randn(8, 8, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    coalitions = torch.rand(64, 11, generator=torch.Generator().manual_seed(1)) < 0.5
    got = dual_encoder_game(image_encoder, txt, x_img, x_txt)(coalitions)
    assert max(rows) == 40 // 8 and sum(rows) == torch.unique(coalitions[:, :8], dim=0).shape[0]
    want = dual_encoder_game(img, txt, x_img, x_txt, max_batch=1000)(coalitions)
    torch.testing.assert_close(got, want)
