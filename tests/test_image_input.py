"""The image boundary: every accepted input type gives the same tokens, preprocessing does what
imagetok.image documents (shorter side resize, centre crop, alpha on white, 16-bit scaling), and
every bad input is an InputError that says what was wrong."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from imagetok import image as im
from imagetok.errors import ImagetokError, InputError


def levels(tokens):
    return tokens if isinstance(tokens, tuple) else (tokens,)


def assert_same_tokens(a, b):
    for x, y in zip(levels(a), levels(b), strict=True):
        assert x.dtype == y.dtype == torch.int64
        assert torch.equal(x, y)


def pixels(tok, image, size=None):
    """preprocess -> HxWx3 float64 numpy in [0, 1] (size=None: no resize)."""
    x, _ = tok.preprocess(image, size=size)
    return x[0].permute(1, 2, 0).double().numpy()


# ------------------------------------------------------------------------ input-type equivalence
def test_every_input_type_gives_the_same_tokens(tiny_name, tiny_tokenizer, make_image, tmp_path):
    tok = tiny_tokenizer(tiny_name)
    a = make_image(45, 61, seed=3)  # not square, not a multiple of anything: resized and cropped
    path = tmp_path / "img.png"
    Image.fromarray(a).save(path)
    ref = tok.encode(a)
    assert all(len(torch.unique(t)) > 4 for t in levels(ref))  # tokens react to the pixels
    chw = torch.from_numpy(a).permute(2, 0, 1)
    inputs = {
        "path str": str(path),
        "Path": path,
        "PIL": Image.fromarray(a),
        "uint8 tensor CHW": chw,
        "non-contiguous tensor": chw.contiguous().permute(0, 1, 2)[:, :, :],
        "float tensor [0,1]": chw.float() / 255,
        "float64 array [0,1]": a / 255.0,
        "uint16 array": a.astype(np.uint16) * 257,
    }
    for name, x in inputs.items():
        got = tok.encode(x)
        for r, g in zip(levels(ref), levels(got)):
            assert torch.equal(r, g), name
    # batches: 4-D numpy / tensor and lists give the same rows
    batch = tok.encode(chw[None].float() / 255)
    assert all(t.shape[0] == 1 for t in levels(batch))
    assert_same_tokens(tuple(t[0] for t in levels(batch)), levels(ref))
    assert_same_tokens(levels(tok.encode(a[None]))[0][0], levels(ref)[0])
    listed = tok.encode([str(path), Image.fromarray(a), chw])
    for t, r in zip(levels(listed), levels(ref)):
        assert t.shape[0] == 3 and all(torch.equal(t[i], r) for i in range(3))


def test_float_image_off_8bit_levels_takes_float_path_and_stays_close(tiny_tokenizer, make_image):
    tok = tiny_tokenizer("vqgan")
    a = make_image(45, 61, seed=4)
    noisy = np.clip(a / 255.0 + np.random.default_rng(0).uniform(-1e-3, 1e-3, a.shape), 0, 1)
    assert im.to_rgb_arrays(noisy)[0][0].dtype == np.float32  # not snapped to uint8
    assert im.to_rgb_arrays(a / 255.0)[0][0].dtype == np.uint8  # exactly 8-bit: uint8 path
    np.testing.assert_allclose(pixels(tok, noisy, 32), pixels(tok, a, 32), atol=5e-3)
    ref = tok.encode(a)
    assert (tok.encode(noisy) == ref).float().mean() >= 0.85
    half = torch.from_numpy(a).permute(2, 0, 1).half() / 255  # float16 is not exact 8-bit
    assert (tok.encode(half) == ref).float().mean() >= 0.85


def test_jpeg_path_equals_pil_of_same_file(tiny_tokenizer, make_image, tmp_path):
    tok = tiny_tokenizer("vqvae")
    path = tmp_path / "img.jpg"
    Image.fromarray(make_image(50, 40)).save(path, quality=90)
    with Image.open(path) as f:
        assert_same_tokens(tok.encode(path), tok.encode(f))  # lazily opened PIL image is fine


def test_large_jpeg_path_equals_pil_of_same_file(tiny_tokenizer, make_image, tmp_path):
    tok = tiny_tokenizer("vqgan")
    noise = np.random.default_rng(0).integers(-40, 40, (427, 640, 3))
    Image.fromarray(np.clip(make_image(427, 640).astype(int) + noise, 0, 255).astype(np.uint8)).save(
        tmp_path / "big.jpg", quality=90
    )
    with Image.open(tmp_path / "big.jpg") as f:
        assert_same_tokens(tok.encode(tmp_path / "big.jpg", size=32), tok.encode(f, size=32))


# ------------------------------------------------------------------------ preprocessing semantics
def test_resize_shorter_side_then_centre_crop(tiny_tokenizer):
    tok = tiny_tokenizer("vqgan", spread=False)
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)  # h=32, w=64
    expect = np.asarray(Image.fromarray(wide).resize((32, 16), Image.Resampling.BICUBIC))[:, 8:24]
    np.testing.assert_array_equal(np.rint(pixels(tok, wide, 16) * 255), expect)
    tall = rng.integers(0, 256, (96, 32, 3), dtype=np.uint8)  # shorter side already 32: crop only
    np.testing.assert_array_equal(np.rint(pixels(tok, tall, 32) * 255), tall[32:64])
    small = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)  # upscaled
    up = np.asarray(Image.fromarray(small).resize((38, 32), Image.Resampling.BICUBIC))[:, 3:35]
    np.testing.assert_array_equal(np.rint(pixels(tok, small, 32) * 255), up)
    # default size is config.resolution
    assert tok.preprocess(wide)[0].shape == (1, 3, 32, 32)


def test_size_none_crops_to_multiple_of_factor(tiny_tokenizer):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (50, 43, 3), dtype=np.uint8)
    tok8 = tiny_tokenizer("vqvae2", spread=False)  # factor 8: 43x50 -> 40x48, offsets 1, 1
    np.testing.assert_array_equal(np.rint(pixels(tok8, a) * 255), a[1:49, 1:41])
    assert [tuple(t.shape) for t in tok8.encode(a, size=None)] == [(6, 5), (12, 10)]
    tok4 = tiny_tokenizer("vqvae", spread=False)  # factor 4: 43x50 -> 40x48
    assert tuple(tok4.encode(a, size=None).shape) == (12, 10)
    assert tuple(tok4.encode(a[:8, :12], size=None).shape) == (2, 3)  # already a multiple: no crop


@pytest.mark.parametrize("size", [30, 12, 3, 100])
def test_size_not_multiple_of_factor_names_valid_sizes(tiny_tokenizer, make_image, size):
    tok = tiny_tokenizer("vqvae2", spread=False)  # factor 8
    with pytest.raises(InputError, match=r"multiple of .*factor 8.*valid sizes are \d+ and \d+"):
        tok.encode(make_image(), size=size)


@pytest.mark.parametrize("size", [0, -8, 32.0, True, "32"])
def test_bad_size_values(tiny_tokenizer, make_image, size):
    with pytest.raises(InputError, match="size"):
        tiny_tokenizer("vqvae", spread=False).encode(make_image(), size=size)


def test_alpha_is_composited_on_white(tiny_tokenizer):
    tok = tiny_tokenizer("vqvae", spread=False)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200  # red 200 everywhere
    rgba[:4, :, 3] = 0  # top half transparent -> white
    rgba[4:, :4, 3] = 255  # opaque -> the colour
    rgba[4:, 4:, 3] = 128  # half -> mix with white
    expect = np.zeros((8, 8, 3))
    expect[:4] = 255
    expect[4:, :4] = [200, 0, 0]
    a = 128 / 255
    expect[4:, 4:] = np.rint([200 * a + 255 * (1 - a), 255 * (1 - a), 255 * (1 - a)])
    for x in (rgba, Image.fromarray(rgba, "RGBA"), rgba / 255.0, rgba.astype(np.uint16) * 257):
        np.testing.assert_allclose(pixels(tok, x) * 255, expect, atol=0.51)
    la = Image.fromarray(rgba[..., [0, 3]], "LA")  # grey 200 with the same alpha
    got = np.rint(pixels(tok, la) * 255)
    assert got[0, 0].tolist() == [255] * 3 and got[7, 0].tolist() == [200] * 3


def test_palette_images_with_and_without_transparency(tiny_tokenizer, tmp_path):
    tok = tiny_tokenizer("vqvae", spread=False)
    p = Image.new("P", (8, 8), 1)
    p.putpalette([0, 0, 0, 10, 20, 30, 250, 0, 0] + [0] * 759)
    p.paste(2, (0, 0, 4, 8))
    np.testing.assert_array_equal(np.rint(pixels(tok, p)[0, 0] * 255), [250, 0, 0])
    np.testing.assert_array_equal(np.rint(pixels(tok, p)[0, 7] * 255), [10, 20, 30])
    p.info["transparency"] = 2  # index 2 transparent -> white, via a file and directly
    p.save(tmp_path / "p.png")
    for x in (tmp_path / "p.png", p):
        got = np.rint(pixels(tok, x) * 255)
        assert got[0, 0].tolist() == [255] * 3 and got[0, 7].tolist() == [10, 20, 30]


def test_grayscale_and_other_modes(tiny_tokenizer):
    tok = tiny_tokenizer("vqvae", spread=False)
    g = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    for x in (g, Image.fromarray(g, "L"), g[:, :, None], torch.from_numpy(g)[None]):
        got = np.rint(pixels(tok, x) * 255)
        assert (got == g[:, :, None]).all()
    rgb = Image.new("RGB", (8, 8), (10, 200, 30))
    np.testing.assert_array_equal(np.rint(pixels(tok, rgb.convert("CMYK"))[0, 0] * 255), [10, 200, 30])
    assert pixels(tok, Image.new("1", (8, 8), 1))[0, 0].tolist() == [1.0] * 3
    assert pixels(tok, np.ones((8, 8, 3), bool))[0, 0].tolist() == [1.0] * 3


def test_16_bit_images_are_scaled_not_clipped(tiny_tokenizer, tmp_path):
    tok = tiny_tokenizer("vqvae", spread=False)
    v = np.array([0, 1, 255, 256, 32768, 65535], np.uint16)
    a16 = np.tile(v, (8, 2))[:, :8].copy()  # 8x8, values in every column
    Image.fromarray(a16).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as f:
        assert f.mode.startswith("I")  # stored as 16-bit
    expect = a16.astype(np.float64) / 65535
    for x in (tmp_path / "g16.png", Image.fromarray(a16), a16, np.repeat(a16[:, :, None], 3, 2)):
        got = pixels(tok, x)
        np.testing.assert_allclose(got, np.repeat(expect[:, :, None], 3, 2), atol=1e-6)
    # a 16-bit copy of an 8-bit image (v * 257) gives exactly the 8-bit image's pixels
    a8 = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(pixels(tok, a8.astype(np.uint16) * 257), pixels(tok, a8))


def test_exif_orientation_is_applied(tiny_tokenizer, tmp_path):
    a = np.zeros((16, 32, 3), np.uint8)  # stored 32 wide x 16 high, left half bright
    a[:, :16] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(a).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    img = im.load_image(tmp_path / "rot.jpg")
    assert img.size == (16, 32)  # upright: 16 wide x 32 high
    arr = np.asarray(img).astype(int)
    assert arr[:8].mean() > 200 and arr[-8:].mean() < 50  # the bright half is now on top


# ------------------------------------------------------------------------------------ bad input
def _truncated_jpeg(tmp_path, make_image):
    buf = io.BytesIO()
    Image.fromarray(make_image(64, 64)).save(buf, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def test_bad_files(tiny_tokenizer, make_image, tmp_path):
    tok = tiny_tokenizer("vqvae", spread=False)
    (tmp_path / "text.jpg").write_text("this is not a JPEG\n")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "adir").mkdir()
    cases = {
        tmp_path / "missing.png": "no such file",
        tmp_path / "adir": "is a directory",
        tmp_path / "text.jpg": "not an image",
        tmp_path / "empty.png": "not an image",
        _truncated_jpeg(tmp_path, make_image): "truncated",
    }
    for path, msg in cases.items():
        for x in (path, str(path), [path]):
            with pytest.raises(InputError, match=msg) as e:
                tok.encode(x)
            assert str(path) in str(e.value)


def test_truncated_pil_image_passed_directly(tiny_tokenizer, make_image, tmp_path):
    tok = tiny_tokenizer("vqvae", spread=False)
    with Image.open(_truncated_jpeg(tmp_path, make_image)) as f:  # lazy: decodes inside encode
        with pytest.raises(InputError, match="truncated"):
            tok.encode(f)


def test_decompression_bomb_is_refused(tiny_tokenizer, make_image, tmp_path, monkeypatch):
    tok = tiny_tokenizer("vqvae", spread=False)
    Image.fromarray(make_image(64, 64)).save(tmp_path / "big.png")
    tok.encode(tmp_path / "big.png")  # fine at the normal limit
    for limit in (3000, 1000):  # 4096 pixels: over the limit (warning), over twice it (error)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        with pytest.raises(InputError, match="too large.*MAX_IMAGE_PIXELS"):
            tok.encode(tmp_path / "big.png")


@pytest.mark.parametrize(
    "bad, msg",
    [
        (np.zeros((0, 0, 3), np.uint8), "zero size"),
        (np.zeros((0, 5), np.float32), "zero size"),
        (torch.zeros(3, 0, 4), "zero size"),
        (torch.zeros(0, 3, 32, 32), "empty batch"),
        (np.zeros((0, 32, 32, 3), np.uint8), "empty batch"),
        (Image.new("RGB", (0, 0)), "zero size"),
        (torch.full((3, 8, 8), float("nan")), "NaN"),
        (np.full((8, 8, 3), np.inf, np.float32), "NaN or infinite"),
        (torch.rand(3, 8, 8) * 2 - 1, r"\[-1, 1\].*\(x \+ 1\) / 2"),
        (torch.rand(3, 8, 8) * 255, "0..255"),
        (np.random.default_rng(0).uniform(-1, 1, (8, 8, 3)), r"\[0, 1\]"),
        (torch.rand(2, 8, 8), r"C in \(1, 3\).*\(2, 8, 8\)"),
        (torch.rand(5, 8, 8), r"C in \(1, 3\).*\(5, 8, 8\)"),
        (torch.rand(1, 5, 8, 8), r"C in \(1, 3\)"),
        (np.zeros((8, 8, 2), np.uint8), r"C in \(1, 3, 4\).*\(8, 8, 2\)"),
        (np.zeros((8, 8, 5), np.uint8), r"C in \(1, 3, 4\)"),
        (np.zeros((8,), np.uint8), "HxW"),
        (np.zeros((8, 8, 3), np.int64), "uint8, uint16 or float"),
        (torch.zeros(3, 8, 8, dtype=torch.int32), "uint8.*or float"),
        (None, "cannot read an image from NoneType"),
        ({"image": 1}, "cannot read an image from dict"),
        ([], "empty list"),
        ([np.zeros((2, 8, 8, 3), np.uint8)], "single images, not batches"),
        (Image.new("La", (8, 8)), "mode 'La'"),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, str) else "",
)
def test_bad_arrays_and_objects(tiny_tokenizer, bad, msg):
    tok = tiny_tokenizer("vqvae", spread=False)
    with pytest.raises(InputError, match=msg):
        tok.encode(bad)
    with pytest.raises(InputError):
        tok.preprocess(bad)


def test_batch_of_mixed_sizes_needs_a_size(tiny_tokenizer, make_image):
    tok = tiny_tokenizer("vqvae", spread=False)
    imgs = [make_image(32, 32), make_image(40, 48)]
    with pytest.raises(InputError, match="share a size.*size=N"):
        tok.encode(imgs, size=None)
    assert tok.encode(imgs).shape == (2, 8, 8)  # resized to the default size: fine


def test_image_smaller_than_factor_with_size_none(tiny_tokenizer):
    tok = tiny_tokenizer("vqvae2", spread=False)
    with pytest.raises(InputError, match="smaller than the model's downsampling factor 8"):
        tok.encode(np.zeros((5, 40, 3), np.uint8), size=None)


def test_errors_are_imagetok_errors_and_value_errors():
    assert issubclass(InputError, ImagetokError) and issubclass(InputError, ValueError)


# ------------------------------------------------------------------ EXIF, bombs, PIL globals, limits
def test_exif_rotated_jpeg_path_and_pil_give_the_same_tokens(tiny_tokenizer, make_image, tmp_path):
    tok = tiny_tokenizer("vqgan")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(make_image(48, 80, seed=5)).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    by_path = tok.encode(tmp_path / "rot.jpg", size="native")
    with Image.open(tmp_path / "rot.jpg") as f:
        assert_same_tokens(tok.encode(f, size="native"), by_path)
        assert levels(by_path)[0].shape[0] > levels(by_path)[0].shape[1]  # upright: taller than wide
        from PIL import ImageOps

        assert_same_tokens(tok.encode(ImageOps.exif_transpose(f), size="native"), by_path)  # not turned twice


def test_bomb_guard_is_an_explicit_check_not_a_warning_filter(tiny_tokenizer, make_image, tmp_path, monkeypatch):
    import warnings

    tok = tiny_tokenizer("vqvae", spread=False)
    Image.fromarray(make_image(64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a process that ignores warnings is still protected
        before = list(warnings.filters)
        with pytest.raises(InputError, match=r"64x64 = 4096 pixels, more than PIL.Image.MAX_IMAGE_PIXELS = 3000"):
            tok.encode(tmp_path / "big.png")
        assert warnings.filters == before


def test_import_changes_no_pil_global():
    import subprocess
    import sys

    code = (
        "import warnings, numpy, torch; from PIL import Image, ImageFile; ImageFile.LOAD_TRUNCATED_IMAGES = True; "
        "Image.MAX_IMAGE_PIXELS = 123; f = list(warnings.filters); import imagetok, imagetok.image, imagetok.tokenizer; "
        "print(ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS, warnings.filters == f)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "123", "True"]


def test_extreme_shapes_are_refused_up_front(tiny_tokenizer, tmp_path):
    tok = tiny_tokenizer("vqvae", spread=False)
    Image.fromarray(np.zeros((1, 40000, 3), np.uint8)).save(tmp_path / "strip.png")  # a few hundred bytes
    Image.fromarray(np.zeros((2, 3000, 3), np.uint8)).save(tmp_path / "thin.png")
    assert (tmp_path / "strip.png").stat().st_size < 1000
    for name in ("strip.png", "thin.png"):
        with pytest.raises(InputError, match=rf"{name}: image of size .* imagetok.image.MAX_RESIZE_PIXELS"):
            tok.encode(tmp_path / name, size=256)
    with pytest.raises(InputError, match="size 25600 is larger than imagetok.image.MAX_SIZE = 4096"):
        tok.encode(tmp_path / "thin.png", size=25600)
    with pytest.raises(InputError, match="imagetok.image.MAX_SIZE"):
        tok.encode(np.zeros((8, 5000, 3), np.uint8), size="native")


def test_animated_gif_is_refused_with_the_rule(tiny_tokenizer, make_image, tmp_path):
    tok = tiny_tokenizer("vqvae", spread=False)
    frames = [Image.fromarray(make_image(32, 32, seed=s)) for s in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(InputError, match=r"anim.gif: animated image with 3 frames.*seek\(\)"):
        tok.encode(tmp_path / "anim.gif")
    with Image.open(tmp_path / "anim.gif") as f:  # a PIL image: its current frame, as documented
        f.seek(1)
        assert tok.encode(f).shape == (8, 8)
