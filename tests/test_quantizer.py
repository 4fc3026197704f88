"""nearest_code and the quantizers: exactness against float64 brute force, chunk and batch
invariance, bounded memory, float32 search under bf16 networks."""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from imagetok.models import quantizer as qmod
from imagetok.models.quantizer import GumbelQuantizer, VectorQuantizer, nearest_code


def brute_force(z: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 squared distances [N, K] of the float32 values in the direct form sum((z - e)^2)
    (not the expanded |z|^2 + |e|^2 - 2 z.e that the search's screens use), and their argmin
    (first index on ties)."""
    z, e = z.detach().float().double(), codebook.detach().float().double()
    d = torch.cat([((z[i : i + 64, None, :] - e[None]) ** 2).sum(2) for i in range(0, z.shape[0], 64)])
    return d, d.argmin(1)


def direct_argmin(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """The float64 direct-form argmin (see :func:`brute_force`)."""
    return brute_force(z, codebook)[1]


def exact_argmin(z: torch.Tensor, codebook: torch.Tensor) -> list[int]:
    """Exact rational arithmetic: the nearest code of each float32 vector (first index on ties)."""
    codes = [[Fraction(float(v)) for v in row] for row in codebook.float().tolist()]
    out = []
    for row in z.float().tolist():
        zf = [Fraction(float(v)) for v in row]
        dists = [sum((a - b) ** 2 for a, b in zip(zf, c)) for c in codes]
        out.append(dists.index(min(dists)))
    return out


def assert_nearest(idx: torch.Tensor, z: torch.Tensor, codebook: torch.Tensor) -> None:
    """idx is the float64 argmin, except where the best two codes are within float32 rounding."""
    d, ref = brute_force(z, codebook)
    chosen = d.gather(1, idx[:, None])[:, 0]
    best = d.gather(1, ref[:, None])[:, 0]
    scale = z.detach().double().pow(2).sum(1) + codebook.detach().double().pow(2).sum(1).max()
    assert (chosen - best <= 1e-5 * scale).all()  # never a clearly worse code
    clear = (chosen - best) > 0  # a differing pick must be a float32 near-tie
    assert int(clear.sum()) <= max(1, len(idx) // 1000), f"{int(clear.sum())} near-tie picks"


@pytest.mark.parametrize("n,k,d", [(3000, 512, 8), (1500, 1000, 16), (777, 64, 3), (5, 4096, 4)])
def test_nearest_code_equals_float64_argmin(n, k, d):
    g = torch.Generator().manual_seed(n + k + d)
    z, cb = torch.randn(n, d, generator=g), torch.randn(k, d, generator=g)
    idx = nearest_code(z, cb)
    assert idx.dtype == torch.int64 and idx.shape == (n,)
    assert_nearest(idx, z, cb)
    # on this data the float32 search and float64 brute force agree exactly (measured: 0 of 6282)
    assert torch.equal(idx, brute_force(z, cb)[1])


def test_nearest_code_with_offset_and_scaled_data():
    """Latents far from the origin (|z|^2 dominates): still the float64 argmin."""
    g = torch.Generator().manual_seed(0)
    cb = torch.randn(256, 8, generator=g) * 0.5 + 20.0
    z = cb[torch.randint(0, 256, (2000,), generator=g)] + 0.05 * torch.randn(2000, 8, generator=g)
    assert_nearest(nearest_code(z, cb), z, cb)


def test_ties_go_to_lowest_index():
    cb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    z = torch.tensor([[2.0, 0.0], [0.0, 3.0], [0.5, 0.5]])
    assert nearest_code(z, cb).tolist() == [0, 1, 0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_nearest_code_computes_in_float32(dtype):
    g = torch.Generator().manual_seed(1)
    z, cb = torch.randn(400, 8, generator=g).to(dtype), torch.randn(128, 8, generator=g)
    assert torch.equal(nearest_code(z, cb), nearest_code(z.float(), cb))


def test_chunking_gives_identical_results():
    g = torch.Generator().manual_seed(2)
    n, k = 2500, 700
    z, cb = torch.randn(n, 8, generator=g), torch.randn(k, 8, generator=g)
    unchunked = ((cb * cb).sum(1) - 2 * z @ cb.t()).argmin(1)  # one [N, K] matrix
    assert torch.equal(nearest_code(z[:300], cb, chunk_elements=1), unchunked[:300])  # one row a block
    for chunk in (7 * k + 3, 333 * k, 10**9):
        assert torch.equal(nearest_code(z, cb, chunk_elements=chunk), unchunked), chunk


def test_nearest_code_is_batch_invariant():
    """A vector's code does not depend on how many other rows are searched with it."""
    g = torch.Generator().manual_seed(3)
    z, cb = torch.randn(3000, 16, generator=g), torch.randn(1000, 16, generator=g)
    full = nearest_code(z, cb)
    for start, stop in [(0, 1), (1, 2), (17, 1040), (999, 3000), (2047, 2049)]:
        assert torch.equal(nearest_code(z[start:stop], cb), full[start:stop])


def _peak_rss_growth(fn) -> int:
    """Bytes the process's peak resident memory rose above its current size while ``fn`` ran
    (Linux: reset VmHWM through /proc/self/clear_refs, then read it back)."""
    def status(field: str) -> int:
        return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024

    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pytest.skip("needs Linux /proc/self/clear_refs to measure peak memory")
    base = status("VmRSS")
    fn()
    return status("VmHWM") - base


def test_memory_is_bounded_for_16384_codes():
    """16384 codes x 65536 vectors would be a 4 GiB float32 distance matrix. The search works in
    bounded blocks: with 4096 and 8192 vectors (256 and 512 MiB matrices unchunked) the process
    peak grows by at most a few blocks (RSS includes allocator slack: measured 50-67 MiB with
    16 MiB blocks, ~1-15 MiB with 1 MiB blocks)."""
    k = 16384
    g = torch.Generator().manual_seed(4)
    z, cb = torch.randn(8192, 4, generator=g), torch.randn(k, 4, generator=g)
    nearest_code(z[:64], cb)  # warm up (lazy library buffers)
    out: dict[int, torch.Tensor] = {}
    growth = {n: _peak_rss_growth(lambda n=n: out.__setitem__(n, nearest_code(z[:n], cb))) for n in (4096, 8192)}
    bound = 6 * qmod.CHUNK_ELEMENTS * 4  # 96 MiB; the unchunked [4096, K] matrix alone is 256 MiB
    assert all(v <= bound for v in growth.values()), growth
    assert torch.equal(out[8192][:4096], out[4096])
    # same answer as a search with much smaller blocks, and as float64 brute force
    assert torch.equal(out[4096], nearest_code(z[:4096], cb, chunk_elements=8 * k))
    assert_nearest(out[8192][:300], z[:300], cb)


def test_codebook_bigger_than_a_block():
    """chunk_elements below K: blocks of a single row, still the exact answer."""
    k = 50_000
    g = torch.Generator().manual_seed(5)
    z, cb = torch.randn(5, 3, generator=g), torch.randn(k, 3, generator=g)
    idx = nearest_code(z, cb, chunk_elements=1000)
    assert torch.equal(idx, nearest_code(z, cb)) and torch.equal(idx, brute_force(z, cb)[1])


def test_vector_quantizer_stays_float32_under_bf16_network(tiny_tokenizer, make_image, monkeypatch):
    tok = tiny_tokenizer("vqgan").to(dtype=torch.bfloat16)
    q = tok.model.quantize
    assert q.embedding.weight.dtype == torch.float32
    seen: list[torch.dtype] = []
    real = qmod.nearest_code

    def spy(z, codebook, *a, **kw):
        seen.append((z.dtype, codebook.dtype))
        return real(z, codebook, *a, **kw)

    monkeypatch.setattr(qmod, "nearest_code", spy)
    ids = tok.encode(make_image())
    monkeypatch.undo()
    assert len(seen) == 1 and seen[0][1] == torch.float32  # float32 codebook (z: searched as float32)
    assert ids.dtype == torch.int64 and 0 <= int(ids.min()) and int(ids.max()) < 64
    # the bf16 latents' float32 search gives exactly the tokens of a float64 search
    x = tok.preprocess(make_image())[0] * 2 - 1
    with torch.inference_mode():
        lat = tok.model.encode_latents(x.to(torch.bfloat16))
    assert lat.dtype == torch.bfloat16
    flat = lat.float().permute(0, 2, 3, 1).reshape(-1, 8)
    assert_nearest(ids.flatten(), flat, q.embedding.weight)


def test_vector_quantizer_forward_matches_lookup():
    q = VectorQuantizer(32, 4)
    with torch.no_grad():
        q.embedding.weight.normal_()
    z = torch.randn(2, 4, 3, 5, requires_grad=True)
    out = q(z)
    assert torch.equal(out.indices, q.codes_to_indices(z.detach()))
    torch.testing.assert_close(out.quantized, q.indices_to_codes(out.indices))
    out.quantized.sum().backward()  # straight-through: identity gradient to the latents
    torch.testing.assert_close(z.grad, torch.ones_like(z))


def test_gumbel_quantizer_indices_are_float32_argmax():
    q = GumbelQuantizer(8, 4, 50)
    h = torch.randn(3, 8, 5, 6)
    ref = torch.nn.functional.conv2d(h.double(), q.proj.weight.double(), q.proj.bias.double()).argmax(1)
    assert torch.equal(q.codes_to_indices(h), ref)
    assert torch.equal(q.codes_to_indices(h.to(torch.bfloat16)), q.codes_to_indices(h.to(torch.bfloat16).float()))
    for i in range(3):  # per image: batch invariant
        assert torch.equal(q.codes_to_indices(h[i : i + 1])[0], ref[i])


def _far_near_ties(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The review's case: z = [4096, 0, 0, 0], codes [4097, 1e-6 (k-1-j), 0, 0]: code k-1 is nearest
    (distance 1), code 0 farthest by ~1e-9: below float64 precision of |z|^2 + |e|^2."""
    e = torch.zeros(k, 4)
    e[:, 0] = 4097.0
    e[:, 1] = 1e-6 * torch.arange(k - 1, -1, -1, dtype=torch.float64).float()
    return torch.tensor([[4096.0, 0.0, 0.0, 0.0]]), e


@pytest.mark.parametrize("screen", ["auto", "bf16", "fp32", "f64"])
def test_nearest_code_matches_exact_rational_arithmetic(screen):
    """Small cases against Fraction arithmetic (independent of any float formula): far-off vectors
    with near-tied codes (more and fewer than MAX_CANDIDATES of them), random data, near-copies."""
    cases = [_far_near_ties(40), _far_near_ties(30)]
    g = torch.Generator().manual_seed(7)
    cases.append((torch.randn(20, 6, generator=g), torch.randn(50, 6, generator=g)))
    base = torch.randn(8, 5, generator=g) * 3 + 100.0
    cb = torch.cat([base, base + 1e-5 * torch.randn(8, 5, generator=g), base + 2e-5 * torch.randn(8, 5, generator=g)])
    cases.append((base[[0, 3, 5]] + 5e-6 * torch.randn(3, 5, generator=g), cb))
    for z, e in cases:
        assert nearest_code(z, e, screen=screen).tolist() == exact_argmin(z, e)
    assert nearest_code(*_far_near_ties(40), screen=screen).tolist() == [39]
