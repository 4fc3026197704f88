"""LLM bridge: token grids <-> language-model ids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imagetok import Tokenizer
from imagetok.errors import InputError
from imagetok.llm import LLMBridge, extend_hf_tokenizer


@pytest.fixture(scope="module")
def tok():
    cfg = {"family": "vqgan", "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [],
           "z_channels": 8, "embed_dim": 4, "n_embed": 300, "resolution": 32}
    return Tokenizer.from_config(cfg, seed=0)


def _grid(h, w, k=300, b=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, k, (h, w) if b is None else (b, h, w), generator=g)


def test_layout_and_roundtrip_with_markers():
    br = LLMBridge([300], [8], offset=1000, boi=True, eoi=True, eor=True)
    assert (br.boi_id, br.eoi_id, br.eor_id, br.vocab_end) == (1300, 1301, 1302, 1303)
    t = _grid(3, 5)
    ids = br.to_llm(t)
    assert ids.dtype == torch.int64 and ids.shape == (2 + 3 * 6,)
    assert ids[0] == 1300 and ids[-1] == 1301
    rows = ids[1:-1].reshape(3, 6)
    assert (rows[:, -1] == 1302).all()
    assert torch.equal(rows[:, :5] - 1000, t)
    # non-square grid is recovered from the end-of-row tokens alone
    assert torch.equal(br.from_llm(ids), t)
    assert torch.equal(br.from_llm(ids.numpy()), t)


def test_roundtrip_batch_and_no_markers_matches_flatten(tok):
    br = LLMBridge.for_tokenizer(tok)
    t = _grid(16, 16, b=3)
    ids = br.to_llm(t)
    assert torch.equal(ids, tok.flatten(t))  # offset 0, no markers == Tokenizer.flatten
    assert torch.equal(br.from_llm(ids), t)  # square grid inferred
    with pytest.raises(InputError, match="grid"):
        br.from_llm(br.to_llm(_grid(4, 6)))  # not square and no EOR: needs grid=
    assert torch.equal(br.from_llm(br.to_llm(_grid(4, 6)), grid=(4, 6)), _grid(4, 6))


def test_multilevel_roundtrip():
    br = LLMBridge([512, 512], [8, 4], offset=50, boi=True, eoi=True, eor=True)
    top, bottom = _grid(2, 3, 512, seed=1), _grid(4, 6, 512, seed=2)
    ids = br.to_llm((top, bottom))
    assert ids.numel() == 2 + 2 * 4 + 4 * 7
    # the bottom level's ids follow the top codebook
    assert int(ids[1]) == 50 + int(top[0, 0]) and int(ids[1 + 2 * 4]) == 50 + 512 + int(bottom[0, 0])
    back = br.from_llm(ids)
    assert torch.equal(back[0], top) and torch.equal(back[1], bottom)
    br2 = LLMBridge([512, 512], [8, 4])
    back = br2.from_llm(br2.to_llm((top[None], bottom[None])), grid=(2, 3))
    assert torch.equal(back[0][0], top) and torch.equal(back[1][0], bottom)


def test_explicit_marker_ids_and_dict_roundtrip():
    br = LLMBridge([300], [8], offset=10, boi=1, eoi=2)  # existing ids in the text vocabulary
    assert br.num_added == 300 and br.vocab_end == 310
    t = _grid(2, 2)
    ids = br.to_llm(t)
    assert ids[0] == 1 and ids[-1] == 2
    br2 = LLMBridge.from_dict(br.to_dict())
    assert br2 == br and torch.equal(br2.from_llm(ids), t)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"offset": 10, "boi": 15}, "collides"),
        ({"boi": 400, "eoi": 400}, "differ"),
        ({"offset": -1}, "offset"),
    ],
)
def test_bad_bridge_config(kwargs, match):
    with pytest.raises(InputError, match=match):
        LLMBridge([300], [8], **kwargs)


def test_from_llm_rejects_malformed():
    br = LLMBridge([300], [8], offset=100, boi=True, eoi=True, eor=True)
    ids = br.to_llm(_grid(3, 4))
    bad = ids.clone()
    bad[2] = 5  # a text id inside the image
    with pytest.raises(InputError, match="not image codes"):
        br.from_llm(bad)
    ragged = torch.cat([ids[:3], ids[4:]])  # one row loses a code
    with pytest.raises(InputError):
        br.from_llm(ragged)
    with pytest.raises(InputError, match="end each row"):
        br.from_llm(ids[:-2])  # cut off inside the last row
    with pytest.raises(InputError, match=r"\[0, 300\)"):
        br.to_llm(torch.tensor([[0, 300]]))
    with pytest.raises(InputError, match="integer"):
        br.to_llm(torch.zeros(2, 2))


def test_added_tokens_order():
    br = LLMBridge([4], [8], offset=7, boi=True, eoi=False, eor=True)
    assert br.added_tokens() == ["<|img_0|>", "<|img_1|>", "<|img_2|>", "<|img_3|>", "<|img_boi|>", "<|img_eor|>"]
    assert br.special_tokens() == {"<|img_boi|>": 11, "<|img_eor|>": 12}
    assert len(br.added_tokens()) == br.num_added


class _FakeHF:
    """The slice of the transformers tokenizer API that extend_hf_tokenizer uses."""

    def __init__(self, vocab):
        self.vocab = dict(vocab)
        self.special = []

    def __len__(self):
        return len(self.vocab)

    def add_tokens(self, tokens, special_tokens=False):
        n = 0
        for t in tokens:
            if t not in self.vocab:
                self.vocab[t] = len(self.vocab)
                n += 1
            if special_tokens:
                self.special.append(t)
        return n

    def convert_tokens_to_ids(self, tokens):
        return [self.vocab.get(t, 0) for t in tokens]


def test_extend_hf_tokenizer_fake(tok):
    hf = _FakeHF({f"w{i}": i for i in range(20)})
    br = extend_hf_tokenizer(hf, tok, boi=True, eoi=True)
    assert br.offset == 20 and len(hf) == br.vocab_end == 20 + 300 + 2
    assert hf.special == ["<|img_boi|>", "<|img_eoi|>"]
    t = _grid(16, 16)
    assert torch.equal(br.from_llm(br.to_llm(t)), t)
    # a clash with an existing string is caught instead of silently shifting ids
    hf2 = _FakeHF({"a": 0, "<|img_5|>": 1})
    with pytest.raises(InputError, match="contiguous"):
        extend_hf_tokenizer(hf2, tok)


def test_extend_real_hf_tokenizer(tok):
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    base = tokenizers.Tokenizer(tokenizers.models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    base.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=base, unk_token="[UNK]")
    br = extend_hf_tokenizer(hf, tok, boi=True, eoi=True, eor=True)
    assert br.offset == 3 and len(hf) == br.vocab_end
    t = _grid(16, 16, seed=3)
    ids = br.to_llm(t)
    text = hf.decode(ids.tolist())
    assert hf.convert_tokens_to_ids("<|img_boi|>") == br.boi_id
    enc = hf(text, add_special_tokens=False)["input_ids"]  # the token strings parse back to the same ids
    assert enc == ids.tolist()
    assert torch.equal(br.from_llm(torch.tensor(enc)), t)
