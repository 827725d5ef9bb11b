"""Training, checkpointing and evaluation through the project's Trainer (CPU)."""
import errno
import glob
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.structures import Boxes, Instances
from pycocotools import mask as mask_util

import iaunet_d2  # noqa: F401
from iaunet_d2.engine import (
    AtomicCheckpointer, CheckpointReadError, CheckpointWriteError, Trainer, attach_finite_loss_check,
    build_config,
)
from iaunet_d2.evaluation import build_coco_evaluator
from iaunet_d2.solver import build_lr_scheduler, build_optimizer

from train_utils import DEMO_MASK_RCNN, DEMO_POINTREND, REPO_ROOT, tiny_rcnn_opts


def _metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.parametrize("config_file", [DEMO_MASK_RCNN, DEMO_POINTREND],
                         ids=["mask_rcnn", "pointrend"])
def test_baseline_trains_a_few_iterations(config_file, tmp_path):
    cfg = build_config(config_file, tiny_rcnn_opts(tmp_path, max_iter=3))
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    records = [r for r in _metrics(tmp_path) if "total_loss" in r]
    assert records, "no training metrics were written"
    assert all(math.isfinite(r["total_loss"]) for r in records)
    assert records[-1]["iteration"] == 2
    assert {"loss_mask", "loss_cls", "loss_rpn_cls"} <= set(records[-1])
    assert os.path.isfile(tmp_path / "model_final.pth")


def test_evaluation_returns_coco_ap(tmp_path):
    cfg = build_config(
        DEMO_MASK_RCNN,
        tiny_rcnn_opts(tmp_path, **{"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0}),
    )
    model = Trainer.build_model(cfg)
    results = Trainer.test(cfg, model)
    for task in ("segm", "bbox"):
        assert {"AP", "AP50", "AP75", "APs", "APm", "APl"} <= set(results[task])
        assert 0.0 <= results[task]["AP50"] <= 100.0


def _val_ground_truth():
    dicts = DatasetCatalog.get("cells_demo_val")
    inputs, outputs = [], []
    for d in dicts:
        h, w = d["height"], d["width"]
        masks = np.stack([mask_util.decode(a["segmentation"]) for a in d["annotations"]])
        inst = Instances((h, w))
        inst.pred_masks = torch.from_numpy(masks).bool()
        boxes = [a["bbox"] for a in d["annotations"]]  # XYWH_ABS
        inst.pred_boxes = Boxes(torch.tensor([[x, y, x + bw, y + bh] for x, y, bw, bh in boxes]))
        inst.scores = torch.ones(len(masks))
        inst.pred_classes = torch.zeros(len(masks), dtype=torch.int64)
        inputs.append({"image_id": d["image_id"], "height": h, "width": w})
        outputs.append({"instances": inst})
    return inputs, outputs


def _evaluate(cfg, inputs, outputs):
    evaluator = build_coco_evaluator(cfg, "cells_demo_val")
    evaluator.reset()
    evaluator.process(inputs, outputs)
    return evaluator.evaluate()


def test_evaluator_scores_ground_truth_100_and_shifted_masks_lower(tmp_path):
    cfg = build_config(DEMO_MASK_RCNN, ["OUTPUT_DIR", str(tmp_path)])
    inputs, outputs = _val_ground_truth()
    perfect = _evaluate(cfg, inputs, outputs)
    assert perfect["segm"]["AP"] == pytest.approx(100.0, abs=1e-6)
    assert perfect["bbox"]["AP"] == pytest.approx(100.0, abs=1e-6)

    for out in outputs:
        out["instances"].pred_masks = torch.roll(out["instances"].pred_masks, shifts=6, dims=2)
    shifted = _evaluate(cfg, inputs, outputs)
    assert shifted["segm"]["AP"] < 90.0
    assert shifted["bbox"]["AP"] == pytest.approx(100.0, abs=1e-6)  # boxes untouched


class _ScriptedLossModel(torch.nn.Module):
    """Returns a finite loss, then NaN in ``loss_bad`` from iteration ``nan_at`` on."""

    def __init__(self, nan_at):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))
        self.nan_at = nan_at
        self.calls = 0

    def forward(self, batch):
        bad = torch.tensor(float("nan")) if self.calls >= self.nan_at else torch.tensor(0.0)
        self.calls += 1
        return {"loss_good": self.weight.sum(), "loss_bad": self.weight.sum() * 0 + bad}


def test_non_finite_loss_stops_training_naming_iteration_and_term():
    model = _ScriptedLossModel(nan_at=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = SimpleTrainer(model, [[{}]] * 10, optimizer)
    attach_finite_loss_check(model, lambda: trainer.iter)
    with pytest.raises(FloatingPointError) as err:
        trainer.train(0, 10)
    message = str(err.value)
    assert "iteration 2" in message and "loss_bad=nan" in message
    assert "loss_good" in message
    # The NaN step never reached the weights: two finite SGD steps of size 0.1.
    assert model.weight.item() == pytest.approx(0.8)


def test_the_check_is_on_with_and_without_amp(tmp_path):
    """The check is a forward hook on the model, so the AMP trainer (CUDA only) keeps it."""
    from iaunet_d2.engine import FiniteLossCheck

    for amp in (False, True):
        cfg = build_config(DEMO_MASK_RCNN, tiny_rcnn_opts(tmp_path / str(amp), max_iter=1)
                           + ["SOLVER.AMP.ENABLED", str(amp)])
        trainer = Trainer(cfg)
        assert isinstance(trainer._trainer, AMPTrainer) == amp
        hooks = trainer._trainer.model._forward_hooks.values()
        assert sum(isinstance(h, FiniteLossCheck) for h in hooks) == 1


def test_lr_schedule_is_warmup_then_cosine_to_base_lr_end():
    cfg = build_config(DEMO_MASK_RCNN, ["SOLVER.MAX_ITER", "100", "SOLVER.WARMUP_ITERS", "10",
                                        "SOLVER.BASE_LR", "0.001", "SOLVER.BASE_LR_END", "0.00001"],
                       prepare_data=False)
    model = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] < lrs[10]  # warmup
    assert lrs[10] == pytest.approx(0.001 * (1 + math.cos(math.pi * 0.1)) / 2 * (1 - 0.01) + 1e-5,
                                    rel=1e-6)
    assert lrs[-1] == pytest.approx(1e-5, rel=0.05)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_full_model_gradient_clipping_and_backbone_multiplier():
    cfg = build_config(DEMO_MASK_RCNN, ["SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "0.5",
                                        "SOLVER.BACKBONE_MULTIPLIER", "0.1",
                                        "SOLVER.BASE_LR", "0.01"], prepare_data=False)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = torch.nn.Linear(3, 3)
            self.head = torch.nn.Linear(3, 1)

    net = Net()
    optimizer = build_optimizer(cfg, net)
    lrs = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert lrs[id(net.backbone.weight)] == pytest.approx(0.001)
    assert lrs[id(net.head.weight)] == pytest.approx(0.01)

    (net.head(net.backbone(torch.full((4, 3), 100.0))).sum() * 1000).backward()
    optimizer.step()
    total = torch.sqrt(sum(p.grad.pow(2).sum() for p in net.parameters()))
    assert total.item() == pytest.approx(0.5, rel=1e-4)


def _checkpointer_with_one_save(tmp_path):
    """An AtomicCheckpointer that has written model_0000000.pth, and that file's bytes."""
    checkpointer = AtomicCheckpointer(torch.nn.Linear(2, 2), save_dir=str(tmp_path))
    checkpointer.save("model_0000000")
    return checkpointer, (tmp_path / "model_0000000.pth").read_bytes()


def _assert_only_first_checkpoint(tmp_path, good):
    """No temp file left; the tag and the file still name and hold the first save."""
    assert not glob.glob(str(tmp_path / "*.tmp"))
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"
    assert (tmp_path / "model_0000000.pth").read_bytes() == good


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    checkpointer, good = _checkpointer_with_one_save(tmp_path)

    def dies_midway(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_0000001")
    assert not (tmp_path / "model_0000001.pth").exists()
    _assert_only_first_checkpoint(tmp_path, good)


def test_full_disk_while_saving_names_the_file_and_keeps_earlier_checkpoints(tmp_path, monkeypatch):
    checkpointer, good = _checkpointer_with_one_save(tmp_path)

    def disk_fills_up(obj, f, *args, **kwargs):
        # What torch.save does on ENOSPC: the OSError surfaces as the context of a
        # RuntimeError raised while closing the zip archive.
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos")

    monkeypatch.setattr(torch, "save", disk_fills_up)
    with pytest.raises(CheckpointWriteError) as info:
        checkpointer.save("model_0000001")
    message = str(info.value)
    assert str(tmp_path / "model_0000001.pth") in message
    assert "No space left on device" in message
    assert "MiB free" in message and "--resume" in message
    assert not (tmp_path / "model_0000001.pth").exists()
    _assert_only_first_checkpoint(tmp_path, good)


def test_truncated_checkpoint_gives_clear_error(tmp_path):
    path = tmp_path / "model_broken.pth"
    torch.save({"model": torch.nn.Linear(2, 2).state_dict()}, path)
    path.write_bytes(path.read_bytes()[:40])
    checkpointer = AtomicCheckpointer(torch.nn.Linear(2, 2), save_dir=str(tmp_path))
    with pytest.raises(CheckpointReadError, match="model_broken.pth"):
        checkpointer.load(str(path))


def _train_net(args, env, **kwargs):
    return subprocess.Popen(
        [sys.executable, os.path.join(REPO_ROOT, "train_net.py"), *args],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, **kwargs,
    )


def test_sigkill_then_resume_continues_iteration_and_schedule(tmp_path):
    MAX_ITER = 8
    out = tmp_path / "run"
    env = dict(os.environ)
    # Three checkpoints (iterations 2, 5 and final) of ~140 MB each, weights plus moments.
    opts = tiny_rcnn_opts(out, max_iter=MAX_ITER, **{"SOLVER.CHECKPOINT_PERIOD": 3})
    args = ["--config-file", DEMO_MASK_RCNN, *opts]

    proc = _train_net(args, env)
    first = out / "model_0000002.pth"
    deadline = time.time() + 240
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert first.exists(), proc.communicate()[0][-3000:] if proc.poll() is not None else "timeout"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model_final.pth").exists(), "run finished before it could be killed"
    killed_at = (out / "last_checkpoint").read_text()

    resumed = _train_net(["--resume", *args], env)
    log, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, log[-3000:]
    resumed_from = int(killed_at[len("model_"):-len(".pth")]) + 1
    assert f"Starting training from iteration {resumed_from}" in log

    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["iteration"] == MAX_ITER - 1
    # The learning rate follows the same schedule as an uninterrupted run.
    cfg = build_config(DEMO_MASK_RCNN, opts, prepare_data=False)
    reference = torch.nn.Linear(1, 1)
    optimizer = build_optimizer(cfg, reference)
    scheduler = build_lr_scheduler(cfg, optimizer)
    for _ in range(MAX_ITER):
        optimizer.step()
        scheduler.step()
    assert final["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == MAX_ITER
    optimizer_state = final["trainer"]["_trainer"]["optimizer"]
    assert optimizer_state["state"], "AdamW moments must be checkpointed"
    saved_lr = optimizer_state["param_groups"][0]["lr"]
    assert saved_lr == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-9)


def test_train_net_without_data_fails_with_one_paragraph(tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "nothing_here"))
    proc = _train_net(["--config-file", os.path.join(REPO_ROOT, "configs/revvity25/mask_rcnn_R50.yaml")],
                      env)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in output
    assert "revvity25" in output
    assert str(tmp_path / "nothing_here") in output


def test_train_net_eval_only_with_truncated_weights_ends_with_the_file_name(tmp_path):
    weights = tmp_path / "model_final.pth"
    torch.save({"model": torch.nn.Linear(2, 2).state_dict()}, weights)
    weights.write_bytes(weights.read_bytes()[:40])
    args = ["--config-file", DEMO_MASK_RCNN, "--eval-only",
            *tiny_rcnn_opts(tmp_path / "out"), "MODEL.WEIGHTS", str(weights)]
    proc = _train_net(args, dict(os.environ))
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, output[-3000:]
    last_line = output.strip().splitlines()[-1]
    assert last_line.startswith("error: Cannot read checkpoint") and str(weights) in last_line


@pytest.mark.parametrize("config_file, key", [
    (DEMO_MASK_RCNN, "MODEL.ROI_HEADS.SCORE_THRESH_TEST"),
    (os.path.join(REPO_ROOT, "configs", "demo", "iaunet_R50.yaml"), "MODEL.IAUNET.TEST.SCORE_THRESH"),
])
def test_evaluation_that_found_nothing_says_so(tmp_path, caplog, config_file, key):
    cfg = build_config(config_file, ["OUTPUT_DIR", str(tmp_path)])
    inputs, outputs = _val_ground_truth()
    for out in outputs:
        out["instances"] = out["instances"][:0]
    with caplog.at_level("WARNING", logger="iaunet_d2.evaluation"):
        _evaluate(cfg, inputs, outputs)
    messages = [r.getMessage() for r in caplog.records if r.name == "iaunet_d2.evaluation"]
    assert len(messages) == 1
    assert messages[0].startswith(f"0 instances above {key} = ")
    assert "16 images of cells_demo_val" in messages[0]
    # A model that found something gets no such warning.
    caplog.clear()
    inputs, outputs = _val_ground_truth()
    with caplog.at_level("WARNING", logger="iaunet_d2.evaluation"):
        _evaluate(cfg, inputs, outputs)
    assert not [r for r in caplog.records if r.name == "iaunet_d2.evaluation"]
