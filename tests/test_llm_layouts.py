"""Named LLM layouts (imagetok.llm.get_layout, Tokenizer.flatten(layout=...)): every layout round-trips
tokens -> LLM ids -> tokens, and its ids have the structure of the LLM's own code (see each layout's
docstring for the source). Text tokenizers are small ones built here (no downloads)."""

from __future__ import annotations

import random

import pytest
import torch

from imagetok.errors import InputError
from imagetok.llm import LAYOUTS, get_layout

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")


def hf_tokenizer(words: list[str], specials: list[str] = ()):
    """A WordLevel transformers tokenizer: digits and punctuation split, ``specials`` matched whole."""
    vocab = {w: i for i, w in enumerate(["<unk>", *words])}
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.Sequence(
        [tokenizers.pre_tokenizers.WhitespaceSplit(), tokenizers.pre_tokenizers.Digits(individual_digits=True),
         tokenizers.pre_tokenizers.Punctuation()])  # fmt: skip
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>")
    if specials:
        tok.add_special_tokens({"additional_special_tokens": list(specials)})
    return tok


def img_name(code: int) -> str:
    return "IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(code)) + "Z"


@pytest.fixture(scope="module")
def chameleon_tok():
    """Chameleon-like vocabulary: text, <racm3:break>/<eoss>, Lumina's <reserved08799..>, 8192 IMGIMG tokens (shuffled ids)."""
    codes = list(range(8192))
    random.Random(0).shuffle(codes)
    words = ["a", "cat", "<racm3:break>", "<eoss>", *[f"<reserved{n:05d}>" for n in range(8795, 8860)]]
    words[10:10] = [img_name(c) for c in codes]  # image tokens in the middle of the vocabulary, not one block
    return hf_tokenizer(words)


@pytest.fixture(scope="module")
def emu3_tok():
    specials = ["<|image start|>", "<|image token|>", "<|extra_200|>", "<|extra_201|>", "<|image end|>"]
    return hf_tokenizer([*"0123456789", "*", "a", "dog"], specials + [f"<|visual token {i:06d}|>" for i in range(64)])


def grid(h: int, w: int, k: int, seed: int = 0, batch: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, k, (h, w) if batch is None else (batch, h, w), generator=g)


def test_chameleon_lookup_table(chameleon_tok):
    lay = get_layout("chameleon", chameleon_tok)
    t = grid(4, 6, 8192)
    ids = lay.to_ids(t)
    toks = chameleon_tok.convert_ids_to_tokens(ids.tolist())
    assert toks[0] == "<racm3:break>" and toks[-1] == "<eoss>" and len(ids) == 4 * 6 + 2
    assert toks[1:-1] == [img_name(int(c)) for c in t.flatten()]  # each code's own IMGIMG token
    assert torch.equal(lay.from_ids(ids, grid=(4, 6)), t)
    square = grid(32, 32, 8192, seed=1)  # Chameleon's 32 x 32 at 512 px: the shape needs no hint
    assert torch.equal(lay.from_ids(lay.to_ids(square)), square)
    with pytest.raises(InputError, match="not square"):
        lay.from_ids(ids)
    with pytest.raises(InputError, match="not image tokens"):
        lay.from_ids(torch.cat([ids[:1], torch.tensor([1]), ids[2:]]), grid=(4, 6))


def test_lumina_mgpt_grid_tokens_and_newlines(chameleon_tok):
    lay = get_layout("lumina-mgpt", chameleon_tok)
    t = grid(4, 6, 8192, seed=2)
    ids = lay.to_ids(t)
    toks = chameleon_tok.convert_ids_to_tokens(ids.tolist())
    assert toks[:3] == ["<racm3:break>", "<reserved08802>", "<reserved08803>"] and toks[-1] == "<eoss>"
    rows = [toks[3 + r * 7 : 3 + (r + 1) * 7] for r in range(4)]
    assert all(row[-1] == "<reserved08799>" and row[:-1] == [img_name(int(c)) for c in t[i]] for i, row in enumerate(rows))
    assert len(ids) == 3 + 4 * 7 + 1
    assert torch.equal(lay.from_ids(ids), t)  # the size tokens tell the grid
    with pytest.raises(InputError, match="even token grid"):
        lay.to_ids(grid(3, 6, 8192))


def test_emu3_visual_token_strings(emu3_tok):
    lay = get_layout("emu3", emu3_tok, codebook_size=64)
    t = grid(3, 12, 64, seed=3)
    ids = lay.to_ids(t)
    expect = ["<|image start|>", "3", "*", "1", "2", "<|image token|>"]
    for row in t.tolist():
        expect += [f"<|visual token {c:06d}|>" for c in row] + ["<|extra_200|>"]
    expect += ["<|extra_201|>", "<|image end|>"]
    assert emu3_tok.convert_ids_to_tokens(ids.tolist()) == expect
    assert torch.equal(lay.from_ids(ids), t)
    with pytest.raises(InputError, match="visual token 000064"):
        get_layout("emu3", emu3_tok)  # Emu3's 32768 codes need 32768 visual tokens


def test_offset_layouts():
    show = hf_tokenizer(["a", "b", "c"], ["<|soi|>", "<|eoi|>", "<|t2i|>"])
    lay = get_layout("show-o", show, codebook_size=100)
    t = grid(2, 5, 100, seed=4)
    ids = lay.to_ids(t)
    n = len(show)
    assert ids[0] == show.convert_tokens_to_ids("<|soi|>") and ids[-1] == show.convert_tokens_to_ids("<|eoi|>")
    assert torch.equal(ids[1:-1], t.flatten() + n)
    assert torch.equal(lay.from_ids(ids, grid=(2, 5)), t)
    liquid = hf_tokenizer(["x", "y"], ["<boi>", "<eoi>"])
    lq = get_layout("liquid", liquid)
    t8 = grid(32, 32, 8192, seed=5)
    ids = lq.to_ids(t8)
    assert ids[0] == liquid.convert_tokens_to_ids("<boi>") and torch.equal(ids[1:-1], t8.flatten() + len(liquid))
    assert torch.equal(lq.from_ids(ids), t8)
    jan = get_layout("janus")  # separate generation vocabulary: no offset, no markers, no text tokenizer
    t16 = grid(24, 24, 16384, seed=6)
    assert torch.equal(jan.to_ids(t16), t16.flatten()) and torch.equal(jan.from_ids(jan.to_ids(t16)), t16)
    with pytest.raises(InputError, match="no '<boi>' token"):
        get_layout("liquid", show)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_every_layout_round_trips_batches_through_tokenizer_flatten(name, chameleon_tok, emu3_tok, tiny_tokenizer, make_image):
    tok = tiny_tokenizer("vqgan")  # 64 codes, f4
    k = tok.codebook_sizes[0]
    text = {"chameleon": chameleon_tok, "lumina-mgpt": chameleon_tok, "emu3": emu3_tok, "janus": None,
            "show-o": hf_tokenizer(["a"], ["<|soi|>", "<|eoi|>"]), "liquid": hf_tokenizer(["a"], ["<boi>", "<eoi>"])}[name]  # fmt: skip
    tokens = tok.encode([make_image(32, 48, seed=s) for s in range(3)], size=None)  # [3, 8, 12] non-square
    ids = tok.flatten(tokens, layout=name, hf_tokenizer=text)
    assert ids.dtype == torch.int64 and ids.shape[0] == 3 and ids.ndim == 2
    lay = get_layout(name, text, codebook_size=k)
    assert torch.equal(lay.from_ids(ids, grid=(8, 12)), tokens)
    assert torch.equal(lay.from_ids(ids[1], grid=(8, 12)), tokens[1])
    assert torch.equal(tok.flatten(tokens[0], layout=name, hf_tokenizer=text), ids[0])


def test_layout_errors(chameleon_tok):
    with pytest.raises(InputError, match="unknown layout 'llava'"):
        get_layout("llava")
    with pytest.raises(InputError, match="needs the LLM's text tokenizer"):
        get_layout("chameleon")
    with pytest.raises(InputError, match="no IMGIMG... token"):
        get_layout("chameleon", hf_tokenizer(["a", "<racm3:break>", "<eoss>"]))
    with pytest.raises(InputError, match=r"must lie in \[0, 8192\)"):
        get_layout("chameleon", chameleon_tok).to_ids(torch.full((2, 2), 8192))
