"""Real-data loaders: webdataset shards (ShapesWorld round trip, bad records, workers, nodes,
resampling), CSV files, the phrase-precomputation step and the ``loupe data`` commands."""
import io
import json

import numpy as np
import pytest
import torch

from loupe_core.cli import main as data_main
from loupe_core.data import (DataStats, Tokenizer, add_phrases_to_shards, collate_batch, extract_noun_phrases,
                             make_csv_loader, make_sample, make_webdataset_loader, webdataset_samples,
                             write_shapesworld_shards)
from loupe_core.data.images import encode_png, normalize_image
from loupe_core.data.shapesworld import generate_split
from loupe_core.data.shards import read_shard, write_shard

NUM, SHARD = 12, 6
CONTRACT_KEYS = {"images", "input_ids", "text_mask", "phrase_tokens", "phrase_mask", "captions", "keys"}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    paths = write_shapesworld_shards(str(out), NUM, seed=5, shard_size=SHARD)
    images, records, _ = generate_split("train", NUM, image_size=64, seed=5)
    tok = Tokenizer.train([c["text"] for r in records for c in r["captions"]] + ["a red cat"])
    return str(out / "shapes-{000000..000001}.tar"), paths, images, records, tok


def _by_key(loader):
    out = {}
    for batch in loader:
        assert set(batch) == CONTRACT_KEYS
        for i, key in enumerate(batch["keys"]):
            n = int(batch["text_mask"][i].sum())
            out[key] = (batch["images"][i], batch["input_ids"][i, :n], batch["phrase_tokens"][i][batch["phrase_mask"][i]][:, :n],
                        batch["captions"][i])
    return out


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_shapesworld_shards_round_trip(shapes, workers):
    pattern, _, images, records, tok = shapes
    loader = make_webdataset_loader(pattern, tok, batch_size=4, num_workers=workers)
    got = _by_key(loader)
    assert sorted(got) == [r["key"] for r in records]
    for image, rec in zip(images, records):
        cap = rec["captions"][0]
        ref = make_sample(image, cap["text"], cap["phrases"], rec["key"], tok)
        img, ids, phrases, caption = got[rec["key"]]
        assert torch.equal(img, normalize_image(image)) and caption == cap["text"]
        assert torch.equal(ids, ref["input_ids"]) and torch.equal(phrases, ref["phrase_tokens"])
    assert loader.epoch_stats == DataStats(seen=NUM, kept=NUM)


def test_shard_json_holds_gold_annotation(shapes):
    _, paths, _, records, _ = shapes
    key, members = next(read_shard(paths[1]))
    meta = json.loads(members["json"])
    rec = records[SHARD]
    assert key == rec["key"] and members["txt"].decode() == meta["caption"] == rec["captions"][0]["text"]
    assert meta["refs"] == rec["captions"][0]["refs"] and [o["box"] for o in meta["objects"]] == [o["box"] for o in rec["objects"]]


def _png(seed=0, size=(20, 12)):
    return encode_png(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _jpeg():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (30, 40), (200, 10, 10)).save(buf, format="JPEG")
    return buf.getvalue()


def _bad_shard(path):
    good = _png()
    samples = [
        ("ok0", {"png": good, "txt": b"a red cat on a mat"}),
        ("corrupt", {"jpg": b"not an image at all", "txt": b"a red cat"}),
        ("truncated", {"png": good[: len(good) // 2], "txt": b"a red cat"}),
        ("noimage", {"txt": b"a red cat"}),
        ("empty", {"png": good, "txt": b"   "}),
        ("nophrase", {"jpg": _jpeg(), "txt": b"and then"}),
        ("ok1", {"png": good, "txt": b"the cat", "json": b'{"phrases": [[0, 7]]}'}),
        ("badjson", {"png": good, "txt": b"a red cat", "json": b"{not json"}),
        ("badspans", {"png": good, "txt": b"a red cat", "json": b'{"phrases": [[0, 70]]}'}),
    ]
    write_shard(str(path), samples)


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_records_are_skipped_and_counted(shapes, tmp_path, workers):
    tok = shapes[4]
    _bad_shard(tmp_path / "bad-0.tar")
    _bad_shard(tmp_path / "bad-1.tar")
    loader = make_webdataset_loader(str(tmp_path / "bad-{0..1}.tar"), tok, batch_size=2, image_size=16,
                                    num_workers=workers)
    got = _by_key(loader)
    assert sorted(got) == ["badjson", "badspans", "nophrase", "ok0", "ok1"]  # both shards hold the same keys
    assert loader.epoch_stats == DataStats(seen=18, kept=10, corrupt_image=4, missing_image=2, empty_caption=2,
                                           no_phrase=2)
    for key in ("badjson", "badspans"):  # unusable json: the chunker finds "a red cat" itself
        assert got[key][2].shape[0] == 1 and got[key][2].all()
    assert got["ok1"][2].shape[0] == 1 and got["ok1"][2].all()  # the json phrase [0, 7] covers "the cat"
    assert got["nophrase"][2].shape[0] == 0 and got["ok0"][0].shape == (3, 16, 16)
    assert "18 records: 10 kept, 8 skipped" in loader.epoch_stats.summary()
    list(loader)
    assert loader.stats.seen == 36 and loader.epoch_stats.seen == 18


@pytest.mark.parametrize("workers", [0, 1])
def test_missing_caption_is_skipped_and_a_wrong_caption_key_fails_naming_it(shapes, tmp_path, workers):
    write_shard(str(tmp_path / "x.tar"), [("a", {"png": _png(), "txt": b"a cat"}), ("b", {"png": _png()})])
    loader = make_webdataset_loader(str(tmp_path / "x.tar"), shapes[4], batch_size=1, num_workers=workers)
    assert [b["keys"] for b in loader] == [["a"]]  # one sample without its caption: skipped and counted
    assert loader.epoch_stats == DataStats(seen=2, kept=1, missing_caption=1)
    with pytest.raises(ValueError, match="no usable sample in a whole pass.*caption_key='caption'"):
        list(make_webdataset_loader(str(tmp_path / "x.tar"), shapes[4], batch_size=1, caption_key="caption"))
    write_shard(str(tmp_path / "j.tar"), [("a", {"png": _png(), "json": b'{"caption": "a cat"}'}),
                                          ("b", {"png": _png(), "json": b"{broken"})])
    loader = make_webdataset_loader(str(tmp_path / "j.tar"), shapes[4], batch_size=2, caption_key="json",
                                    num_workers=workers)
    assert [b["captions"] for b in loader] == [["a cat"]] and loader.epoch_stats.empty_caption == 1


def test_nodes_get_disjoint_shards(shapes, monkeypatch):
    pattern, _, _, records, tok = shapes
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        seen.append(set(_by_key(make_webdataset_loader(pattern, tok, batch_size=4))))
    assert not seen[0] & seen[1] and sorted(seen[0] | seen[1]) == [r["key"] for r in records]


def test_resampled_stream_is_cut_into_epochs(shapes):
    pattern, _, _, records, tok = shapes
    loader = make_webdataset_loader(pattern, tok, batch_size=4, resampled=True, batches_per_epoch=5, seed=1)
    batches = list(loader)
    assert len(batches) == 5 and all(len(b["keys"]) == 4 for b in batches)
    assert {k for b in batches for k in b["keys"]} <= {r["key"] for r in records}
    again = make_webdataset_loader(pattern, tok, batch_size=4, resampled=True, batches_per_epoch=5, seed=1)
    assert [b["keys"] for b in again] == [b["keys"] for b in batches]
    with pytest.raises(ValueError, match="batches_per_epoch"):
        make_webdataset_loader(pattern, tok, batch_size=4, resampled=True)


def test_phrase_step_precomputes_what_the_loader_would_extract(shapes, tmp_path):
    _, paths, _, _, tok = shapes
    stripped = []  # shards without json, as real caption data often comes
    for k, path in enumerate(paths):
        target = tmp_path / f"raw-{k}.tar"
        write_shard(str(target), [(key, {e: v for e, v in m.items() if e != "json"}) for key, m in read_shard(path)])
        stripped.append(str(target))
    write_shard(str(tmp_path / "raw-2.tar"), [("np", {"png": _png(), "txt": b"and then"})])
    assert data_main(["data", "phrases", "--shards", str(tmp_path / "raw-{0..2}.tar"), "--out", str(tmp_path / "out")]) == 0
    for key, members in read_shard(str(tmp_path / "out" / "raw-0.tar")):
        caption = members["txt"].decode()
        assert json.loads(members["json"])["phrases"] == [list(s) for s in extract_noun_phrases(caption)]
    counts = add_phrases_to_shards([str(tmp_path / "raw-2.tar")], str(tmp_path / "out2"))
    assert counts == {"samples": 1, "with_phrases": 0, "without_phrases": 1}
    precomputed = _by_key(make_webdataset_loader(str(tmp_path / "out/raw-{0..2}.tar"), tok, batch_size=5))
    extracted = _by_key(make_webdataset_loader(str(tmp_path / "raw-{0..2}.tar"), tok, batch_size=5))
    assert precomputed.keys() == extracted.keys()
    assert all(torch.equal(precomputed[k][2], extracted[k][2]) for k in extracted)
    with pytest.raises(ValueError, match="caption_key"):
        add_phrases_to_shards(stripped[:1], str(tmp_path / "out3"), caption_key="json")


def test_cli_shapes_writes_shards(tmp_path, capsys):
    assert data_main(["data", "shapes", "--out", str(tmp_path), "--num", "5", "--shard-size", "2", "--seed", "5"]) == 0
    assert "5 samples in 3 shards" in capsys.readouterr().out
    keys = [k for i in range(3) for k, _ in read_shard(str(tmp_path / f"shapes-{i:06d}.tar"))]
    assert keys == [f"train_{i:06d}" for i in range(5)]
    assert data_main(["data", "shapes", "--out", str(tmp_path), "--num", "5", "--shard-size", "0"]) == 2


def _csv(tmp_path, sep="\t", header=("filepath", "title")):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(_png(1))
    (tmp_path / "imgs" / "b.jpg").write_bytes(_jpeg())
    (tmp_path / "imgs" / "bad.jpg").write_bytes(b"\xff\xd8 broken")
    rows = [("imgs/a.png", "a small dog"), ("imgs/b.jpg", "a red square, and then"), ("imgs/bad.jpg", "a cat"),
            ("imgs/missing.png", "a cat"), ("imgs/a.png", ""), ("imgs/b.jpg", "quickly")]
    text = sep.join(header) + "\n" + "".join(f"{p}{sep}{c}\n" for p, c in rows)
    (tmp_path / "pairs.tsv").write_text(text)
    return str(tmp_path / "pairs.tsv")


@pytest.mark.parametrize("workers", [0, 2])
def test_csv_loader_skips_and_counts(shapes, tmp_path, workers):
    path = _csv(tmp_path)
    loader = make_csv_loader(path, shapes[4], batch_size=2, image_size=8, num_workers=workers, shuffle=False)
    got = _by_key(loader)
    assert sorted(got) == ["0:imgs/a.png", "1:imgs/b.jpg", "5:imgs/b.jpg"]
    assert got["1:imgs/b.jpg"][3] == "a red square, and then" and got["0:imgs/a.png"][0].shape == (3, 8, 8)
    assert loader.epoch_stats == DataStats(seen=6, kept=3, corrupt_image=1, missing_image=1, empty_caption=1,
                                           no_phrase=1)
    assert len(loader) == 3


def test_csv_missing_column_names_the_key(shapes, tmp_path):
    path = _csv(tmp_path, sep=",", header=("filepath", "caption"))
    with pytest.raises(ValueError, match="caption_key 'title'"):
        make_csv_loader(path, shapes[4], batch_size=2, sep=",")
    with pytest.raises(ValueError, match="img_key 'path'"):
        make_csv_loader(path, shapes[4], batch_size=2, sep=",", img_key="path", caption_key="caption")
    loader = make_csv_loader(path, shapes[4], batch_size=6, sep=",", caption_key="caption", shuffle=True, seed=3)
    assert loader.stats.seen == 0 and len(next(iter(loader))["keys"]) == 3


def test_shuffle_buffer_reorders_deterministically(shapes):
    pattern, _, _, records, tok = shapes
    runs = [[k for b in make_webdataset_loader(pattern, tok, batch_size=4, shuffle_buffer=6, seed=2) for k in b["keys"]]
            for _ in range(2)]
    assert runs[0] == runs[1] and sorted(runs[0]) == [r["key"] for r in records]
    assert runs[0] != [r["key"] for r in records]


def test_sample_stream_for_a_plain_dataloader(shapes, tmp_path, caplog):
    pattern, _, _, records, tok = shapes
    loader = torch.utils.data.DataLoader(webdataset_samples(pattern, tok), batch_size=5, collate_fn=collate_batch)
    assert set(_by_key(loader)) == {r["key"] for r in records}
    _bad_shard(tmp_path / "bad.tar")
    with caplog.at_level("INFO", logger="loupe_core.data"):
        keys = [k for b in torch.utils.data.DataLoader(webdataset_samples(str(tmp_path / "bad.tar"), tok, image_size=8),
                                                        batch_size=4, collate_fn=collate_batch) for k in b["keys"]]
    assert sorted(keys) == ["badjson", "badspans", "nophrase", "ok0", "ok1"]
    assert "9 records: 5 kept, 4 skipped" in caplog.text
