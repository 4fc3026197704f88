"""Two-process training with gloo on CPU: every rank must end with identical weights and codebooks.

The two processes are forked from the test process and given the environment torchrun gives
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so the trainer starts its gloo process
group exactly as under torchrun, without paying torch's import twice more. The run exercises everything that must be kept in sync across ranks: DDP gradients with
gradient accumulation, data-based codebook initialisation, EMA codebook statistics, dead-code
restarts, the discriminator and the adaptive GAN weight.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import traceback

import torch
from test_train_regression import write_images

from imagetok.train import TrainConfig, Trainer


def _rank_main(rank: int, port: str, cfg_path: str, out: str) -> None:
    """Body of one forked rank: torchrun's environment, then the trainer as `imagetok train` runs it."""
    code = 1
    try:
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=port)  # fmt: skip
        t = Trainer(TrainConfig.from_json(cfg_path))
        t.run()
        state = {"model": t.model.state_dict(), "ema": t.ema, "disc": t.disc.state_dict(),
                 "codebook_ema": t.codebook_ema[0].state_dict(), "world_size": t.world_size}  # fmt: skip
        torch.save(state, f"{out}/rank{rank}.pt")
        t.close()
        code = 0
    except BaseException:
        with open(f"{out}/rank{rank}.err", "w") as f:
            f.write(traceback.format_exc())
    finally:
        os._exit(code)  # a forked child must not run pytest's exit handlers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_run_keeps_ranks_identical(tmp_path):
    write_images(tmp_path / "data", 6, seed=0)
    model = dict(family="vqgan", ch=32, ch_mult=[1, 1, 2], num_res_blocks=1, attn_resolutions=[], mid_attn=False,
                 z_channels=8, embed_dim=4, n_embed=32, resolution=32, codebook_norm="l2")  # fmt: skip
    cfg = dict(data=str(tmp_path / "data"), out_dir=str(tmp_path / "out"), model=model, crop_size=32, steps=6,
               batch_size=2, grad_accum=2, warmup_steps=2, codebook_init="kmeans++", codebook_ema=True,
               restart_every=2, ema_decay=0.8, disc_weight=0.5, disc_channels=8, disc_layers=2, disc_start=2,
               num_threads=1, log_every=1, eval_every=1000, save_every=3, progress=False)  # fmt: skip
    (tmp_path / "train.json").write_text(json.dumps(cfg))
    port = str(_free_port())
    # Forked from this process (torch already imported): saves ~5 s of start-up per rank over torchrun.
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_rank_main, args=(r, port, str(tmp_path / "train.json"), str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    errors = [(tmp_path / f"rank{r}.err").read_text() for r in range(2) if (tmp_path / f"rank{r}.err").exists()]
    assert [p.exitcode for p in procs] == [0, 0], errors

    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["world_size"] == r1["world_size"] == 2
    for part in ("model", "ema", "disc", "codebook_ema"):
        assert r0[part].keys() == r1[part].keys()
        differ = [k for k in r0[part] if not torch.equal(r0[part][k], r1[part][k])]
        assert not differ, f"{part} differs across ranks: {differ}"

    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["world_size"] == 2
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]  # one writer: rank 0
    assert all("d_loss" in r for r in steps if r["step"] > 2) and not any("d_loss" in r for r in steps if r["step"] <= 2)
    ck = torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=True)
    assert ck["world_size"] == 2 and ck["step"] == 6
    assert (tmp_path / "out" / "model" / "model.safetensors").exists()
