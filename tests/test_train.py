"""imagetok.train: losses, codebook health, perceptual loss, discriminator, data, trainer, CLI.

Everything runs on tiny models (ch=32, 32 px crops) on one CPU thread.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_train_regression import write_images

from imagetok import Tokenizer
from imagetok.cli import main
from imagetok.errors import ConfigError, InputError, WeightsError
from imagetok.models.quantizer import QuantizerOutput, VectorQuantizer
from imagetok.train import TrainConfig, Trainer, train
from imagetok.train import codebook as cbk
from imagetok.train.data import ImageFolder
from imagetok.train.discriminator import NLayerDiscriminator
from imagetok.train.losses import (
    adaptive_weight,
    d_loss,
    g_loss,
    reconstruction_losses,
    vq_losses,
)
from imagetok.train.perceptual import LPIPS, load_lpips

TINY = dict(
    family="vqgan", ch=32, ch_mult=[1, 1, 2], num_res_blocks=1, attn_resolutions=[], mid_attn=False,
    z_channels=8, embed_dim=4, n_embed=32, resolution=32,
)  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_data")
    write_images(root / "train", 6, seed=0)
    write_images(root / "dev", 2, seed=50, size=(32, 32))
    return root


def tiny_cfg(data_dir, out, **kw) -> TrainConfig:
    base = dict(
        data=str(data_dir / "train"), out_dir=str(out), model=dict(TINY), crop_size=32, steps=6, batch_size=2,
        warmup_steps=2, num_threads=1, log_every=1, eval_every=1000, save_every=1000, progress=False,
    )  # fmt: skip
    return TrainConfig.from_dict({**base, **kw})


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v.clone() for k, v in trainer.model.state_dict().items()}
    if trainer.ema is not None:
        out.update({f"ema.{k}": v.clone() for k, v in trainer.ema.items()})
    if trainer.disc is not None:
        out.update({f"disc.{k}": v.clone() for k, v in trainer.disc.state_dict().items()})
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    bad = [k for k in a if not torch.equal(a[k], b[k])]
    assert not bad, f"differ: {bad[:5]}"


# ---------------------------------------------------------------------------------------- losses
def test_vq_losses_put_the_commitment_weight_on_the_encoder_term():
    z = torch.tensor([[1.0, 2.0], [0.0, -1.0]], requires_grad=True)  # encoder outputs
    e = torch.tensor([[0.0, 2.0], [1.0, 1.0]], requires_grad=True)  # their codes
    q = QuantizerOutput(z, torch.zeros(2, dtype=torch.long), z, e)
    cb, commit = vq_losses(q)
    cb_value, commit_value = float(cb.detach()), float(commit.detach())
    # mean over 4 elements of (z - e)^2 = (1 + 0 + 1 + 4) / 4
    assert cb_value == pytest.approx(1.5) and commit_value == pytest.approx(1.5)
    beta = 0.25
    (1.0 * cb + beta * commit).backward()
    # d/dz of beta * mean((z - sg(e))^2) = beta * 2 (z - e) / 4; the codebook term sends nothing to z
    assert torch.allclose(z.grad, beta * 2 * (z - e).detach() / 4)
    assert torch.allclose(e.grad, 2 * (e - z).detach() / 4)


def test_reconstruction_losses_hand_computed():
    x = torch.zeros(1, 3, 16, 16)
    rec = torch.full((1, 3, 16, 16), 0.5)
    parts = reconstruction_losses(rec, x, (-1.0, 1.0))
    assert float(parts["l1"]) == pytest.approx(0.5)
    assert float(parts["l2"]) == pytest.approx(0.25)
    # constant images: SSIM = luminance term only: (2 mx my + c1) / (mx^2 + my^2 + c1) in [0, 1] units
    # (abs 1e-3: the float32 variances blur(x^2) - mx^2 cancel only to ~1e-7, against c2 = 9e-4)
    mx, my, c1 = 0.5, 0.75, 0.01**2
    assert float(parts["ssim"]) == pytest.approx(1 - (2 * mx * my + c1) / (mx * mx + my * my + c1), abs=1e-3)
    assert float(reconstruction_losses(x, x, (-1.0, 1.0))["ssim"]) == pytest.approx(0.0, abs=1e-6)


def test_straight_through_estimator_passes_gradients_to_the_encoder():
    q = VectorQuantizer(8, 4)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = q(z)
    assert torch.allclose(out.quantized.detach(), out.codes.detach(), atol=1e-6)  # forward value = the codes
    w = torch.randn_like(out.quantized)
    (out.quantized * w).sum().backward()
    assert torch.allclose(z.grad, w)  # identity gradient to the latents
    assert q.embedding.weight.grad is None  # codes learn only from the codebook loss

    tok = Tokenizer.from_config(dict(TINY), seed=0)
    rec, _ = tok.model.train()(torch.rand(1, 3, 32, 32) * 2 - 1)
    rec.abs().mean().backward()  # reconstruction loss alone
    assert tok.model.encoder.conv_in.weight.grad.abs().sum() > 0


def test_gan_losses_hand_computed():
    real = torch.tensor([2.0, 0.5])
    fake = torch.tensor([-2.0, 0.5])
    # hinge: relu(1 - real) = [0, 0.5], relu(1 + fake) = [0, 1.5]
    assert float(d_loss(real, fake, "hinge")) == pytest.approx(0.5 * (0.25 + 0.75))
    sp = lambda t: math.log1p(math.exp(t))
    expect = 0.5 * ((sp(-2.0) + sp(-0.5)) / 2 + (sp(-2.0) + sp(0.5)) / 2)
    assert float(d_loss(real, fake, "non_saturating")) == pytest.approx(expect)
    assert float(g_loss(fake, "hinge")) == pytest.approx(0.75)
    assert float(g_loss(fake, "non_saturating")) == pytest.approx((sp(2.0) + sp(-0.5)) / 2)


def test_adaptive_weight_hand_computed():
    w = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)
    a, b = torch.tensor([3.0, 0.0, 4.0]), torch.tensor([0.0, 1.0, 0.0])
    weight = adaptive_weight((w * a).sum(), (w * b).sum(), w)
    assert float(weight) == pytest.approx(5.0 / (1.0 + 1e-4))  # ||a|| / (||b|| + 1e-4)
    assert not weight.requires_grad
    zero = adaptive_weight((w * a).sum(), (w * 0).sum(), w)
    assert float(zero) == 1e4  # clamped


def test_discriminator_has_taming_layout():
    d = NLayerDiscriminator()
    sd = d.state_dict()
    convs = [0, 2, 5, 8, 11]
    bns = [3, 6, 9]
    expected = {f"main.{i}.weight" for i in convs} | {"main.0.bias", "main.11.bias"}
    expected |= {f"main.{i}.{n}" for i in bns for n in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    assert set(sd) == expected
    shapes = {0: (64, 3, 4, 4), 2: (128, 64, 4, 4), 5: (256, 128, 4, 4), 8: (512, 256, 4, 4), 11: (1, 512, 4, 4)}
    assert all(tuple(sd[f"main.{i}.weight"].shape) == s for i, s in shapes.items())
    # hand count: convs 3*64*16+64, 64*128*16, 128*256*16, 256*512*16, 512*16+1; BN 2*(128+256+512)
    assert sum(p.numel() for p in d.parameters()) == 3136 + 131072 + 524288 + 2097152 + 8193 + 2 * (128 + 256 + 512)
    assert abs(float(sd["main.8.weight"].std()) - 0.02) < 0.001  # taming's weights_init
    assert float(sd["main.3.bias"].abs().max()) == 0
    assert d(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 6, 6)


# ---------------------------------------------------------------------------------------- LPIPS
@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory) -> tuple:
    """(state dict, folder holding vgg16.safetensors + lpips_vgg.pth) of a randomly initialised LPIPS."""
    return _random_lpips_files(tmp_path_factory.mktemp("lpips"))


def _random_lpips_files(tmp_path) -> tuple:
    g = torch.Generator().manual_seed(0)
    net = LPIPS()
    for name, p in net.named_parameters():  # He-initialised convs, small biases, positive lin weights
        if name.startswith("lin"):
            p.data = torch.rand(p.shape, generator=g)
        elif p.ndim == 4:
            p.data = torch.randn(p.shape, generator=g) * math.sqrt(2 / p[0].numel())
        else:
            p.data = 0.01 * torch.randn(p.shape, generator=g)
    sd = net.state_dict()
    vgg = {k: v for k, v in sd.items() if k.startswith("features.")}
    vgg["classifier.0.weight"] = torch.zeros(4, 4)  # torchvision's vgg16 has a classifier: ignored
    lin = {k: v for k, v in sd.items() if k.startswith("lin")}
    from safetensors.torch import save_file

    (tmp_path / "w").mkdir()
    save_file(vgg, str(tmp_path / "w" / "vgg16.safetensors"))
    torch.save(lin, tmp_path / "w" / "lpips_vgg.pth")
    return sd, tmp_path / "w"


def _lpips_reference(sd, x, y):
    """LPIPS written out from the paper/code: scaling layer, 5 VGG slices, unit-normalise, lin, mean."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    slices = [[0, 2], ["M", 5, 7], ["M", 10, 12, 14], ["M", 17, 19, 21], ["M", 24, 26, 28]]

    def feats(t):
        h, out = (t - shift) / scale, []
        for layers in slices:
            for i in layers:
                h = F.max_pool2d(h, 2) if i == "M" else F.relu(F.conv2d(h, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], padding=1))
            out.append(h)
        return out

    total = 0
    for k, (a, b) in enumerate(zip(feats(x), feats(y))):
        a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
        b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
        total = total + (((a - b) ** 2) * sd[f"lin{k}.model.1.weight"].view(1, -1, 1, 1)).sum(1).mean(dim=(1, 2))
    return total


def test_lpips_loads_user_weights_and_matches_the_reference(tmp_path, lpips_files):
    sd, folder = lpips_files
    net = load_lpips(folder)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1).requires_grad_(True)
    d = net(x, y)
    assert d.shape == (2,)
    assert torch.allclose(d, _lpips_reference(sd, x, y.detach()), rtol=1e-4, atol=1e-6)
    assert (d > 0).all() and float(net(x, x).abs().max()) < 1e-6
    d.sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())  # frozen
    net.train()
    assert not net.training  # dropout stays off

    # taming / LPIPS full layout: net.sliceK.N.* names load into the same network
    slice_of = lambda i: 1 + sum(i > t for t in (3, 8, 15, 22))
    taming = {(f"net.slice{slice_of(int(k.split('.')[1]))}." + k.removeprefix("features.") if k.startswith("features.") else k): v
              for k, v in sd.items()}  # fmt: skip
    taming["scaling_layer.shift"] = torch.zeros(1, 3, 1, 1)
    torch.save(taming, tmp_path / "taming_lpips.pth")
    assert torch.allclose(load_lpips(tmp_path / "taming_lpips.pth")(x, y.detach()), d.detach())


def test_lpips_loading_is_strict(tmp_path, lpips_files):
    sd, folder = lpips_files
    with pytest.raises(WeightsError, match="lin0.model.1.weight"):
        load_lpips(folder / "vgg16.safetensors")  # the lin layers are missing
    extra = {**sd, "features.99.weight": torch.zeros(1)}
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(WeightsError, match="features.99.weight"):
        load_lpips(tmp_path / "extra.pth")
    with pytest.raises(WeightsError, match="not found"):
        load_lpips(tmp_path / "nope.safetensors")
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="weights_only"):
        load_lpips(tmp_path / "bad.pth")


def test_trainer_uses_lpips_only_when_weighted(tmp_path, data_dir, caplog, lpips_files):
    _, folder = lpips_files
    with pytest.raises(ConfigError, match="perceptual_weights"):
        tiny_cfg(data_dir, tmp_path / "a", perceptual_weight=0.5)
    caplog.set_level("INFO")
    off = Trainer(tiny_cfg(data_dir, tmp_path / "b", perceptual_weights=str(tmp_path / "missing")))
    assert off.lpips is None and "LPIPS loss is off" in caplog.text
    on = Trainer(tiny_cfg(data_dir, tmp_path / "c", perceptual_weight=1.0, perceptual_weights=str(folder), steps=1))
    on._init_codebooks()
    parts = on.train_step()
    assert parts["perceptual"] > 0
    assert parts["loss"] == pytest.approx(parts["l1"] + parts["perceptual"] + parts["codebook"] + 0.25 * parts["commit"], rel=1e-5)


# ---------------------------------------------------------------------------------------- codebook
def test_ema_codebook_update_hand_computed():
    q = VectorQuantizer(2, 2)
    with torch.no_grad():
        q.embedding.weight.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
    ema = cbk.EMACodebook(q, decay=0.5, eps=0.0)
    latents = torch.tensor([[1.0, 0.0], [3.0, 0.0], [10.0, 12.0]])
    ema.accumulate(latents, torch.tensor([0, 0, 1]))
    ema.step(q)
    # N = 0.5 * [1, 1] + 0.5 * [2, 1] = [1.5, 1]; m = 0.5 * e + 0.5 * sums = [(2, 0), (10, 11)]
    assert torch.allclose(ema.cluster_size, torch.tensor([1.5, 1.0]))
    assert torch.allclose(q.embedding.weight, torch.tensor([[2 / 1.5, 0.0], [10.0, 11.0]]))
    ema.step(q)  # an empty step: both statistics decay alike, the codes stay
    assert torch.allclose(q.embedding.weight, torch.tensor([[2 / 1.5, 0.0], [10.0, 11.0]]))


def test_dead_code_restart_on_constructed_data():
    q = VectorQuantizer(4, 2)
    before = q.embedding.weight.detach().clone()
    tracker = cbk.UsageTracker(4)
    tracker.update(torch.tensor([0, 0, 2, 2, 2]))
    st = tracker.stats()
    assert st["usage"] == 0.5
    assert st["perplexity"] == pytest.approx(math.exp(-(0.4 * math.log(0.4) + 0.6 * math.log(0.6))))
    latents = torch.tensor([[5.0, 5.0], [5.0, 5.0], [5.0, 5.0]])
    ema = cbk.EMACodebook(q, 0.9)
    n = tracker.restart_dead(q, latents, seed=0, ema=ema)
    w = q.embedding.weight.detach()
    assert n == 2
    assert torch.equal(w[[0, 2]], before[[0, 2]])  # used codes untouched
    assert torch.allclose(w[[1, 3]], torch.full((2, 2), 5.0), atol=1e-3)  # dead codes moved to the data
    assert torch.equal(ema.embed_sum[[1, 3]], w[[1, 3]]) and torch.equal(ema.cluster_size, torch.ones(4))
    assert int(tracker.counts.sum()) == 0  # a new window starts
    assert tracker.restart_dead(q, latents, seed=0) == 4  # nothing used since: all restarted


def test_codebook_init_from_data():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x = centres.repeat_interleave(50, 0) + 0.01 * torch.randn(200, 2, generator=g)
    q = VectorQuantizer(4, 2)
    cbk.init_codebook(q, x, "kmeans++", seed=0)
    got = q.embedding.weight.detach()
    assert torch.cdist(centres, got).min(1).values.max() < 0.5  # one code per cluster
    q2 = VectorQuantizer(4, 2, norm="l2")
    cbk.init_codebook(q2, x + 1, "sample", seed=0)
    assert torch.allclose(q2.embedding.weight.norm(dim=1), torch.ones(4))  # l2 codes are unit vectors
    assert all(any(torch.allclose(F.normalize(r, dim=0), c, atol=0.05) for r in x + 1) for c in q2.embedding.weight.detach())


# ---------------------------------------------------------------------------------------- data and config
def test_image_folder_sampling_and_bad_files(tmp_path):
    write_images(tmp_path / "d" / "sub", 3, seed=0)  # recursive
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "d" / "small.png")
    (tmp_path / "d" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (tmp_path / "d" / "notes.txt").write_text("ignored")
    data = ImageFolder(tmp_path / "d", 32)
    assert len(data) == 3 and len(data.skipped) == 2
    assert any("smaller than crop_size" in r for r in data.skipped.values())
    b = data.batch(4, seed=1, step=7, rank=0)
    assert b.shape == (4, 3, 32, 32) and b.dtype == torch.float32 and 0 <= float(b.min()) <= float(b.max()) <= 1
    assert torch.equal(b, data.batch(4, seed=1, step=7, rank=0))  # pure function of (seed, step, rank)
    assert not torch.equal(b, data.batch(4, seed=1, step=7, rank=1))
    with pytest.raises(InputError, match="none of the 5 image"):
        ImageFolder(tmp_path / "d", 64)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files"):
        ImageFolder(tmp_path / "empty", 32)
    with pytest.raises(InputError, match="not found"):
        ImageFolder(tmp_path / "missing", 32)


def test_config_errors(tmp_path, data_dir):
    with pytest.raises(ConfigError, match="unknown train config key.*'stepz'"):
        TrainConfig.from_dict({"data": "d", "out_dir": "o", "model": TINY, "stepz": 3})
    with pytest.raises(ConfigError, match="'lr' must be of type float"):
        TrainConfig.from_dict({"data": "d", "out_dir": "o", "model": TINY, "lr": "fast"})
    with pytest.raises(ConfigError, match="exactly one"):
        TrainConfig.from_dict({"data": "d", "out_dir": "o"})
    with pytest.raises(ConfigError, match="disc_weight"):
        TrainConfig.from_dict({"data": "d", "out_dir": "o", "model": TINY, "disc_weight": -1})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        TrainConfig.from_json(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="multiple of the model's downsampling factor 4"):
        Trainer(tiny_cfg(data_dir, tmp_path / "o", crop_size=30))
    with pytest.raises(ConfigError, match="Gumbel"):
        Trainer(tiny_cfg(data_dir, tmp_path / "g", model={**TINY, "quantizer": "gumbel"}))


def test_example_config_is_valid():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "train_example.json"
    cfg = TrainConfig.from_json(path)  # "//..." comment keys are dropped, everything else is strict
    assert cfg.model is not None and cfg.model["family"] == "vqgan"
    from imagetok.config import config_from_dict

    assert config_from_dict(cfg.model).downsample_factors == (8,) and cfg.crop_size % 8 == 0


# ---------------------------------------------------------------------------------------- trainer
def test_resume_after_interruption_gives_the_same_weights(tmp_path, data_dir, monkeypatch):
    kw = dict(steps=6, grad_accum=2, restart_every=2, ema_decay=0.8, codebook_ema=True, disc_weight=0.5,
              disc_channels=8, disc_layers=2, disc_start=2, model={**TINY, "dropout": 0.1})  # fmt: skip
    full = Trainer(tiny_cfg(data_dir, tmp_path / "full", **kw))
    full.run()

    cfg = tiny_cfg(data_dir, tmp_path / "cut", **kw)
    first = Trainer(cfg)
    real_step = Trainer.train_step

    def interrupt_at_4(self):
        if self.step == 4:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", interrupt_at_4)
    with pytest.raises(KeyboardInterrupt):
        first.run()
    monkeypatch.setattr(Trainer, "train_step", real_step)
    ck = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 4 and {"disc", "disc_opt", "codebook_ema", "rng"} <= set(ck)
    second = Trainer(cfg)
    assert second.step == 4
    second.run()
    assert_same(weights(full), weights(second))
    assert (tmp_path / "cut" / "model" / "model.safetensors").exists()


def test_resume_refuses_incompatible_checkpoints(tmp_path, data_dir, monkeypatch):
    cfg = tiny_cfg(data_dir, tmp_path / "o", steps=1)
    Trainer(cfg).run()
    ck_path = tmp_path / "o" / "checkpoint.pt"
    with pytest.raises(ConfigError, match=r"different run \(model differ\)"):
        Trainer(tiny_cfg(data_dir, tmp_path / "o", steps=1, model={**TINY, "n_embed": 16}))
    with pytest.raises(ConfigError, match="codebook_ema"):
        Trainer(tiny_cfg(data_dir, tmp_path / "o", steps=1, codebook_ema=True))
    good = ck_path.read_bytes()

    def failing_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        Trainer(cfg).save()
    monkeypatch.undo()
    assert ck_path.read_bytes() == good and not (tmp_path / "o" / "checkpoint.pt.tmp").exists()
    ck_path.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(ConfigError, match="cannot read checkpoint"):
        Trainer(cfg)
    assert ck_path.read_bytes() == good[: len(good) // 2]  # left alone for the user


def test_training_lowers_the_reconstruction_loss_and_exports(tmp_path, data_dir):
    cfg = tiny_cfg(data_dir, tmp_path / "o", steps=50, batch_size=4, lr=2e-3, warmup_steps=5, l2_weight=1.0,
                   restart_every=10, ema_decay=0.9, eval_data=str(data_dir / "dev"), eval_size=32, eval_every=25,
                   log_every=1, keep_last=False, save_every=25)  # fmt: skip
    out = train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    start = rows[0]
    assert start["event"] == "start" and start["images"] == 6 and start["skipped"] == 0
    losses = [r["l1"] for r in rows if "l1" in r]
    assert len(losses) == 50
    assert np.mean(losses[-5:]) < 0.7 * losses[0]  # typically 0.43 -> 0.26
    assert all("usage0" in r and "perplexity0" in r for r in rows if "l1" in r)
    evals = [r for r in rows if "eval_psnr" in r]
    assert [r["step"] for r in evals] == [25, 50] and evals[-1]["eval_psnr"] > evals[0]["eval_psnr"] - 0.5
    assert sorted(p.name for p in (tmp_path / "o" / "samples").iterdir()) == ["step_0000025.png", "step_0000050.png"]
    assert sorted(p.name for p in (tmp_path / "o" / "checkpoints").iterdir()) == ["step_0000025.pt", "step_0000050.pt"]
    # the exported folder is the EMA model
    tok = Tokenizer.from_pretrained(out)
    trainer = Trainer(cfg)  # resumes at step 50: nothing left to train
    assert trainer.step == 50
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(tok.encode_pixels(x), trainer.export_tokenizer().encode_pixels(x))
    assert "eval_psnr" in (out / "README.md").read_text() or "PSNR" in (out / "README.md").read_text()


def test_fine_tuning_keeps_the_pretrained_codebook(tmp_path, data_dir):
    tok = Tokenizer.from_config(dict(TINY), seed=3)
    with torch.no_grad():
        tok.model.quantize.embedding.weight.normal_()
    tok.save_pretrained(tmp_path / "pre")
    cfg = TrainConfig.from_dict(dict(data=str(data_dir / "train"), out_dir=str(tmp_path / "ft"), init_from=str(tmp_path / "pre"),
                                     crop_size=32, steps=1, batch_size=2, lr=1e-9, progress=False))  # fmt: skip
    out = train(cfg)
    w = Tokenizer.from_pretrained(out).model.quantize.embedding.weight
    assert torch.allclose(w, tok.model.quantize.embedding.weight, atol=1e-6)


def test_bf16_and_vqvae2_with_ema_codebooks(tmp_path, data_dir):
    model = dict(family="vqvae2", channel=32, n_res_block=1, n_res_channel=8, embed_dim=8, n_embed=16, resolution=32)
    trainer = Trainer(tiny_cfg(data_dir, tmp_path / "o", model=model, steps=3, bf16=True, codebook_ema=True))
    before = [q.embedding.weight.detach().clone() for q in trainer.quantizers]
    trainer.run()
    assert all(not q.embedding.weight.requires_grad for q in trainer.quantizers)
    assert all(not torch.equal(b, q.embedding.weight) for b, q in zip(before, trainer.quantizers))  # EMA moved both
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_discriminator_learns_in_the_trainer(tmp_path, data_dir):
    """With the generator frozen (tiny lr), the trainer's D steps must separate real from reconstructed
    crops (wiring and signs: d_loss on (real, fake), its own optimiser, no gradients lost in the G step)."""
    cfg = tiny_cfg(data_dir, tmp_path / "o", disc_weight=0.5, disc_channels=16, disc_layers=2, lr=1e-7, disc_lr=1e-3, warmup_steps=0)
    t = Trainer(cfg)
    t._init_codebooks()
    rows = [t.train_step() for _ in range(20)]  # d_loss typically 1.0 -> 0.6
    assert rows[0]["d_loss"] == pytest.approx(1.0, abs=0.05)  # untrained: logits near 0
    last = rows[-3:]
    assert np.mean([r["d_loss"] for r in last]) < 0.85
    assert all(r["logits_real"] > r["logits_fake"] for r in last)
    assert all(r["d_weight"] > 0 and r["g_loss"] == pytest.approx(-r["logits_fake"], abs=1e-6) for r in last)  # hinge G loss


def test_cli_train(tmp_path, data_dir, capsys):
    cfg = {"data": str(data_dir / "train"), "out_dir": str(tmp_path / "ignored"), "model": TINY, "crop_size": 32,
           "batch_size": 2, "steps": 100, "progress": False, "//": "comments are allowed"}  # fmt: skip
    (tmp_path / "train.json").write_text(json.dumps(cfg))
    assert main(["train", "--config", str(tmp_path / "train.json"), "--steps", "2", "--out-dir", str(tmp_path / "o")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "o" / "model")
    assert torch.load(tmp_path / "o" / "checkpoint.pt", weights_only=True)["step"] == 2
    (tmp_path / "bad.json").write_text(json.dumps({**cfg, "lr_warmup": 3}))
    assert main(["train", "--config", str(tmp_path / "bad.json")]) == 1
    err = capsys.readouterr().err
    assert "unknown train config key(s) ['lr_warmup']" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    (tmp_path / "e.json").write_text(json.dumps({**cfg, "data": str(tmp_path / "empty")}))
    assert main(["train", "--config", str(tmp_path / "e.json"), "--out-dir", str(tmp_path / "o2")]) == 1
    assert "no image files" in capsys.readouterr().err
