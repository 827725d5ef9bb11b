"""What users get wrong: weights of another model, typos in configs and overrides,
unusable output folders, a full disk, tiny images, stacks, mixed channels, and shell
expansion of --input. Each case checks the message, the exit status and the files
left behind."""
import csv
import errno
import json
import os
import pickle
import re
import shlex
import subprocess
import sys
import tempfile

import cv2
import numpy as np
import pytest
import tifffile
import torch
from detectron2.modeling import build_model

import iaunet_d2  # noqa: F401
from iaunet_d2 import predict
from iaunet_d2.apps import train as train_net
from iaunet_d2.inference import predictor as predictor_module
from iaunet_d2.io import writers

from train_utils import DEMO_MASK_RCNN, REPO_ROOT, save_random_model, tiny_rcnn_opts

IAUNET_CFG = "configs/demo/iaunet_R18_small.yaml"
SMALL = ["INPUT.IMAGE_SIZE", "128", "MODEL.IAUNET.NUM_QUERIES", "10", "MODEL.IAUNET.TEST.SCORE_THRESH", "0.0"]
OUTPUTS = ("_cells.csv", "_labels.tif", "_overlay.png")


@pytest.fixture(autouse=True)
def _repo_cwd(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)  # configs are given relative to the repository




@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """One tiny IAUNet, one tiny Mask R-CNN (as a user's model_final.pth) and a text
    file given by mistake, built once for the module."""
    folder = tmp_path_factory.mktemp("weights")
    cwd = os.getcwd()
    os.chdir(REPO_ROOT)
    try:
        iaunet = save_random_model(folder / "iaunet.pth", IAUNET_CFG, SMALL)
        rcnn = save_random_model(folder / "rcnn_final.pth", DEMO_MASK_RCNN, tiny_rcnn_opts(folder / "unused"))
    finally:
        os.chdir(cwd)
    # What lies next to checkpoints and gets picked by a slip of the tab key: the tag
    # file of an output folder, and notes.
    last_checkpoint = folder / "last_checkpoint.pth"
    last_checkpoint.write_text("model_final.pth")
    notes = folder / "notes.pth"
    notes.write_text("hyperparameters: lr 1e-4, 20k iterations\n")
    return {"iaunet": iaunet, "rcnn": rcnn, "last_checkpoint": str(last_checkpoint), "notes": str(notes)}


def _predict(weights_path, inputs, output, *extra, config=IAUNET_CFG, opts=SMALL):
    inputs = [str(p) for p in (inputs if isinstance(inputs, (list, tuple)) else [inputs])]
    return predict.main(["--config-file", config, "--weights", weights_path, "--input", *inputs,
                         "--output", str(output), *extra, *opts])


def _image(path, shape, seed=0):
    """A random 8-bit image (gray (H, W) or colour (H, W, 3)) written as PNG or TIFF."""
    array = np.random.default_rng(seed).integers(0, 255, shape).astype(np.uint8)
    if str(path).endswith((".tif", ".tiff")):
        tifffile.imwrite(path, array)
    else:
        assert cv2.imwrite(str(path), array)
    return array


def _without_logging_errors(text):
    """``text`` without the "--- Logging error ---" reports of handlers that earlier
    tests left on closed capture streams (not output of the code under test)."""
    return re.sub(r"--- Logging error ---\n.*?\nArguments: [^\n]*\n", "", text, flags=re.S)


def _error_lines(text):
    return [line for line in text.splitlines() if line.startswith("error:")]


def _outputs_of(folder):
    return sorted(os.listdir(folder))


def _expected_outputs(*names):
    return sorted(["coco_results.json"] + [n + s for n in names for s in OUTPUTS])


def _summary_line(err):
    (line,) = [line for line in err.splitlines() if " image(s) predicted, " in line]
    return line


def _coco(folder):
    with open(os.path.join(folder, "coco_results.json")) as f:
        return json.load(f)


def _no_temp_files(folder):
    return [n for n in os.listdir(folder) if n.endswith(".tmp")] == []


def _subprocess(args, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=dict(os.environ), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)


# ------------------------------------------------------------------ weights of another model
def test_eval_only_with_mask_rcnn_weights_on_iaunet_config(weights, tmp_path):
    out = tmp_path / "eval"
    proc = _subprocess(["train_net.py", "--config-file", IAUNET_CFG, "--eval-only",
                        "MODEL.WEIGHTS", weights["rcnn"], "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(out)])
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: Weights '{weights['rcnn']}' do not match the IAUNet model"), last
    assert "Use the config the weights were trained with" in last
    assert "Traceback" not in proc.stderr
    assert "version" not in "".join(l for l in proc.stderr.splitlines() if "WARN" in l).lower()
    # The run stopped before evaluating: no inference folder, no results, no metrics.
    assert not (out / "inference").exists()
    assert set(os.listdir(out)) <= {"config.yaml", "log.txt"}


def test_predict_with_mask_rcnn_weights_uses_the_same_check(weights, tmp_path):
    _image(tmp_path / "a.png", (40, 40))
    out = tmp_path / "out"
    proc = _subprocess(["-m", "iaunet_d2.predict", "--config-file", IAUNET_CFG, "--weights", weights["rcnn"],
                        "--input", str(tmp_path / "a.png"), "--output", str(out), *SMALL])
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = _error_lines(proc.stderr)
    assert line.startswith(f"error: Weights '{weights['rcnn']}' do not match the IAUNet model")
    assert "Use the config the weights were trained with" in line
    assert "Traceback" not in proc.stderr
    assert _outputs_of(out) == []  # checked writable, nothing written


# ------------------------------------------------------------------- train_net.py set-up errors
def test_train_net_config_file_typo(tmp_path):
    out = tmp_path / "run"
    typo = "configs/demo/iaunet_R18_smal.yaml"
    proc = _subprocess(["train_net.py", "--config-file", typo, "OUTPUT_DIR", str(out)], timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: Config file '{typo}' not found."]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not out.exists()


@pytest.mark.parametrize("opts, expected", [
    (["MODEL.NOPE", "1"], "Non-existent key: MODEL.NOPE"),
    (["SOLVER.MAX_ITER", "abc"], "for config key: SOLVER.MAX_ITER"),
    (["SOLVER.MAX_ITER"], "odd length"),
    (["DATASETS.TEST", "('cells_nope_val',)"], "Dataset 'cells_nope_val' is not registered"),
    (["MODEL.IAUNET.MASK_HEAD", "linear"], "MODEL.IAUNET.MASK_HEAD was moved to MODEL.IAUNET.PLUS"),
    (["MODEL.IAUNET.PLUS.ENABLED", "True", "MODEL.IAUNET.PLUS.DYNAMIC_MASK_UPSAMPLE", "0"],
     "upsampling must be >= 1, got 0"),
    (["MODEL.IAUNET.PLUS.ANCHOR_POINTS", "False"], "but MODEL.IAUNET.PLUS.ENABLED is False"),
    (["MODEL.IAUNET.PIXEL_DECODER_NAME", "Nope"], "No object named 'Nope'"),
], ids=["unknown_key", "bad_value", "key_without_value", "unknown_dataset", "removed_key",
        "bad_mask_upsampling", "plus_key_without_plus", "unknown_component"])
def test_train_net_bad_override_is_one_line_naming_the_key(opts, expected, tmp_path, capsys):
    out = tmp_path / "run"
    status = train_net.cli(["--config-file", IAUNET_CFG, "OUTPUT_DIR", str(out), *opts])
    err = capsys.readouterr().err
    assert status == 2
    (line,) = _error_lines(err)
    assert expected in line
    assert "Traceback" not in _without_logging_errors(err)
    assert not out.exists()


def _config_only_a_string(folder):
    (folder / "foo.yaml").write_text("foo\n")
    return folder / "foo.yaml", "holds a str ('foo'), not a mapping of config keys (KEY: value lines)."


def _config_yaml_syntax_error(folder):
    (folder / "broken.yaml").write_text("_BASE_: ../Base-IAUNet.yaml\nMODEL:\n  WEIGHTS: [unclosed\n")
    return folder / "broken.yaml", "YAML syntax error at line 4, column 1:"


def _config_empty(folder):
    (folder / "empty.yaml").write_text("")
    return folder / "empty.yaml", "is empty: a config is a mapping of keys to values"


def _config_tiff(folder):
    tifffile.imwrite(folder / "cells.tif", np.zeros((8, 8), np.uint8))
    return folder / "cells.tif", "is not a YAML text file (it holds binary data)."


def _config_missing_base(folder):
    (folder / "child.yaml").write_text("_BASE_: Base-Nope.yaml\n")
    return folder / "child.yaml", f"its _BASE_ 'Base-Nope.yaml' not found ({folder / 'Base-Nope.yaml'})."


@pytest.mark.parametrize("make_config", [_config_only_a_string, _config_yaml_syntax_error, _config_empty,
                                         _config_tiff, _config_missing_base],
                         ids=["string", "yaml_syntax", "empty", "tiff", "missing_base"])
def test_train_net_unusable_config_file_is_one_line(make_config, tmp_path, capsys):
    config, expected = make_config(tmp_path)
    out = tmp_path / "run"
    status = train_net.cli(["--config-file", str(config), "OUTPUT_DIR", str(out)])
    err = capsys.readouterr().err
    assert status == 2
    (line,) = _error_lines(err)
    assert line.startswith(f"error: Config file '{config}'"), line
    assert expected in line, line
    assert "Traceback" not in _without_logging_errors(err)
    assert not out.exists()


@pytest.mark.parametrize("argv, expected", [
    ([], "error: --config-file is required, e.g. python train_net.py --config-file "
         "configs/demo/iaunet_R50.yaml"),
    (["--config-file", IAUNET_CFG, "OUTPUT_DIR", "x", "--resume"],
     "error: options go before the KEY VALUE overrides: write --resume before OUTPUT_DIR "
     "(got 'OUTPUT_DIR x --resume')."),
], ids=["no_config_file", "flag_after_overrides"])
def test_train_net_command_line_mistakes(argv, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written, not even OUTPUT_DIR 'x'
    status = train_net.cli(argv)
    err = capsys.readouterr().err
    assert status == 2
    assert _error_lines(err) == [expected]
    assert os.listdir(tmp_path) == []


def test_train_dir_without_val_dir_is_not_evaluated_on_the_config_test_set(tmp_path):
    args = train_net.parse_args(["--config-file", IAUNET_CFG, "--train-dir", str(tmp_path)])
    assert args.cleared_test
    assert args.opts == ["DATASETS.TRAIN_DIR", str(tmp_path), "DATASETS.TEST", "()"]
    # A test set the user names is kept.
    for given in (["--val-dir", str(tmp_path)], ["DATASETS.TEST", "('cells_demo_val',)"]):
        args = train_net.parse_args(["--config-file", IAUNET_CFG, "--train-dir", str(tmp_path), *given])
        assert not args.cleared_test and "()" not in args.opts


@pytest.mark.parametrize("eval_only", [True, False], ids=["eval_only", "train"])
def test_train_net_missing_weights_file(eval_only, tmp_path, capsys):
    out, missing = tmp_path / "run", str(tmp_path / "model_fnial.pth")
    status = train_net.cli(["--config-file", IAUNET_CFG, *(["--eval-only"] if eval_only else []),
                            "MODEL.WEIGHTS", missing, "OUTPUT_DIR", str(out)])
    err = capsys.readouterr().err
    assert status == 2
    assert _error_lines(err) == [f"error: MODEL.WEIGHTS '{missing}' not found."]
    assert not out.exists()


# ------------------------------------------------------------------------ text file as weights
def _assert_unreadable_checkpoint(line, path):
    assert line.startswith(f"error: Cannot read checkpoint {path}"), line
    assert "not a PyTorch/Detectron2 checkpoint" in line
    assert "text file" in line
    assert "KeyError" not in line and "weights_only" not in line


def test_eval_only_with_a_text_file_as_weights(weights, tmp_path):
    out = tmp_path / "eval"
    proc = _subprocess(["train_net.py", "--config-file", IAUNET_CFG, "--eval-only",
                        "MODEL.WEIGHTS", weights["last_checkpoint"], "MODEL.DEVICE", "cpu",
                        "OUTPUT_DIR", str(out)])
    assert proc.returncode == 2, proc.stderr[-3000:]
    _assert_unreadable_checkpoint(proc.stderr.strip().splitlines()[-1], weights["last_checkpoint"])
    assert "KeyError" not in proc.stderr and "Traceback" not in proc.stderr
    assert not (out / "inference").exists()


@pytest.mark.parametrize("which", ["last_checkpoint", "notes"])
def test_predict_with_a_text_file_as_weights(which, weights, tmp_path, capsys):
    _image(tmp_path / "a.png", (40, 40))
    status = _predict(weights[which], tmp_path / "a.png", tmp_path / "out")
    err = capsys.readouterr().err
    assert status == 2
    (line,) = _error_lines(err)
    _assert_unreadable_checkpoint(line, weights[which])
    assert "KeyError" not in err
    assert _outputs_of(tmp_path / "out") == []


# ------------------------------------------------------------- training stopped midway
def _train_until(monkeypatch, stop_at, stop):
    """Make the trainer's step ``stop_at`` call ``stop()`` instead of training."""
    from detectron2.engine.train_loop import SimpleTrainer

    original = SimpleTrainer.run_step

    def run_step(self):
        if self.iter == stop_at:
            stop()
        original(self)

    monkeypatch.setattr(SimpleTrainer, "run_step", run_step)


def _ctrl_c():
    raise KeyboardInterrupt


def test_ctrl_c_during_training_is_one_line_with_the_resume_command(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    opts = tiny_rcnn_opts(out, max_iter=6, **{"SOLVER.CHECKPOINT_PERIOD": 2})
    _train_until(monkeypatch, 3, _ctrl_c)
    status = train_net.cli(["--config-file", DEMO_MASK_RCNN, *opts])
    captured = capsys.readouterr()
    assert status == 130
    assert captured.err.strip().splitlines()[-1] == (
        f"interrupted: Stopped at iteration 3; last checkpoint kept: {out / 'model_0000001.pth'}. "
        f"Continue with: python train_net.py --config-file {DEMO_MASK_RCNN} --resume {shlex.join(opts)}")
    assert "Traceback" not in _without_logging_errors(captured.out + captured.err)
    assert sorted(f for f in os.listdir(out) if f.endswith(".pth")) == ["model_0000001.pth"]


def test_full_disk_during_training_is_one_line_and_the_traceback_goes_to_the_log(tmp_path, capsys,
                                                                                 monkeypatch):
    out = tmp_path / "run"
    opts = tiny_rcnn_opts(out, max_iter=6, **{"SOLVER.CHECKPOINT_PERIOD": 2})

    def disk_full():
        def no_space(obj, f, *args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(torch, "save", no_space)

    _train_until(monkeypatch, 2, disk_full)  # the checkpoint after iteration 3 fails
    status = train_net.cli(["--config-file", DEMO_MASK_RCNN, *opts])
    captured = capsys.readouterr()
    assert status == 1
    line = captured.err.strip().splitlines()[-1]
    assert line.startswith(f"error: Cannot write checkpoint {out / 'model_0000003.pth'}: OSError: "
                           "[Errno 28] No space left on device."), line
    assert line.endswith(
        f"Stopped at iteration 3; last checkpoint kept: {out / 'model_0000001.pth'}. "
        f"Continue with: python train_net.py --config-file {DEMO_MASK_RCNN} --resume {shlex.join(opts)}")
    assert "Traceback" not in _without_logging_errors(captured.out + captured.err)
    log = (out / "log.txt").read_text()
    assert "Exception during training" in log and "Traceback" in log
    assert sorted(f for f in os.listdir(out) if f.endswith(".pth")) == ["model_0000001.pth"]


def test_ctrl_c_during_prediction_keeps_the_finished_images(weights, tmp_path, capsys, monkeypatch):
    from iaunet_d2.inference import CellPredictor

    paths = [tmp_path / f"im{k}.png" for k in range(3)]
    for k, path in enumerate(paths):
        _image(path, (40, 40), seed=k)
    original, calls = CellPredictor.__call__, []

    def ctrl_c_on_the_second_image(self, image, on_tiles=None):
        calls.append(image.shape)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, image, on_tiles)

    monkeypatch.setattr(CellPredictor, "__call__", ctrl_c_on_the_second_image)
    out = tmp_path / "out"
    status = _predict(weights["iaunet"], paths, out)
    err = capsys.readouterr().err
    assert status == 130
    assert err.strip().splitlines()[-1] == (
        f"interrupted: 1 of 3 image(s) finished and kept in {out} (listed in coco_results.json); "
        f"stopped at '{paths[1]}', whose outputs were not written.")
    assert "Traceback" not in _without_logging_errors(err)
    assert _outputs_of(out) == _expected_outputs("im0")
    assert [im["output_name"] for im in _coco(out)["images"]] == ["im0"]


# --------------------------------------------------------- NaN pixels, EXIF orientation
def test_nan_pixels_warn_once_per_image_with_their_count(tmp_path, caplog):
    from iaunet_d2.io.images import read_image

    data = np.linspace(0, 1, 20 * 30, dtype=np.float32).reshape(20, 30)
    data[0, :5] = np.nan
    data[1, 0] = np.inf
    path = str(tmp_path / "nan.tif")
    tifffile.imwrite(path, data)
    with caplog.at_level("WARNING", logger="iaunet_d2.io.images"):
        image = read_image(path)
        read_image(path)
    assert [r.getMessage() for r in caplog.records] == [
        f"'{path}': 6 NaN/infinite pixel value(s) became 0 (black)."]
    assert (image[0, :5] == 0).all() and image[1, 0].tolist() == [0, 0, 0]


def _png_with_orientation(path, array, orientation):
    from PIL import Image

    im = Image.fromarray(array)
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, exif=exif)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_viewers_apply_it(orientation, tmp_path):
    from PIL import Image, ImageOps

    from iaunet_d2.io.images import read_image
    from iaunet_d2.io.labels import read_label_image

    rng = np.random.default_rng(orientation)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    _png_with_orientation(tmp_path / "cells.png", rgb, orientation)
    with Image.open(tmp_path / "cells.png") as im:
        shown = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))  # the reference
    assert np.array_equal(read_image(str(tmp_path / "cells.png"), format="RGB"), shown)

    labels = np.zeros((20, 30), np.uint8)
    labels[2:5, 3:9] = 1
    _png_with_orientation(tmp_path / "cells_masks.png", labels, orientation)
    with Image.open(tmp_path / "cells_masks.png") as im:
        shown_labels = np.asarray(ImageOps.exif_transpose(im))
    assert np.array_equal(read_label_image(str(tmp_path / "cells_masks.png")), shown_labels)


# -------------------------------------------------------------- --output used twice
def test_predict_twice_into_one_folder_needs_overwrite(weights, tmp_path, capsys):
    out = tmp_path / "out"
    _image(tmp_path / "first.png", (40, 40))
    _image(tmp_path / "second.png", (48, 40), seed=1)
    assert _predict(weights["iaunet"], tmp_path / "first.png", out) == 0
    (out / "notes.txt").write_text("mine")
    before = {f: (out / f).read_bytes() for f in os.listdir(out)}
    capsys.readouterr()

    status = _predict(weights["iaunet"], tmp_path / "second.png", out)
    err = capsys.readouterr().err
    assert status == 2
    assert _error_lines(err) == [
        f"error: --output '{out}' already holds predictions (4 file(s), e.g. 'coco_results.json'); "
        "pass --overwrite to replace them, or give another folder."]
    assert {f: (out / f).read_bytes() for f in os.listdir(out)} == before

    assert _predict(weights["iaunet"], tmp_path / "second.png", out, "--overwrite") == 0
    assert "removed 4 prediction file(s) of an earlier run" in capsys.readouterr().err
    assert _outputs_of(out) == sorted(["notes.txt", *_expected_outputs("second")])
    assert [im["output_name"] for im in _coco(out)["images"]] == ["second"]


# ----------------------------------------------------------- weights files as untrusted input
_OPEN = f"{open.__module__}.open"  # how a pickle names the builtin open ("io.open")


class _CreatesFileWhenUnpickled:
    """What a crafted weights file holds: unpickling it calls open(path, "w")."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _crafted_weights(tmp_path, suffix):
    victim = tmp_path / "created_by_the_weights_file"
    path = tmp_path / f"crafted{suffix}"
    payload = {"model": {"backbone.weight": _CreatesFileWhenUnpickled(victim)}, "__author__": "x"}
    if suffix == ".pth":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=4)
    return str(path), victim


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_predict_refuses_a_crafted_weights_file_before_it_runs_code(suffix, tmp_path, capsys):
    crafted, victim = _crafted_weights(tmp_path, suffix)
    _image(tmp_path / "a.png", (40, 40))
    status = _predict(crafted, tmp_path / "a.png", tmp_path / "out")
    err = capsys.readouterr().err
    assert status == 2
    (line,) = _error_lines(err)
    assert line == (f"error: Refusing weights file '{crafted}': it asks to build {_OPEN}, "
                    "which is not weights data (a weights file holds only tensors, arrays, "
                    "numbers and strings).")
    assert not victim.exists()
    assert _outputs_of(tmp_path / "out") == []


def test_eval_only_refuses_a_crafted_pkl(tmp_path, capsys):
    crafted, victim = _crafted_weights(tmp_path, ".pkl")
    status = train_net.cli(["--config-file", IAUNET_CFG, "--eval-only", "MODEL.WEIGHTS", crafted,
                            "OUTPUT_DIR", str(tmp_path / "run"), *SMALL])
    err = capsys.readouterr().err
    assert status == 2
    assert err.strip().splitlines()[-1].startswith(f"error: Refusing weights file '{crafted}'")
    assert "Traceback" not in _without_logging_errors(err)
    assert not victim.exists()


def test_swin_weights_refuse_a_crafted_pkl(tmp_path):
    from iaunet_d2.modeling.backbone.swin import _read_checkpoint

    crafted, victim = _crafted_weights(tmp_path, ".pkl")
    with pytest.raises(RuntimeError, match=rf"^MODEL.SWIN.WEIGHTS: Refusing weights file .*{_OPEN}"):
        _read_checkpoint(crafted)
    assert not victim.exists()


def _numpy1_pickle(obj):
    """A protocol-2 pickle as Python 2 / NumPy 1 wrote Detectron2's and ImageNet .pkl
    files (numpy.core module names)."""
    data = pickle.dumps(obj, protocol=2)
    return data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def test_pkl_weights_of_detectron2_layouts_keep_loading(weights, tmp_path):
    """Detectron2's model-zoo layout (``model`` + ``__author__``) and the Caffe2 / ImageNet
    layout (``blobs`` in Caffe2 names, momentum buffers dropped) of R-50.pkl."""
    from iaunet_d2.config import build_config
    from iaunet_d2.engine import AtomicCheckpointer

    cfg = build_config(DEMO_MASK_RCNN, tiny_rcnn_opts(tmp_path / "unused"), prepare_data=False)
    saved = torch.load(weights["rcnn"], weights_only=True)["model"]
    zoo = tmp_path / "model_zoo.pkl"
    zoo.write_bytes(_numpy1_pickle({"model": {k: v.numpy() for k, v in saved.items()},
                                    "__author__": "Detectron2 Model Zoo"}))
    torch.manual_seed(1)  # another random model: loading must replace every parameter
    model = build_model(cfg)
    AtomicCheckpointer(model).load_weights(str(zoo), strict=True)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)

    stem = "backbone.bottom_up.stem.conv1"
    rng = np.random.default_rng(0)
    blobs = {"conv1_w": rng.standard_normal(tuple(loaded[stem + ".weight"].shape)).astype(np.float32),
             "res_conv1_bn_s": rng.standard_normal(64).astype(np.float32),
             "res_conv1_bn_b": rng.standard_normal(64).astype(np.float32),
             "conv1_w_momentum": np.zeros(3, np.float32)}
    imagenet = tmp_path / "R-18.pkl"
    imagenet.write_bytes(_numpy1_pickle({"blobs": blobs}))
    AtomicCheckpointer(model).load_weights(str(imagenet), strict=False)
    loaded = model.state_dict()
    assert np.array_equal(loaded[stem + ".weight"].numpy(), blobs["conv1_w"])
    assert np.array_equal(loaded[stem + ".norm.weight"].numpy(), blobs["res_conv1_bn_s"])
    assert np.array_equal(loaded[stem + ".norm.bias"].numpy(), blobs["res_conv1_bn_b"])


# ------------------------------------------------------------------------ unusable --output
@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the prediction CLI gets as far as building the model."""
    def refuse(cfg):
        raise AssertionError("the model was loaded although the run cannot write its outputs")

    # The predictor builds its model here, whichever entry point (CLI, CellPredictor,
    # load_predictor) asks for it.
    monkeypatch.setattr(predictor_module, "build_model", refuse)


def _output_is_a_file(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("keep me")
    return path, "is a file"


def _output_under_a_file(tmp_path):
    (tmp_path / "results.csv").write_text("keep me")
    return tmp_path / "results.csv" / "out", "lies under the file"


def _output_read_only(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can write into a read-only folder")
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o500)
    return folder, "cannot be written"


def _output_in_proc(tmp_path):
    if not os.path.isdir("/proc/self"):
        pytest.skip("no /proc file system")
    return "/proc/iaunet_d2_predictions", "cannot be created"


@pytest.mark.parametrize("make_output", [_output_is_a_file, _output_under_a_file, _output_read_only,
                                         _output_in_proc],
                         ids=["file", "under_a_file", "read_only_folder", "under_proc"])
def test_predict_bad_output_fails_before_the_model_loads(make_output, weights, tmp_path, no_model, capsys):
    _image(tmp_path / "a.png", (40, 40))
    output, says = make_output(tmp_path)
    before = sorted(os.listdir(tmp_path))
    try:
        status = _predict(weights["iaunet"], tmp_path / "a.png", output)
    finally:
        if os.path.isdir(tmp_path / "readonly"):
            (tmp_path / "readonly").chmod(0o700)
    err = capsys.readouterr().err
    assert status == 2
    (line,) = _error_lines(err)
    assert line.startswith(f"error: --output '{output}' {says}"), line
    assert sorted(os.listdir(tmp_path)) == before
    if (tmp_path / "results.csv").exists():
        assert (tmp_path / "results.csv").read_text() == "keep me"
    if os.path.isdir(tmp_path / "readonly"):
        assert os.listdir(tmp_path / "readonly") == []


# --------------------------------------------------------------------- a full disk midway
def _enospc(path):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


def _fail_rename(monkeypatch, target):
    """The 2nd file's rename fails: the 1st file of the set is already in place."""
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if os.path.basename(dst) == target:
            raise _enospc(dst)
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(writers.os, "replace", replace)


def _fail_temp_file(monkeypatch, target):
    """The 2nd file's temporary file cannot be created: the 1st one is written."""
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        if kwargs.get("prefix", "").startswith(target + "."):
            raise _enospc(os.path.join(kwargs.get("dir", ""), kwargs["prefix"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(writers.tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize("fail", [_fail_rename, _fail_temp_file], ids=["rename", "temp_file"])
def test_disk_full_while_writing_one_image_leaves_none_of_its_files(fail, weights, tmp_path, monkeypatch,
                                                                   capsys):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for k, name in enumerate(("a", "b", "c")):
        _image(folder / f"{name}.png", (48, 56), seed=k)
    # The files of a set are written in order labels, overlay, table: fail the overlay of b.
    fail(monkeypatch, "b_overlay.png")
    status = _predict(weights["iaunet"], folder, out)
    err = capsys.readouterr().err
    assert status == 1
    assert _outputs_of(out) == _expected_outputs("a", "c")
    assert _no_temp_files(out)
    coco = _coco(out)
    assert sorted(im["output_name"] for im in coco["images"]) == ["a", "c"]
    assert {a["image_id"] for a in coco["annotations"]} <= {im["id"] for im in coco["images"]}
    for im in coco["images"]:  # every image in the json has all of its files
        assert all((out / (im["output_name"] + s)).is_file() for s in OUTPUTS)
    (failure,) = [line for line in err.splitlines() if line.startswith("  ") and "b.png" in line]
    assert str(out / "b_overlay.png") in failure
    assert "No space left on device" in failure and "MiB free" in failure
    assert "2 of 3 image(s) predicted" in _summary_line(err)
    assert "0 skipped, 1 failed" in _summary_line(err)


# ----------------------------------------------------------------------------- odd images
def test_tiny_images_are_skipped(weights, tmp_path, capsys):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    _image(folder / "one_px.png", (1, 1))
    _image(folder / "five_px.tif", (5, 5))
    _image(folder / "thin.png", (15, 60))
    _image(folder / "smallest.png", (16, 60))
    _image(folder / "good.png", (40, 48, 3))
    status = _predict(weights["iaunet"], folder, out)
    err = capsys.readouterr().err
    assert status == 1
    assert _outputs_of(out) == _expected_outputs("good", "smallest")
    for name, size in (("one_px.png", "1x1"), ("five_px.tif", "5x5"), ("thin.png", "60x15")):
        (line,) = [line for line in err.splitlines() if line.startswith(f"  {folder / name}: ")]
        assert f"image is {size} px" in line and "minimum is 16 px" in line
    assert "2 of 5 image(s) predicted" in _summary_line(err)
    assert "3 skipped, 0 failed" in _summary_line(err)
    assert tifffile.imread(out / "smallest_labels.tif").shape == (16, 60)


def test_time_lapse_needs_plane(weights, tmp_path, capsys):
    frames = np.random.default_rng(4).integers(0, 4000, (20, 40, 48)).astype(np.uint16)
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "movie.tif", frames)
    status = _predict(weights["iaunet"], folder / "movie.tif", tmp_path / "o1")
    err = capsys.readouterr().err
    assert status == 1
    (line,) = [line for line in err.splitlines() if line.startswith(f"  {folder / 'movie.tif'}: ")]
    assert "20 planes" in line and "--plane" in line
    assert _outputs_of(tmp_path / "o1") == ["coco_results.json"]
    assert _coco(tmp_path / "o1")["images"] == []

    # With --plane, the stack gives the prediction of that frame saved on its own.
    tifffile.imwrite(folder / "frame3.tif", frames[3])
    status = _predict(weights["iaunet"], folder, tmp_path / "o2", "--plane", "3")
    assert status == 0, capsys.readouterr().err
    labels = tifffile.imread(tmp_path / "o2" / "movie_labels.tif")
    assert labels.shape == (40, 48) and labels.dtype == np.uint16
    assert np.array_equal(labels, tifffile.imread(tmp_path / "o2" / "frame3_labels.tif"))


def test_channel_on_a_folder_mixing_gray_and_colour(weights, tmp_path, capsys):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    rgb = np.random.default_rng(5).integers(0, 255, (44, 52, 3)).astype(np.uint8)
    assert cv2.imwrite(str(folder / "colour.png"), rgb[..., ::-1])  # OpenCV writes BGR
    tifffile.imwrite(folder / "colour.tif", rgb)
    assert cv2.imwrite(str(folder / "green.png"), rgb[..., 1])  # channel 1 as a gray image
    tifffile.imwrite(folder / "gray16.tif", np.random.default_rng(6).integers(0, 4000, (44, 52)).astype(np.uint16))
    status = _predict(weights["iaunet"], folder, out, "--channel", "1")
    err = capsys.readouterr().err
    assert status == 0, err
    names = ("colour_png", "colour_tif", "green", "gray16")
    assert _outputs_of(out) == _expected_outputs(*names)
    assert "4 of 4 image(s) predicted" in _summary_line(err)
    # --channel 1 picks green (RGB order) in PNG and TIFF alike and uses it as gray.
    green = tifffile.imread(out / "green_labels.tif")
    for name in ("colour_png", "colour_tif"):
        assert np.array_equal(tifffile.imread(out / f"{name}_labels.tif"), green)


# ---------------------------------------------------------------------- the command line
def test_several_input_values_as_from_an_unquoted_glob(weights, tmp_path, capsys):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    _image(folder / "a.png", (40, 40), seed=1)
    _image(folder / "b.tif", (40, 40), seed=2)
    _image(folder / "c.png", (40, 40, 3), seed=3)
    # `--input in/*` expanded by the shell, plus one file named twice
    inputs = [folder / "a.png", folder / "b.tif", folder / "c.png", folder / "a.png"]
    status = _predict(weights["iaunet"], inputs, out)
    err = capsys.readouterr().err
    assert status == 0, err
    assert _outputs_of(out) == _expected_outputs("a", "b", "c")
    assert "3 of 3 image(s) predicted" in _summary_line(err)
    assert len(_coco(out)["images"]) == 3


def test_config_key_among_the_inputs_gets_a_hint(weights, tmp_path, no_model, capsys):
    _image(tmp_path / "a.tif", (40, 40))
    out = tmp_path / "out"
    # argparse gives --input everything up to the next option: a.tif MODEL.DEVICE cpu
    status = predict.main(["--config-file", IAUNET_CFG, "--weights", weights["iaunet"],
                           "--input", str(tmp_path / "a.tif"), "MODEL.DEVICE", "cpu", "--output", str(out)])
    err = capsys.readouterr().err
    assert status == 2
    (line,) = _error_lines(err)
    assert line.startswith("error: --input 'MODEL.DEVICE' names no image")
    assert "put KEY VALUE overrides last" in line
    assert not out.exists()


# ------------------------------------------------------------- unreadable files (still fine)
def test_unreadable_files_are_skipped_with_a_reason(weights, tmp_path, capsys):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    _image(folder / "good.png", (40, 48))
    data = cv2.imencode(".png", np.full((64, 64), 99, np.uint8))[1].tobytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "empty.tif").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image\n")
    status = _predict(weights["iaunet"], folder, out)
    err = capsys.readouterr().err
    assert status == 1
    for name in ("truncated.png", "empty.tif", "notes.jpg"):
        (line,) = [line for line in err.splitlines() if line.startswith(f"  {folder / name}: ")]
        assert len(line) > len(f"  {folder / name}: ") + 10  # a reason follows
    assert "1 of 4 image(s) predicted" in _summary_line(err)
    assert "3 skipped, 0 failed" in _summary_line(err)
    assert _outputs_of(out) == _expected_outputs("good")
    assert _no_temp_files(out)
    rows = list(csv.DictReader(open(out / "good_cells.csv")))
    assert len(rows) == len(_coco(out)["annotations"])
