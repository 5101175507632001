"""The word-level tokenizer: round trips, the scene vocabulary, files and their damage."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssm_bridge import VLMConfig
from ssm_bridge.data import SPECIALS, SceneConfig, Tokenizer, make_scene, scene_vocabulary

SCENE_TOK = Tokenizer.for_scenes()


def test_specials_match_the_model_config():
    c = VLMConfig()
    assert SCENE_TOK.itos[:4] == list(SPECIALS)
    assert (SCENE_TOK.pad_id, SCENE_TOK.bos_id, SCENE_TOK.eos_id) == (
        c.pad_token_id, c.bos_token_id, c.eos_token_id)
    assert SCENE_TOK.unk_id == 3


def test_encode_decode_basics():
    tok = Tokenizer.build(["What colour is it?", "a red circle, a blue square."])
    ids = tok.encode("What colour is it?")
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and len(ids) == 7
    assert tok.decode(ids) == "what colour is it ?"
    assert tok.decode(ids, skip_special=False) == "<bos> what colour is it ? <eos>"
    assert tok.encode("red circle", bos=False, eos=False) == [tok.stoi["red"], tok.stoi["circle"]]
    assert tok.encode("a purple blob") == [1, tok.stoi["a"], 3, 3, 2]  # unknown words
    assert tok.decode(tok.encode("a purple blob")) == "a <unk> <unk>"
    assert Tokenizer.tokenize("A man's T-shirt, (red)!") == [
        "a", "man's", "t-shirt", ",", "(", "red", ")", "!"]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([len(tok)])
    with pytest.raises(ValueError, match="str"):
        tok.encode(None)


def test_build_counts_and_is_deterministic():
    texts = ["b a a", "c a b", "d"]
    tok = Tokenizer.build(texts)
    assert tok.itos[4:] == ["a", "b", "c", "d"]  # by count, then alphabetically
    assert Tokenizer.build(texts, min_count=2).itos[4:] == ["a", "b"]
    assert Tokenizer.build(texts, max_size=6).itos[4:] == ["a", "b"]
    assert Tokenizer.build(reversed(texts)) == tok
    with pytest.raises(ValueError, match="min_count"):
        Tokenizer.build(texts, min_count=0)
    with pytest.raises(ValueError, match="distinct"):
        Tokenizer(["a", "a"])
    with pytest.raises(ValueError, match="spaces"):
        Tokenizer(["a b"])


def test_scene_vocabulary_is_complete_and_deterministic():
    assert Tokenizer.for_scenes() == SCENE_TOK
    assert SCENE_TOK.itos[4:] == scene_vocabulary()
    assert len(SCENE_TOK) < 64
    bigger = Tokenizer.for_scenes(SceneConfig(shapes=("circle", "hexagon"), holdout=()))
    assert "hexagon" in bigger and "star" not in bigger


@settings(max_examples=60, deadline=None)
@given(split=st.sampled_from(["train", "val", "comp_test"]), index=st.integers(0, 10**6))
def test_round_trip_of_generated_text(split, index):
    s = make_scene(split, index)
    for text in [s.caption, *s.paraphrases, *(t for q, a, _ in s.qa for t in (q, a))]:
        ids = SCENE_TOK.encode(text)
        assert SCENE_TOK.unk_id not in ids
        assert SCENE_TOK.decode(ids) == text == Tokenizer.normalize(text)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=30), min_size=1, max_size=5))
def test_round_trip_of_any_text(texts):
    tok = Tokenizer.build(texts)
    for t in texts:
        assert tok.decode(tok.encode(t)) == Tokenizer.normalize(t)
        assert tok.unk_id not in tok.encode(t)


def test_save_load(tmp_path):
    path = SCENE_TOK.save(tmp_path / "sub" / "tok.json")
    assert Tokenizer.load(path) == SCENE_TOK
    assert [p.name for p in path.parent.iterdir()] == ["tok.json"]  # no temp files left


@pytest.mark.parametrize("content, match", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not a tokenizer file"),
    (json.dumps({"format": "ssm-bridge-tokenizer", "vocab": ["a", "b"]}), "starting with"),
    (json.dumps({"format": "ssm-bridge-tokenizer", "vocab": [*SPECIALS, "a", "a"]}),
     "distinct"),
])
def test_malformed_files_name_the_file(tmp_path, content, match):
    path = tmp_path / "broken_tok.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as e:
        Tokenizer.load(path)
    assert "broken_tok.json" in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        Tokenizer.load(tmp_path / "nope.json")
