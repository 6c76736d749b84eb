"""Bad input to the public model API (issue 32, N5-N7 and the meta-device items): export folders,
tokenizer and weight files, images and expressions, meta tensors. Each case ends with a
ValueError of loupe_core.errors' types (plain ValueError in shapley_kernels) that names the
file or the argument, never a raw library error, a NaN or a silent load."""
import json
import os
import pickle

import numpy as np
import pytest
import torch

import loupe_core
import shapley_kernels as sk
from loupe_core.data import Tokenizer
from loupe_core.errors import CheckpointError, DataError

pytestmark = pytest.mark.faults

TINY = dict(image_size=32, patch_size=8, image_dim=32, image_depth=1, image_heads=2, text_vocab_size=64,
            text_dim=32, text_depth=1, text_heads=2, text_max_tokens=8, embed_dim=16, top_k=3)


def _model():
    torch.manual_seed(0)
    tok = Tokenizer.train(["a red circle", "a blue square left of a green triangle"], vocab_size=64, max_length=8)
    return loupe_core.create_model(TINY, tokenizer=tok).eval()


@pytest.fixture
def export(tmp_path):
    return _model().save_pretrained(str(tmp_path / "export"))


def _flip_bit(path: str, offset: int) -> None:
    data = bytearray(open(path, "rb").read())
    data[offset] ^= 0x10
    open(path, "wb").write(bytes(data))


# N5: export folders --------------------------------------------------------------------------

def test_an_export_round_trips_with_its_digests(export):
    cfg = json.load(open(os.path.join(export, "config.json")))
    assert set(cfg["sha256"]) == {"model.safetensors", "tokenizer.json", "config.json"}
    back = loupe_core.load_checkpoint(export)
    for (k, a), (_, b) in zip(back.state_dict().items(), _model().state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)


@pytest.mark.parametrize("where", ["header", "tensor bytes"])
def test_a_flipped_bit_in_the_weights_is_named(export, where):
    path = os.path.join(export, "model.safetensors")
    _flip_bit(path, 20 if where == "header" else os.path.getsize(path) - 7)
    with pytest.raises(CheckpointError, match="model.safetensors.*damaged"):
        loupe_core.load_checkpoint(export)


def test_a_flipped_value_in_config_json_is_named(export):
    path = os.path.join(export, "config.json")
    cfg = json.load(open(path))
    cfg["model"]["top_k"] = 5  # valid JSON and a valid config, but not what was exported
    json.dump(cfg, open(path, "w"))
    with pytest.raises(CheckpointError, match="config.json.*damaged"):
        loupe_core.load_checkpoint(export)


@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage", b"{not json", b"[1, 2]", b'{"model": {"top_k": -3}}',
                                     b'{"model": {"image_dim": "wide"}}'])
def test_a_bad_config_json_is_named(export, content):
    open(os.path.join(export, "config.json"), "wb").write(content)
    with pytest.raises(CheckpointError, match="config.json"):
        loupe_core.load_checkpoint(export)


def test_a_missing_config_json_is_named(export):
    os.unlink(os.path.join(export, "config.json"))
    with pytest.raises(CheckpointError, match="config.json is missing"):
        loupe_core.load_checkpoint(export)


def _rewrite_without_digests(export):
    path = os.path.join(export, "config.json")
    cfg = json.load(open(path))
    del cfg["sha256"]
    json.dump(cfg, open(path, "w"))


def test_garbage_weights_without_digests_are_named(export, caplog):
    _rewrite_without_digests(export)
    open(os.path.join(export, "model.safetensors"), "wb").write(os.urandom(300))
    with pytest.raises(CheckpointError, match="model.safetensors.*could not be read"):
        loupe_core.load_checkpoint(export)
    assert "cannot be verified" in caplog.text


def test_weights_of_another_config_are_named(export, tmp_path):
    other = loupe_core.create_model(dict(TINY, image_dim=64)).save_pretrained(str(tmp_path / "other"))
    _rewrite_without_digests(export)
    os.replace(os.path.join(other, "model.safetensors"), os.path.join(export, "model.safetensors"))
    with pytest.raises(CheckpointError, match="model.safetensors.*do not fit"):
        loupe_core.load_checkpoint(export)


def test_nan_weights_in_an_export_are_refused_naming_the_weight(tmp_path):
    model = _model()
    with torch.no_grad():
        model.logit_scale.fill_(float("nan"))
    folder = model.save_pretrained(str(tmp_path / "nan"))  # digests match: the NaN was exported
    with pytest.raises(CheckpointError, match="non-finite.*logit_scale"):
        loupe_core.load_checkpoint(folder)


def test_a_damaged_or_garbage_tokenizer_json_is_named(export):
    path = os.path.join(export, "tokenizer.json")
    _flip_bit(path, 40)
    with pytest.raises(CheckpointError, match="tokenizer.json.*damaged"):
        loupe_core.load_checkpoint(export)
    _rewrite_without_digests(export)
    open(path, "wb").write(b"\x80\x81 not a tokenizer")
    with pytest.raises(DataError, match="tokenizer.json"):
        loupe_core.load_checkpoint(export)


def test_a_missing_tokenizer_listed_in_the_digests_is_named(export):
    os.unlink(os.path.join(export, "tokenizer.json"))
    with pytest.raises(CheckpointError, match="tokenizer.json is missing"):
        loupe_core.load_checkpoint(export)


def test_a_lone_safetensors_file_is_named(tmp_path):
    from safetensors.torch import save_file

    path = str(tmp_path / "foreign.safetensors")
    save_file({"w": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="export folder"):
        loupe_core.load_checkpoint(path)


# N6: tokenizer and weight files --------------------------------------------------------------

@pytest.mark.parametrize("name,content", [("tok.json", b"\xff\xfe garbage"), ("tok.json", b'{"model": 3}'),
                                          ("vocab.txt", b"\xff\xfe\x00\x01"), ("vocab.txt", b"hello\nworld\n")])
def test_a_garbage_tokenizer_file_is_named(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=name):
        loupe_core.get_tokenizer(str(path))


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/loupe_pickle_ran",))


def _timm():
    from loupe_core.model.towers import import_timm

    try:
        import_timm()
    except ValueError:
        pytest.skip("timm is not importable")


@pytest.mark.parametrize("kind", ["garbage.pth", "garbage.safetensors", "pickle.pth", "list.pth", "foreign.pth"])
def test_garbage_or_pickle_image_weights_are_named(tmp_path, kind):
    _timm()
    path = tmp_path / kind
    if kind.startswith("garbage"):
        path.write_bytes(os.urandom(256))
    elif kind == "pickle.pth":
        path.write_bytes(pickle.dumps({"state_dict": _Payload()}))
    elif kind == "list.pth":
        torch.save([torch.zeros(2)], str(path))
    else:
        torch.save({"w": torch.zeros(3)}, str(path))
    if os.path.exists("/tmp/loupe_pickle_ran"):
        os.unlink("/tmp/loupe_pickle_ran")
    with pytest.raises(CheckpointError, match=kind.replace(".", r"\.")):
        loupe_core.create_model(TINY, image_weights=str(path))
    assert not os.path.exists("/tmp/loupe_pickle_ran")


@pytest.mark.parametrize("content", [b"\xff\xfe{}", b"{broken", b"[]", b'{"model_type": "bert"}'])
def test_a_bad_text_weights_config_json_is_named(tmp_path, content):
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(CheckpointError, match="config.json"):
        loupe_core.create_model(TINY, text_weights=str(tmp_path))


# N7: images and expressions ------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["nan", "inf", "bool", "complex", "int64", "none in list", "str in list",
                                 "empty list", "meta"])
def test_bad_images_are_named(bad):
    model = _model()
    x = torch.randn(2, 3, 32, 32)
    images = {"nan": x.index_put((torch.tensor([0]),), torch.tensor(float("nan"))),
              "inf": x.clone().fill_(float("inf")), "bool": x > 0, "complex": x.to(torch.complex64),
              "int64": x.long(), "none in list": [None], "str in list": ["cat.jpg"], "empty list": [],
              "meta": x.to("meta")}[bad]
    for call in (lambda: model.encode_image(images), lambda: model.ground(images, ["a red circle"] * 2)):
        with pytest.raises(DataError, match="images"):
            call()


def test_bad_numpy_images_are_named():
    model = _model()
    with pytest.raises(DataError, match="images.*bool"):
        model.encode_image(np.zeros((1, 32, 32, 3), dtype=bool))
    with pytest.raises(DataError, match="images.*NaN"):
        model.encode_image(np.full((1, 3, 32, 32), np.nan, dtype=np.float32))


def test_bad_expressions_and_top_k_are_named():
    model = _model()
    images = torch.randn(2, 3, 32, 32)
    with pytest.raises(DataError, match="images: an empty list"):
        model.ground([], [])
    with pytest.raises(DataError, match="expressions must hold one entry per image"):
        model.ground(images, [])
    with pytest.raises(DataError, match=r"expressions\[1\]"):
        model.ground(images, ["a red circle", []])
    with pytest.raises(DataError, match=r"expressions\[0\]"):
        model.ground(images, [None, "a red circle"])
    for top_k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="top_k"):
            model.ground(images, ["a red circle", "a blue square"], top_k=top_k)


# meta tensors at the estimator boundary -----------------------------------------------------

def test_meta_pairs_coalitions_and_masks_are_named():
    game = lambda c: c.double().sum(1)  # noqa: E731
    with pytest.raises(ValueError, match="pairs is a meta tensor"):
        sk.interaction_index(game, 3, torch.tensor([[0, 1]], device="meta"))
    with pytest.raises(ValueError, match="coalitions is a meta tensor"):
        sk.coalition_interaction(game, 3, torch.ones(1, 3, dtype=torch.bool, device="meta"))
    model = _model()
    img = model.image_tower.embed_tokens(torch.randn(1, 3, 32, 32)).detach()
    txt = model.text_tower.embed_tokens(torch.tensor([[5, 6, 7]])).detach()
    regions = torch.zeros(1, 1, img.shape[1], dtype=torch.bool)
    regions[0, 0, :2] = True
    for name in ("text_mask", "image_mask"):
        masks = {"text_mask": torch.ones(1, 3, dtype=torch.bool), "image_mask": torch.ones(1, img.shape[1], dtype=torch.bool)}
        masks[name] = masks[name].to("meta")
        with pytest.raises(ValueError, match=f"{name} is a meta tensor"):
            sk.region_interaction(model.image_tower, model.text_tower, img, txt, regions, num_samples=4, **masks)
    with pytest.raises(ValueError, match="image_tokens is a meta tensor"):
        sk.region_interaction(model.image_tower, model.text_tower, img.to("meta"), txt, regions, num_samples=4)
