"""Two-process prior training with gloo on CPU (torchrun's environment, forked ranks): identical weights on every rank."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import traceback

import pytest
import torch

from imagetok.prior import TokenData
from imagetok.prior.trainer import PriorTrainConfig, PriorTrainer


def _rank_main(rank: int, port: str, cfg: dict, data: TokenData, out: str) -> None:
    code = 1
    try:
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=port)  # fmt: skip
        t = PriorTrainer(PriorTrainConfig.from_dict(cfg), data)
        t.run()
        torch.save({"model": t.model.state_dict(), "world_size": t.world_size}, f"{out}/rank{rank}.pt")
        t.close()
        code = 0
    except BaseException:
        with open(f"{out}/rank{rank}.err", "w") as f:
            f.write(traceback.format_exc())
    finally:
        os._exit(code)  # a forked child must not run pytest's exit handlers


@pytest.mark.slow  # ~20 s: two forked ranks start a gloo group
def test_two_process_gloo_prior_run_keeps_ranks_identical(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = TokenData.from_tensors(torch.randint(0, 16, (24, 3, 3), generator=g), torch.randint(0, 2, (24,), generator=g), codebook_sizes=(16,))
    cfg = dict(out_dir=str(tmp_path / "out"), width=16, depth=1, heads=2, steps=4, batch_size=4, warmup_steps=1,
               num_threads=1, log_every=1, save_every=2, progress=False, device="cpu")  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_rank_main, args=(r, port, cfg, data, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    errors = [(tmp_path / f"rank{r}.err").read_text() for r in range(2) if (tmp_path / f"rank{r}.err").exists()]
    assert [p.exitcode for p in procs] == [0, 0], errors
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert r0["world_size"] == r1["world_size"] == 2
    assert [k for k in r0["model"] if not torch.equal(r0["model"][k], r1["model"][k])] == []
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["world_size"] == 2 and [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert (tmp_path / "out" / "prior" / "model.safetensors").exists()
