"""COCO-format captions: a tiny folder built in tmp_path, the Karpathy split file, damage
that names the file and the entry, skip_bad, and a few training steps on it."""

import json

import pytest
import torch
from PIL import Image, ImageDraw

from ssm_bridge import EnhancedVLM, VLMConfig
from ssm_bridge.data import CocoCaptions, ImageTransform, Tokenizer, build_tokenizer_from_coco

IMAGES = {  # image id: (file under images/, Karpathy filepath, split, colour, captions)
    1: ("a.png", "", "train", (220, 30, 30), ["A red square.", "a red box on white"]),
    2: ("b.png", "", "train", (30, 30, 220), ["A blue square.", "a blue box on white"]),
    3: ("c.png", "", "restval", (30, 180, 30), ["A green square.", "a green box on white"]),
    4: ("val/d.png", "val", "val", (230, 200, 20), ["A yellow square.", "a yellow box"]),
}
TF = ImageTransform(32)


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def coco(tmp_path):
    """tmp_path/images/{a,b,c}.png, images/val/d.png, ann.json, karpathy.json."""
    (tmp_path / "images" / "val").mkdir(parents=True)
    for name, _, _, colour, _ in IMAGES.values():
        img = Image.new("RGB", (48, 40), (255, 255, 255))
        ImageDraw.Draw(img).rectangle((10, 8, 38, 32), fill=colour)
        img.save(tmp_path / "images" / name)
    ann = {"images": [{"id": i, "file_name": v[0]} for i, v in IMAGES.items()],
           "annotations": [{"id": 10 * i + k, "image_id": i, "caption": c}
                           for i, v in IMAGES.items() for k, c in enumerate(v[4])]}
    karpathy = {"images": [{"filename": v[0].split("/")[-1], "filepath": v[1], "split": v[2],
                            "cocoid": i, "sentences": [{"raw": c.upper()} for c in v[4]]}
                           for i, v in IMAGES.items()]}
    return (tmp_path, write_json(tmp_path / "ann.json", ann),
            write_json(tmp_path / "karpathy.json", karpathy))


def test_loads_every_caption(coco):
    root, ann, _ = coco
    tok = build_tokenizer_from_coco(ann, min_count=1)
    ds = CocoCaptions(ann, root / "images", tok, TF)
    assert len(ds) == 8 and ds.num_skipped == 0
    image, tokens, targets = ds[0]
    assert image.shape == (3, 32, 32)
    assert tok.decode(tokens) == "a red square ." and targets[-1] == tok.eos_id
    assert torch.equal(tokens[1:], targets[:-1]) and tokens[0] == tok.bos_id
    assert TF.inverse(image)[16, 16].tolist() == [220, 30, 30]
    images, toks, tgts = ds.collate([ds[i] for i in range(4)])
    assert images.shape == (4, 3, 32, 32) and toks.shape == tgts.shape
    assert (tgts[toks == tok.pad_id] == -100).all()


def test_karpathy_splits(coco):
    root, ann, kp = coco
    tok = build_tokenizer_from_coco(karpathy_json=kp, min_count=1)
    train = CocoCaptions(None, root / "images", tok, TF, split="train", karpathy_json=kp)
    assert {s.image_id for s in train.samples} == {1, 2}
    assert tok.decode(train[0][1]) == "a red square ."  # Karpathy's raw sentences
    both = CocoCaptions(None, root / "images", tok, TF, split=("train", "restval"),
                        karpathy_json=kp)
    assert {s.image_id for s in both.samples} == {1, 2, 3}
    val = CocoCaptions(None, root / "images", tok, TF, split="val", karpathy_json=kp)
    assert [s.path.name for s in val.samples] == ["d.png", "d.png"]  # under filepath val/
    # annotation captions, Karpathy split: the split chooses, the annotations speak
    val2 = CocoCaptions(ann, root / "images", tok, TF, split="val", karpathy_json=kp)
    assert [s.caption for s in val2.samples] == IMAGES[4][4]
    with pytest.raises(ValueError, match="split names"):
        CocoCaptions(None, root / "images", tok, TF, split="dev", karpathy_json=kp)
    with pytest.raises(ValueError, match="karpathy_json"):
        CocoCaptions(ann, root / "images", tok, TF, split="train")


def test_tokenizer_from_coco(coco):
    _, ann, kp = coco
    tok = build_tokenizer_from_coco(ann, min_count=1)
    assert {"red", "square", ".", "box"} <= set(tok.itos)
    assert build_tokenizer_from_coco(karpathy_json=kp, min_count=1) == tok
    common = build_tokenizer_from_coco(ann, min_count=5)  # only "a" is in 5+ captions
    assert set(common.itos[4:]) == {"a"}
    assert set(build_tokenizer_from_coco(karpathy_json=kp, split="val",
                                         min_count=1).itos[4:]) == {
        "a", "yellow", "square", ".", "box"}


def test_malformed_json_names_the_file(coco):
    root, _, _ = coco
    bad = root / "broken.json"
    bad.write_text('{"images": [')
    with pytest.raises(ValueError, match=r"broken\.json.*not valid JSON"):
        CocoCaptions(bad, root / "images", Tokenizer(["a"]), TF)
    with pytest.raises(ValueError, match=r"broken\.json"):
        build_tokenizer_from_coco(karpathy_json=bad)
    wrong = write_json(root / "wrong.json", {"images": {}})
    with pytest.raises(ValueError, match=r"wrong\.json.*'images'"):
        CocoCaptions(wrong, root / "images", Tokenizer(["a"]), TF)


def test_malformed_entries_name_the_entry(coco):
    root, ann, kp = coco
    data = json.loads(ann.read_text())
    data["annotations"][3] = {"image_id": 2, "caption": None}
    write_json(ann, data)
    with pytest.raises(ValueError) as e:
        CocoCaptions(ann, root / "images", Tokenizer(["a"]), TF)
    assert "ann.json" in str(e.value) and "annotations[3]" in str(e.value)
    assert "image id 2" in str(e.value)
    data = json.loads(kp.read_text())
    del data["images"][2]["split"]
    write_json(kp, data)
    with pytest.raises(ValueError, match=r"karpathy.json, images\[2\] \('c.png'\)"):
        CocoCaptions(None, root / "images", Tokenizer(["a"]), TF, karpathy_json=kp)


def test_missing_image_names_file_and_entry(coco):
    root, ann, _ = coco
    (root / "images" / "b.png").unlink()
    with pytest.raises(FileNotFoundError) as e:
        CocoCaptions(ann, root / "images", Tokenizer(["a"]), TF)
    assert "b.png" in str(e.value) and "image id 2" in str(e.value)


def test_skip_bad_counts(coco):
    root, ann, _ = coco
    (root / "images" / "b.png").unlink()  # one image, two captions
    data = json.loads(ann.read_text())
    data["annotations"].append({"image_id": 99, "caption": "a ghost"})  # unknown image
    data["annotations"].append({"image_id": 1})  # no caption
    write_json(ann, data)
    ds = CocoCaptions(ann, root / "images", Tokenizer(["a"]), TF, skip_bad=True)
    assert ds.num_skipped == 3 and len(ds) == 6
    assert any("b.png" in s for s in ds.skipped)
    assert {s.image_id for s in ds.samples} == {1, 3, 4}


def test_undecodable_image(coco):
    root, ann, _ = coco
    (root / "images" / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    ds = CocoCaptions(ann, root / "images", Tokenizer(["a"]), TF)
    i = next(k for k, s in enumerate(ds.samples) if s.image_id == 3)
    with pytest.raises(ValueError) as e:
        ds[i]
    assert "c.png" in str(e.value) and "image id 3" in str(e.value)
    checked = CocoCaptions(ann, root / "images", Tokenizer(["a"]), TF, skip_bad=True,
                           verify_images=True)
    assert checked.num_skipped == 1 and len(checked) == 6


def test_a_few_training_steps_lower_the_loss(coco):
    """Smoke test: the data trains the model. (The lead's trainer will own training.)"""
    root, ann, _ = coco
    tok = build_tokenizer_from_coco(ann, min_count=1)
    ds = CocoCaptions(ann, root / "images", tok, TF)
    images, tokens, targets = ds.collate([ds[i] for i in range(len(ds))])
    torch.manual_seed(0)
    config = VLMConfig.from_preset("tiny", vocab_size=len(tok), img_size=32,
                                   ssm_scan_backend="torch")  # no kernel build in this test
    model = EnhancedVLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: extra threads only spin on a busy machine
    try:
        for _ in range(30):
            _, loss = model(images, tokens, targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    assert losses[-1] < 0.5 * losses[0], losses
