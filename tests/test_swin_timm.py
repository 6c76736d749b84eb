"""The Swin image tower against the real timm (no stand-in): features, zero baseline, drop error,
weights from a local timm checkpoint file."""
import pytest
import torch

from loupe_core.objective import LoupeObjective, StepContext
from loupe_core.model.towers import import_timm

try:
    timm = import_timm()
except ValueError:  # timm not installed (CI installs it: .ci/run)
    timm = None

pytestmark = pytest.mark.skipif(timm is None, reason="timm is not importable")

SWIN = dict(image_tower="swin", swin_name="swin_tiny_patch4_window7_224", image_size=32, text_vocab_size=64,
            text_dim=16, text_depth=1, text_heads=2, text_max_tokens=8, embed_dim=16, top_k=2, num_random=1)
FAST = dict(token_num_samples=4, pairs_per_step=1, probe_size=0)


def _objective(**loss):
    torch.manual_seed(0)
    return LoupeObjective(SWIN, dict(FAST, **loss)).eval()


def test_swin_tower_runs_timm_forward_features():
    model = _objective().model
    tower = model.image_tower
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pooled, final = tower.encode(tower.embed_tokens(images))
        want = tower.swin.forward_features(images).flatten(1, 2)  # timm's own path, NHWC
    torch.testing.assert_close(final, want)
    torch.testing.assert_close(pooled, want.mean(dim=1))
    assert tower.token_grid == (8, 8) and tower.final_grid == (1, 1)
    feats = model.encode_images(images)
    assert feats.global_emb.shape == (2, 16) and feats.patch_emb.shape == (2, 1, 16)


def test_swin_zero_baseline_trains_one_step():
    objective = _objective(tsa=True, token_baseline="zero").train()
    batch = {"images": torch.randn(2, 3, 32, 32), "input_ids": torch.randint(1, 64, (2, 5)),
             "text_mask": torch.ones(2, 5, dtype=torch.bool)}
    out = objective(batch, StepContext(index=5, total_steps=10))
    assert set(out.terms) == {"cmc", "tsa"} and torch.isfinite(out.total)
    out.total.backward()
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0)
               for p in objective.model.image_tower.swin.parameters())


def test_swin_drop_is_an_error():
    with pytest.raises(ValueError, match="drop"):
        LoupeObjective(SWIN, dict(FAST, tsa=True, token_baseline="drop"))
    tower = _objective().model.image_tower
    tokens = tower.embed_tokens(torch.randn(1, 3, 32, 32))
    keep = torch.ones(tokens.shape[:2], dtype=torch.bool)
    keep[0, 3] = False
    with pytest.raises(ValueError, match="cannot drop tokens"):
        tower(tokens, keep)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_swin_loads_a_local_timm_checkpoint(tmp_path, suffix):
    torch.manual_seed(1)
    source = timm.create_model(SWIN["swin_name"], pretrained=False, num_classes=5, img_size=32).eval()
    path = str(tmp_path / f"swin{suffix}")
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    else:
        torch.save({"state_dict": source.state_dict()}, path)
    tower = _objective().model.image_tower
    tower.load_timm_weights(path)
    got = tower.swin.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith("head.") and key in got:
            torch.testing.assert_close(got[key], value, msg=key)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(tower.encode(tower.embed_tokens(images))[1],
                                   source.forward_features(images).flatten(1, 2))
    with pytest.raises(ValueError, match="image_weights"):
        tower.load_timm_weights(str(tmp_path / "missing.pth"))
