"""tools/convergence.py (iaunet_d2.apps.convergence and convergence_report): fairness
checks, metrics parsing, tables and chart, a tiny run."""
import csv
import json
import os

import pytest

from train_utils import DEMO_MASK_RCNN, REPO_ROOT

DEMO_IAUNET_SMALL = os.path.join(REPO_ROOT, "configs", "demo", "iaunet_R18_small.yaml")


def _tool():
    from iaunet_d2.apps import convergence

    return convergence


def test_runs_with_different_batch_or_input_size_are_refused(tmp_path, capsys):
    tool = _tool()
    # The two demo configs differ in input size (192 vs 128) and batch (2 vs 4).
    with pytest.raises(SystemExit, match="runs differ in INPUT.IMAGE_SIZE"):
        tool.main(["--run", "mrcnn", DEMO_MASK_RCNN, "--run", "iaunet", DEMO_IAUNET_SMALL,
                   "--iters", "10", "--output", str(tmp_path / "c"), "--no-train"])
    with pytest.raises(SystemExit, match="runs differ in SOLVER.IMS_PER_BATCH"):
        tool.main(["--run", "mrcnn", DEMO_MASK_RCNN, "--run", "iaunet", DEMO_IAUNET_SMALL,
                   "--iters", "10", "--set", "INPUT.IMAGE_SIZE", "128",
                   "--output", str(tmp_path / "c"), "--no-train"])


@pytest.mark.parametrize("argv, message", [
    (["--run", "a"], "needs a label and a config file"),
    (["--run", "a", "missing.yaml"], "does not exist"),
    (["--run", "a", DEMO_IAUNET_SMALL, "MODEL.IAUNET.NUM_QUERIES"], "KEY VALUE pairs"),
    (["--run", "a", DEMO_IAUNET_SMALL, "--run", "a", DEMO_IAUNET_SMALL], "two runs are labelled"),
    (["--run", "a", DEMO_IAUNET_SMALL, "MODEL.IAUNET.NO_SUCH_KEY", "1"], "NO_SUCH_KEY"),
    (["--run", "a", DEMO_IAUNET_SMALL, "--allow-different", "MODEL.IAUNET.NUM_QUERIES"], "not among"),
])
def test_bad_arguments_end_in_one_line(tmp_path, argv, message):
    tool = _tool()
    with pytest.raises(SystemExit, match=message):
        tool.main(argv + ["--iters", "4", "--output", str(tmp_path / "c"), "--no-train"])


def test_read_curve_takes_evaluations_and_skips_a_cut_line(tmp_path):
    tool = _tool()
    path = tmp_path / "metrics.json"
    lines = [
        {"iteration": 19, "total_loss": 3.0},
        {"iteration": 49, "segm/AP": 10.0, "segm/AP50": 20.0, "segm/AP75": 5.0},
        {"iteration": 99, "total_loss": 2.0},
        {"iteration": 100, "segm/AP": 30.0, "segm/AP50": 60.0, "segm/AP75": 25.0},
    ]
    path.write_text("\n".join(json.dumps(r) for r in lines) + '\n{"iteration": 10')
    curve = tool.read_curve(str(path), max_iter=100)
    assert [p["iter"] for p in curve] == [50, 100]
    assert [p["AP"] for p in curve] == [10.0, 30.0]
    assert curve[1]["AP50"] == 60.0


def _result(label, seed, aps, seconds=10.0, commit="a" * 40, **settings):
    curve = [{"iter": 100 * (i + 1), "AP": ap, "AP50": 2 * ap, "AP75": ap / 2}
             for i, ap in enumerate(aps)]
    return {"label": label, "seed": seed, "seconds": seconds, "curve": curve, "final": curve[-1],
            "config": "c.yaml", "opts": [], "commit": commit,
            "settings": {"SOLVER.WEIGHT_DECAY": 0.05, **settings}}


def test_tables_and_chart_from_results(tmp_path):
    from iaunet_d2.apps import convergence_report as report

    data = {
        "command": "python tools/convergence.py ...", "setting": "demo", "seeds": [1, 2],
        "device": "cpu", "title": "t", "labels": ["base", "other"],
        "results": [_result("base", 1, [10.0, 40.0]), _result("base", 2, [20.0, 60.0], 20.0),
                    _result("other", 1, [5.0, 20.0], 30.0), _result("other", 2, [5.0, 30.0], 30.0)],
        "missing": ["other seed 3: no finished run"],
    }
    prefix = str(tmp_path / "out")
    text = report.write_outputs(data, prefix)
    # Mean over seeds, per-seed values, ratio to the first model, time ratio.
    assert "| base | 50.0 | 40.0 / 60.0 | 100.0 | 25.0 | 1.00 | 1.00 |" in text
    assert "| other | 25.0 | 20.0 / 30.0 | 50.0 | 12.5 | 0.50 | 2.00 |" in text
    assert "| base | 15.0 | 50.0 |" in text  # the per-evaluation table
    assert "Not finished, left out: other seed 3" in text
    with open(prefix + ".csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and rows[0]["model"] == "base" and rows[0]["iteration"] == "100"
    assert open(prefix + ".png", "rb").read(4) == b"\x89PNG"


def test_replot_rewrites_from_json_and_needs_it(tmp_path):
    tool = _tool()
    prefix = str(tmp_path / "out")
    with pytest.raises(SystemExit, match="needs .*out.json"):
        tool.main(["--replot", "--output", prefix])
    data = {"command": "c", "setting": "s", "seeds": [1], "device": "cpu", "title": "",
            "labels": ["a"], "results": [_result("a", 1, [1.0, 2.0])]}
    with open(prefix + ".json", "w") as f:
        json.dump(data, f)
    assert tool.main(["--replot", "--output", prefix, "--title", "new"]) == 0
    assert "| a | 2.0 | 2.0 |" in open(prefix + ".md").read()


def test_no_train_without_finished_runs_writes_nothing(tmp_path, capsys):
    tool = _tool()
    prefix = str(tmp_path / "out")
    rc = tool.main(["--run", "a", DEMO_IAUNET_SMALL, "--iters", "4", "--output", prefix,
                    "--no-train"])
    assert rc == 1
    assert "no finished run" in capsys.readouterr().err
    assert not os.path.exists(prefix + ".md")


def test_a_tiny_run_trains_evaluates_twice_and_is_reused(tmp_path):
    tool = _tool()
    prefix = str(tmp_path / "out")
    argv = ["--run", "tiny", DEMO_IAUNET_SMALL, "MODEL.IAUNET.NUM_QUERIES", "5",
            "MODEL.RESNETS.DEPTH", "18", "MODEL.IAUNET.DIM_FEEDFORWARD", "64",
            "--seeds", "3", "--iters", "2", "--eval-period", "1",
            "--set", "INPUT.IMAGE_SIZE", "64", "DATALOADER.NUM_WORKERS", "0",
            "TEST.EVAL_TASKS", "['segm']", "--output", prefix, "--allow-mixed-commits"]
    assert tool.main(argv) == 0
    with open(prefix + ".json") as f:
        data = json.load(f)
    (result,) = data["results"]
    # The record: commit, command, the checked settings and the resolved config.
    assert result["commit"] == tool.source_commit()
    assert result["command"][-2:] == ["OUTPUT_DIR", os.path.join(prefix + "_runs", "tiny", "seed3")]
    assert result["settings"]["INPUT.IMAGE_SIZE"] == 64
    assert "NUM_QUERIES: 5" in result["resolved_config"]
    assert [p["iter"] for p in result["curve"]] == [1, 2]
    assert all(0.0 <= p["AP"] <= 100.0 for p in result["curve"])
    run_dir = os.path.join(prefix + "_runs", "tiny", "seed3")
    assert os.path.isfile(os.path.join(run_dir, tool.DONE_FILE))
    # A second call reuses the finished run instead of training again.
    log = os.path.join(run_dir, "train_net.log")
    os.remove(log)
    assert tool.main(argv) == 0
    assert not os.path.exists(log)


@pytest.mark.parametrize("key, value", [("SOLVER.WEIGHT_DECAY", "0.01"),
                                        ("DATALOADER.FILTER_EMPTY_ANNOTATIONS", "True"),
                                        ("SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "0.01"),
                                        ("INPUT.ROTATE_90", "True")])
def test_runs_with_a_different_recipe_are_refused(tmp_path, key, value):
    tool = _tool()
    with pytest.raises(SystemExit, match=f"runs differ in {key}"):
        tool.main(["--run", "a", DEMO_IAUNET_SMALL, "--run", "b", DEMO_IAUNET_SMALL, key, value,
                   "--iters", "4", "--output", str(tmp_path / "c"), "--no-train"])


def _write_finished(work_dir, result):
    tool = _tool()
    folder = os.path.join(work_dir, tool._slug(result["label"]), f"seed{result['seed']}")
    os.makedirs(folder)
    with open(os.path.join(folder, tool.DONE_FILE), "w") as f:
        json.dump(result, f)


def _finished_table(tmp_path, results, *extra):
    """Run the tool with --no-train on pre-written finished runs of the demo config."""
    tool = _tool()
    prefix = str(tmp_path / "out")
    opts = tool.plan_runs(tool.get_parser().parse_args(
        ["--run", "x", DEMO_IAUNET_SMALL, "--iters", "4", "--no-train"]))[0]["opts"]
    for r in results:
        r.update(config=DEMO_IAUNET_SMALL, opts=opts)
        _write_finished(prefix + "_runs", r)
    argv = []
    for label in dict.fromkeys(r["label"] for r in results):
        argv += ["--run", label, DEMO_IAUNET_SMALL]
    return prefix, tool.main(argv + ["--seeds", "1", "--iters", "4", "--output", prefix,
                                     "--no-train", *extra])


def test_a_table_names_the_commit_of_its_runs(tmp_path):
    prefix, rc = _finished_table(tmp_path, [_result("a", 1, [1.0, 2.0]), _result("b", 1, [3.0])])
    assert rc == 0
    first = open(prefix + ".md").read().splitlines()[0]
    assert first == f"Written by tools/convergence.py from runs trained at commit {'a' * 40}."
    assert json.load(open(prefix + ".json"))["run_commits"] == ["a" * 40]


def test_runs_of_different_commits_are_refused_unless_allowed(tmp_path):
    results = [_result("a", 1, [1.0]), _result("b", 1, [2.0], commit="b" * 40)]
    with pytest.raises(SystemExit, match=r"different commits \(aaaaaaaaaa: a seed 1; "
                                         r"bbbbbbbbbb: b seed 1\)"):
        _finished_table(tmp_path, results)
    prefix, rc = _finished_table(tmp_path / "again", [_result("a", 1, [1.0]),
                                                      _result("b", 1, [2.0], commit="b" * 40)],
                                 "--allow-mixed-commits")
    assert rc == 0
    text = open(prefix + ".md").read()
    assert "**MIXED COMMITS**: runs trained at aaaaaaaaaa (1 run); bbbbbbbbbb (1 run)." in text


@pytest.mark.parametrize("commit", ["c" * 40 + "+dirty", None])
def test_runs_of_a_dirty_tree_or_without_a_commit_are_refused(tmp_path, commit):
    result = _result("a", 1, [1.0])
    if commit is None:
        del result["commit"]
    else:
        result["commit"] = commit
    with pytest.raises(SystemExit, match="uncommitted or unknown tree"):
        _finished_table(tmp_path, [result])


def test_runs_with_different_recorded_settings_are_refused(tmp_path):
    tool = _tool()
    results = [_result("a", 1, [1.0]), _result("b", 1, [1.0], **{"SOLVER.WEIGHT_DECAY": 0.0})]
    with pytest.raises(SystemExit, match="recorded runs differ in SOLVER.WEIGHT_DECAY"):
        tool.check_provenance(results)
    assert tool.check_provenance(results, allowed_differences=["SOLVER.WEIGHT_DECAY"]) == []


def test_source_commit_is_the_checkout_head():
    import subprocess

    tool = _tool()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                          text=True).stdout.strip()
    assert tool.source_commit() in (head, head + "+dirty")


def test_an_output_under_a_file_ends_in_one_line(tmp_path):
    tool = _tool()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit, match=r"--output .*file: cannot write there"):
        tool.main(["--run", "a", DEMO_IAUNET_SMALL, "--iters", "4",
                   "--output", str(blocker / "out")])
