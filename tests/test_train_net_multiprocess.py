"""Multi-process training on CPU: the gloo launcher, DDP on CPU and train_net.py --num-gpus."""
import os
import subprocess
import sys
import types

import iaunet_d2  # noqa: F401  (compatibility fixes first, also in the spawned processes)
import pytest
import torch
import torch.distributed as dist
from detectron2.engine import defaults
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

from iaunet_d2.engine import Trainer, launch


def _report(out_dir, **values):
    torch.save(values, os.path.join(out_dir, f"rank{comm.get_rank()}.pt"))


def _reports(out_dir, world_size):
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(world_size)]


def _all_reduce_main(out_dir):
    total = torch.tensor([float(comm.get_rank() + 1)])
    dist.all_reduce(total)
    # What DefaultTrainer does with its model; needs compat's CPU fix to work.
    ddp = defaults.create_ddp_model(torch.nn.Linear(2, 2), broadcast_buffers=False)
    _report(out_dir, total=float(total), backend=dist.get_backend(),
            local=(comm.get_local_rank(), comm.get_local_size()),
            world=comm.get_world_size(), threads=torch.get_num_threads(),
            wrapped=isinstance(ddp, DistributedDataParallel))


def test_gloo_launch_runs_collectives_and_wraps_cpu_models_in_ddp(tmp_path):
    launch(_all_reduce_main, 2, dist_url="auto", args=(str(tmp_path),), backend="gloo")
    reports = _reports(tmp_path, 2)
    for local_rank, report in enumerate(reports):
        assert report["total"] == 3.0 and report["backend"] == "gloo"
        assert report["local"] == (local_rank, 2) and report["world"] == 2
        assert report["threads"] == max(1, os.cpu_count() // 2)
        assert report["wrapped"]


def test_single_process_launch_calls_main_directly():
    calls = []
    launch(lambda *a: calls.append(a), 1, args=(1, 2), backend="gloo")
    assert calls == [(1, 2)]
    assert not dist.is_initialized()


@pytest.mark.parametrize("dist_url", ["auto", None])
def test_multi_machine_launch_without_a_dist_url_is_refused(dist_url):
    with pytest.raises(ValueError, match="--dist-url"):
        launch(pytest.fail, 2, num_machines=2, machine_rank=0, dist_url=dist_url,
               backend="gloo")


def _diverged_main(out_dir):
    model = torch.nn.Linear(2, 2)
    torch.nn.init.constant_(model.weight, 1.0 + comm.get_rank())
    trainer = types.SimpleNamespace(_trainer=types.SimpleNamespace(model=model))
    try:
        Trainer._check_replicas_in_sync(trainer)
        _report(out_dir, error=None)
    except RuntimeError as e:
        _report(out_dir, error=str(e))


def test_replica_check_names_the_diverged_ranks(tmp_path):
    launch(_diverged_main, 2, dist_url="auto", args=(str(tmp_path),), backend="gloo")
    for report in _reports(tmp_path, 2):
        assert report["error"] is not None and "ranks [1]" in report["error"]


def test_train_net_two_cpu_processes_train_evaluate_and_stay_in_sync(tmp_path, repo_root):
    out = tmp_path / "out"
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"))
    args = [
        "--num-gpus", "2", "--dist-url", "auto",
        "--config-file", os.path.join(repo_root, "configs", "demo", "iaunet_R18_small.yaml"),
        "SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1", "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.CHECKPOINT_PERIOD", "1000", "INPUT.IMAGE_SIZE", "64",
        "DATALOADER.NUM_WORKERS", "0", "TEST.EVAL_PERIOD", "0", "OUTPUT_DIR", str(out),
    ]
    proc = subprocess.run([sys.executable, os.path.join(repo_root, "train_net.py"), *args],
                          cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert (out / "model_final.pth").is_file()
    assert "World size: 2" in log
    # The final evaluation ran on both processes and reported segm AP.
    assert "on 2 devices" in log
    assert "Evaluation results for cells_demo_val" in log and "copypaste: Task: segm" in log
    assert "Replicas in sync after training" in log and "on all 2 processes" in log
