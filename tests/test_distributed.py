"""2 processes on gloo see the 1-process global batch: same loss (1e-5 rel) and parameters after a step."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from _trainer_helpers import PairData, PairModel, collate, pair_config
from loupe_core.train.distributed import init_distributed, shard_bounds, shutdown
from loupe_core.train.trainer import train

CASES = ({"accum_steps": 1}, {"accum_steps": 2})  # the model's own gather, and the feature bank


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(case, run_dir, ctx=None):
    torch.manual_seed(0)
    cfg = pair_config(steps=2, batch_size=8, lr=1e-2, **case)
    res = train(cfg, run_dir, PairModel(dropout=0.0), PairData(16), collate, ctx=ctx)
    return res.losses, [p.detach().clone() for p in res.model.parameters()]


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    results = [_run(case, os.path.join(out_dir, f"run{i}"), ctx) for i, case in enumerate(CASES)]
    if rank == 0:
        torch.save(results, os.path.join(out_dir, "results.pt"))
    shutdown(ctx)


def test_shard_bounds_cover_the_global_batch_once():
    rows = [r for rank in range(3) for a, b in shard_bounds(24, 3, rank, 2) for r in range(a, b)]
    assert rows == list(range(24))
    with pytest.raises(ValueError, match="train.batch_size=10 must be divisible"):
        shard_bounds(10, 2, 0, 3)


def test_two_gloo_processes_match_one_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    two = torch.load(tmp_path / "results.pt", weights_only=True)
    for case, (losses2, params2) in zip(CASES, two):
        losses1, params1 = _run(case, str(tmp_path / f"single{case['accum_steps']}"))
        for a, b in zip(losses1, losses2):
            assert abs(a - b) <= 1e-5 * abs(a), (case, losses1, losses2)
        for p, q in zip(params1, params2):
            torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)
