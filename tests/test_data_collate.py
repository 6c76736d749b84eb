"""collate_batch: the CONTRACTS s3 batch built from per-sample dicts, checked field by field."""
import numpy as np
import pytest
import torch

from loupe_core.data import IMAGE_MEAN, IMAGE_STD, Tokenizer, collate_batch, make_sample

CAPTIONS = ["a red circle and a big blue star", "stripes", "a cat, a dog, a cow and the moon"]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(CAPTIONS)


def _samples(tok, spans_per_caption):
    rng = np.random.default_rng(0)
    out = []
    for k, (cap, spans) in enumerate(zip(CAPTIONS, spans_per_caption)):
        out.append(make_sample(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), cap, spans, f"k{k}", tok))
    return out


def test_collate_shapes_padding_and_phrases(tok):
    spans = [[(0, 12), (17, 32)], [], [(0, 5), (7, 12), (14, 19), (24, 32)]]
    samples = _samples(tok, spans)
    batch = collate_batch(samples, max_phrases=3)
    lengths = [len(tok.encode(c)[0]) for c in CAPTIONS]
    assert batch["input_ids"].shape == (3, max(lengths)) and batch["input_ids"].dtype == torch.long
    assert batch["text_mask"].sum(1).tolist() == lengths
    for i, cap in enumerate(CAPTIONS):
        ids = tok.encode(cap)[0]
        assert batch["input_ids"][i, :len(ids)].tolist() == ids and (batch["input_ids"][i, len(ids):] == 0).all()
    assert batch["phrase_mask"].tolist() == [[True, True, False], [False, False, False], [True, True, True]]
    assert batch["phrase_tokens"].shape == (3, 3, max(lengths)) and batch["phrase_tokens"].dtype == torch.bool
    words = [[tok.token(int(t)) for t in batch["input_ids"][0][row]] for row in batch["phrase_tokens"][0][:2]]
    assert words == [["a", "red", "circle"], ["a", "big", "blue", "star"]]
    third = [tok.token(int(t)) for t in batch["input_ids"][2][batch["phrase_tokens"][2, 2]]]
    assert third == ["a", "cow"]  # the fourth phrase is cut by max_phrases=3
    assert batch["captions"] == CAPTIONS and batch["keys"] == ["k0", "k1", "k2"]
    assert batch["images"].shape == (3, 3, 8, 8) and batch["images"].dtype == torch.float32


def test_normalisation_uses_published_statistics(tok):
    img = np.zeros((4, 4, 3), dtype=np.uint8)
    img[..., 0] = 255
    out = make_sample(img, "stripes", [], "k", tok)["image"]
    expected = [(1.0 - IMAGE_MEAN[0]) / IMAGE_STD[0], -IMAGE_MEAN[1] / IMAGE_STD[1], -IMAGE_MEAN[2] / IMAGE_STD[2]]
    assert torch.allclose(out[:, 0, 0], torch.tensor(expected))


def test_no_phrase_anywhere_still_gives_one_padded_phrase_column(tok):
    batch = collate_batch(_samples(tok, [[], [], []]))
    assert batch["phrase_mask"].shape == (3, 1) and not batch["phrase_mask"].any()
    assert batch["phrase_tokens"].shape[:2] == (3, 1) and not batch["phrase_tokens"].any()


def test_phrase_beyond_the_token_limit_is_dropped():
    tok = Tokenizer(Tokenizer.train(CAPTIONS)._tok, max_length=3)
    sample = make_sample(np.zeros((2, 2, 3), np.uint8), CAPTIONS[0], [(0, 5), (17, 32)], "k", tok)
    assert sample["phrase_tokens"].shape == (1, 3)


def test_collate_errors(tok):
    samples = _samples(tok, [[], [], []])
    with pytest.raises(ValueError, match="max_phrases"):
        collate_batch(samples, max_phrases=0)
    with pytest.raises(TypeError, match="max_phrases"):
        collate_batch(samples, max_phrases=2.0)
    with pytest.raises(ValueError, match="samples"):
        collate_batch([])
    with pytest.raises(ValueError, match="caption"):
        make_sample(np.zeros((2, 2, 3), np.uint8), "   ", [], "k", tok)
