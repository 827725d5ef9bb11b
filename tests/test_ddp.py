"""Two-process CPU DistributedDataParallel (gloo) smoke test of IAUNet training."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from iaunet_test_utils import small_iaunet_cfg, synthetic_batch

WORLD_SIZE = 2
ITERATIONS = 3


def _worker(rank, init_file, result_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD_SIZE)
    try:
        from detectron2.modeling import build_model

        torch.manual_seed(0)  # identical initial weights on both ranks
        model = build_model(small_iaunet_cfg())
        # Like Detectron2's trainer: no find_unused_parameters, so a parameter without a
        # gradient fails the second iteration.
        ddp = DistributedDataParallel(model, broadcast_buffers=False)
        optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
        losses = []
        for step in range(ITERATIONS):
            # Each rank sees different images; one image per step has no cells.
            batch = synthetic_batch([(64, 64), (64, 80)], [3 + rank, 0], seed=10 * step + rank)
            loss_dict = ddp(batch)
            loss = sum(loss_dict.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss))
        checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum()
        gathered = [torch.zeros((), dtype=torch.float64) for _ in range(WORLD_SIZE)]
        dist.all_gather(gathered, checksum)
        if rank == 0:
            torch.save({"losses": losses, "checksums": [float(g) for g in gathered]},
                       result_file)
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_training_keeps_replicas_in_sync(tmp_path):
    result_file = str(tmp_path / "result.pt")
    mp.spawn(_worker, args=(str(tmp_path / "init"), result_file), nprocs=WORLD_SIZE,
             join=True)
    result = torch.load(result_file)
    assert len(result["losses"]) == ITERATIONS
    assert all(torch.isfinite(torch.tensor(result["losses"])))
    # Gradients were averaged across ranks, so both replicas hold the same weights.
    first, second = result["checksums"]
    assert first == pytest.approx(second, rel=1e-9, abs=1e-9)
