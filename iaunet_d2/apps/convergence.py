"""Convergence comparison: train several models on exactly the same data, input size,
batch, schedule and seeds, evaluate at several points of the schedule, and write a
table and a chart of segm AP against iterations.

    # IAUNet against Mask R-CNN and PointRend on cells_demo, 2 seeds, CPU
    python tools/convergence.py \\
        --run "Mask R-CNN R50" configs/demo/mask_rcnn_R50.yaml \\
        --run "IAUNet R50" configs/demo/iaunet_R50.yaml \\
        --run "IAUNet R50, no deep supervision" configs/demo/iaunet_R50.yaml \\
              MODEL.IAUNET.DEEP_SUPERVISION False \\
        --seeds 1 2 --iters 300 --eval-period 60 --output docs/convergence/demo

``--run LABEL CONFIG [KEY VALUE ...]`` adds one model (the overrides apply to that run
only); ``--set KEY VALUE ...`` overrides every run (e.g. ``MODEL.DEVICE cuda``). Every
run trains through ``train_net.py``'s application (``python -m iaunet_d2.apps.train``)
in its own process and folder
(``WORK_DIR/<label>/seed<k>``); a run whose folder already holds a finished result is
not trained again, so an interrupted comparison continues where it stopped. The
evaluations come from Detectron2's COCO evaluator at every ``--eval-period`` iterations
and at the end (``metrics.json``).

Before anything trains, the tool checks that every run has the same training and test
data, input size, batch, schedule, learning rate, optimizer, weight decay, clipping,
backbone lr multiplier, augmentations, weights and empty-image policy (``EQUAL_KEYS``),
and refuses (naming the key) otherwise; ``--allow-different KEY`` lets a key differ and
the table names it.

Records: each finished run keeps (``WORK_DIR/<label>/seed<k>/convergence_done.json``) the
git commit of the code it was trained with (``+dirty`` when the working tree had
uncommitted changes), the exact train command, the checked settings and the full
resolved config the run saved. Before writing the tables the tool refuses runs from
more than one commit, from a dirty tree or without a recorded commit, and runs whose
recorded settings differ, unless ``--allow-mixed-commits`` is given; the table then
says so in its first lines. The tables name the commit of their runs. Writes OUTPUT.md (tables), OUTPUT.csv (one row per run, seed and evaluation),
OUTPUT.json (everything, for ``--replot``) and OUTPUT.png (segm AP against iterations:
the mean over seeds, with the seeds' range as a band; written by
``convergence_report``).
"""
import iaunet_d2.compat  # noqa: F401  (must precede every Detectron2 import)

import argparse
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from iaunet_d2.apps.convergence_report import METRICS, write_outputs
from iaunet_d2.io.writers import write_json

# Runs start in the folder that holds the iaunet_d2 package (the repository), as
# train_net.py runs do: relative config paths and ./datasets resolve there.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_COMMAND = [sys.executable, "-m", "iaunet_d2.apps.train"]

# Settings that must be equal in every run for the comparison to be fair (values of the
# resolved config: SOLVER.BACKBONE_MULTIPLIER already holds the pretrained multiplier
# when MODEL.WEIGHTS is set).
EQUAL_KEYS = [
    "DATASETS.TRAIN", "DATASETS.TEST", "DATASETS.TRAIN_DIR", "DATASETS.TEST_DIR",
    "INPUT.IMAGE_SIZE", "INPUT.MIN_SCALE", "INPUT.MAX_SCALE", "INPUT.FLIPS", "INPUT.ROTATE_90",
    "INPUT.INTENSITY_NORM", "SOLVER.IMS_PER_BATCH", "SOLVER.MAX_ITER", "SOLVER.BASE_LR",
    "SOLVER.BASE_LR_END", "SOLVER.LR_SCHEDULER_NAME", "SOLVER.WARMUP_ITERS", "SOLVER.OPTIMIZER",
    "SOLVER.WEIGHT_DECAY", "SOLVER.WEIGHT_DECAY_NORM", "SOLVER.WEIGHT_DECAY_EMBED",
    "SOLVER.CLIP_GRADIENTS.ENABLED", "SOLVER.CLIP_GRADIENTS.CLIP_TYPE",
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "SOLVER.BACKBONE_MULTIPLIER", "MODEL.WEIGHTS",
    "DATALOADER.FILTER_EMPTY_ANNOTATIONS", "TEST.EVAL_PERIOD", "MODEL.DEVICE",
]
DONE_FILE = "convergence_done.json"


def get_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", nargs="+", action="append", default=[],
                        metavar="LABEL CONFIG [KEY VALUE]",
                        help="a model to train: a label, a config file, then overrides")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2],
                        help="seeds, the same for every run (default: 1 2)")
    parser.add_argument("--iters", type=int, default=None,
                        help="SOLVER.MAX_ITER for every run (default: the configs', which must agree)")
    parser.add_argument("--eval-period", type=int, default=None,
                        help="evaluate every N iterations (default: --iters / 5)")
    parser.add_argument("--set", nargs="+", action="append", default=[], metavar="KEY VALUE",
                        help="config overrides for every run")
    parser.add_argument("--allow-different", nargs="+", default=[], metavar="KEY",
                        help="keys of the equality check that runs may set differently "
                             "(an augmentation ablation, say); the table names them")
    parser.add_argument("--allow-mixed-commits", action="store_true",
                        help="tabulate runs trained from different commits, a dirty tree or "
                             "with different recorded settings (the table says so)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs trained at the same time (default 1; more only on a GPU "
                             "machine with the memory and cores for them)")
    parser.add_argument("--output", default="output/convergence/convergence",
                        help="path prefix of the .md/.csv/.json/.png files (default %(default)s)")
    parser.add_argument("--work-dir", default="",
                        help="folder of the runs' OUTPUT_DIRs (default: OUTPUT_runs)")
    parser.add_argument("--title", default="", help="chart title")
    parser.add_argument("--replot", action="store_true",
                        help="only rewrite the .md/.csv/.png from OUTPUT.json")
    parser.add_argument("--no-train", action="store_true",
                        help="train nothing: tabulate the runs already finished in WORK_DIR "
                             "(the others are listed as missing)")
    return parser


def _pairs(tokens, what):
    if len(tokens) % 2:
        raise SystemExit(f"error: {what}: overrides must be KEY VALUE pairs, got {tokens}")
    return list(tokens)


def _slug(label):
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "run"


def plan_runs(args):
    """The runs as dicts (label, config, opts), checked for equal settings.

    Raises SystemExit with one line naming the problem on a bad argument.
    """
    from iaunet_d2.config import build_config

    if not args.run:
        raise SystemExit("error: give at least one --run LABEL CONFIG [KEY VALUE ...]")
    common = []
    for tokens in args.set:
        common += _pairs(tokens, "--set")
    if args.iters is not None:
        if args.iters < 1:
            raise SystemExit("error: --iters must be at least 1")
        period = args.eval_period or max(1, args.iters // 5)
        common += ["SOLVER.MAX_ITER", str(args.iters), "TEST.EVAL_PERIOD", str(period)]
    elif args.eval_period:
        common += ["TEST.EVAL_PERIOD", str(args.eval_period)]
    # One final checkpoint per run is enough; evaluations must give segm.
    common += ["SOLVER.CHECKPOINT_PERIOD", "1000000000"]

    runs, labels = [], set()
    for tokens in args.run:
        if len(tokens) < 2:
            raise SystemExit(f"error: --run needs a label and a config file, got {tokens}")
        label, config, overrides = tokens[0], tokens[1], _pairs(tokens[2:], f"--run {tokens[0]}")
        if label in labels:
            raise SystemExit(f"error: two runs are labelled {label!r}")
        labels.add(label)
        if not os.path.isfile(config):
            raise SystemExit(f"error: --run {label}: config file {config} does not exist")
        opts = overrides + common
        try:
            cfg = build_config(config, opts, prepare_data=False)
        except Exception as e:  # a bad key or value in a user's override
            raise SystemExit(f"error: --run {label}: {config}: {type(e).__name__}: {e}")
        if "segm" not in cfg.TEST.EVAL_TASKS:
            raise SystemExit(f"error: --run {label}: TEST.EVAL_TASKS must include 'segm'")
        if cfg.TEST.EVAL_PERIOD <= 0:
            raise SystemExit(f"error: --run {label}: give --eval-period (TEST.EVAL_PERIOD is 0)")
        settings = {key: _get(cfg, key) for key in EQUAL_KEYS}
        runs.append({"label": label, "config": config, "opts": opts, "settings": settings,
                     "max_iter": cfg.SOLVER.MAX_ITER})
    if not args.no_train:
        # Data is prepared here, once (demo data generated, folders converted, every
        # dataset checked on disk), before several runs could race to write it.
        for run in runs:
            try:
                build_config(run["config"], run["opts"], prepare_data=True)
            except Exception as e:  # missing data: one line naming the run
                raise SystemExit(f"error: --run {run['label']}: {type(e).__name__}: {e}")
    unknown = sorted(set(args.allow_different) - set(EQUAL_KEYS))
    if unknown:
        raise SystemExit(f"error: --allow-different {unknown}: not among the checked keys "
                         f"{EQUAL_KEYS}")
    for key in EQUAL_KEYS:
        if key in args.allow_different:
            continue
        values = {repr(r["settings"][key]) for r in runs}
        if len(values) > 1:
            listing = ", ".join(f"{r['label']}: {r['settings'][key]!r}" for r in runs)
            raise SystemExit(f"error: runs differ in {key} ({listing}); set it with --set "
                             "or --iters so that every model gets the same")
    return runs


def _get(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return list(node) if isinstance(node, (list, tuple)) else node


def source_commit():
    """The git commit of the code in REPO_ROOT, with "+dirty" when tracked files have
    uncommitted changes; "unknown" without git."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def check_provenance(results, allow_mixed=False, allowed_differences=()):
    """Refuse (SystemExit, one line) to tabulate results of different commits, of a
    dirty tree, without a recorded commit, or with recorded settings that differ on a
    key not in ``allowed_differences``; with ``allow_mixed`` return the notes that the
    table must carry instead.

    Returns:
        list of strings, the table's warnings (empty for a clean table).
    """
    notes = []
    commits = {}
    for r in results:
        commits.setdefault(r.get("commit") or "none recorded", []).append(f"{r['label']} seed {r['seed']}")
    problems = [c for c in commits if c == "none recorded" or c.endswith("+dirty") or c == "unknown"]
    if len(commits) > 1 or problems:
        listing = "; ".join(f"{_short(c)}: {', '.join(runs)}" for c, runs in commits.items())
        if not allow_mixed:
            why = "different commits" if len(commits) > 1 else "an uncommitted or unknown tree"
            raise SystemExit(f"error: the runs come from {why} ({listing}); retrain them at one "
                             "clean commit, or pass --allow-mixed-commits")
        notes.append("**MIXED COMMITS**: runs trained at " + "; ".join(
            f"{_short(c)} ({len(runs)} run{'s' if len(runs) > 1 else ''})"
            for c, runs in commits.items()) + ".")
    for key in EQUAL_KEYS:
        if key in allowed_differences:
            continue
        values = {}
        for r in results:
            if key in r.get("settings", {}):
                values.setdefault(json.dumps(r["settings"][key]), []).append(
                    f"{r['label']} seed {r['seed']}")
        if len(values) > 1:
            listing = "; ".join(f"{v}: {', '.join(runs)}" for v, runs in values.items())
            if not allow_mixed:
                raise SystemExit(f"error: the recorded runs differ in {key} ({listing}); retrain "
                                 "them, or pass --allow-mixed-commits")
            notes.append(f"**DIFFERENT SETTINGS**: {key} differs ({listing}).")
    return notes


def _short(commit):
    return commit[:10] + ("+dirty" if commit.endswith("+dirty") else "") \
        if commit not in ("unknown", "none recorded") else commit


def read_curve(metrics_path, max_iter):
    """Evaluations in a Detectron2 metrics.json: list of {"iter", "AP", "AP50", "AP75"},
    "iter" being the number of training steps done (the periodic evaluations are logged
    at the 0-based iteration of their last step, the final one at max_iter)."""
    curve = {}
    if not os.path.isfile(metrics_path):
        return []
    with open(metrics_path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by an interrupted run
            if "segm/AP" in record:
                point = {"iter": min(int(record["iteration"]) + 1, max_iter)}
                for m in METRICS:
                    value = record.get(f"segm/{m}", float("nan"))
                    point[m] = float(value) if value is not None else float("nan")
                curve[point["iter"]] = point
    return [curve[k] for k in sorted(curve)]


class MissingRun(RuntimeError):
    """A run that --no-train found unfinished."""


def train_one(run, seed, work_dir, log, train=True, commit=None):
    """Train one run with one seed (or reuse a finished one); returns its result dict."""
    out = os.path.join(work_dir, _slug(run["label"]), f"seed{seed}")
    done = os.path.join(out, DONE_FILE)
    if os.path.isfile(done):
        with open(done) as f:
            result = json.load(f)
        if result.get("opts") == run["opts"] and result.get("config") == run["config"]:
            log(f"[{run['label']} seed {seed}] finished earlier: segm AP {result['final']['AP']:.1f}")
            return result
    if not train:
        raise MissingRun(f"{run['label']} seed {seed}: no finished run in {out}")
    os.makedirs(out, exist_ok=True)
    metrics = os.path.join(out, "metrics.json")
    if os.path.exists(metrics):
        os.remove(metrics)  # a partial run: start again from scratch
    cmd = [*TRAIN_COMMAND, "--config-file", run["config"], *run["opts"],
           "SEED", str(seed), "OUTPUT_DIR", out]
    log(f"[{run['label']} seed {seed}] training {run['max_iter']} iterations in {out}")
    start = time.perf_counter()
    with open(os.path.join(out, "train_net.log"), "w") as logfile:
        code = subprocess.call(cmd, stdout=logfile, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    seconds = time.perf_counter() - start
    curve = read_curve(metrics, run["max_iter"])
    if code != 0 or not curve or curve[-1]["iter"] != run["max_iter"]:
        raise RuntimeError(f"{run['label']} seed {seed}: train_net.py exited {code} without a "
                           f"final evaluation; see {os.path.join(out, 'train_net.log')}")
    resolved = os.path.join(out, "config.yaml")
    result = {"label": run["label"], "config": run["config"], "opts": run["opts"], "seed": seed,
              "seconds": seconds, "curve": curve, "final": curve[-1],
              "commit": commit or source_commit(), "command": cmd,
              "settings": run["settings"],
              "resolved_config": open(resolved).read() if os.path.isfile(resolved) else None}
    write_json(result, done, indent=1)
    log(f"[{run['label']} seed {seed}] segm AP {curve[-1]['AP']:.1f} "
        f"(AP50 {curve[-1]['AP50']:.1f}) after {run['max_iter']} iterations, {seconds:.0f} s")
    return result


def _device_name(runs):
    device = runs[0]["settings"]["MODEL.DEVICE"]
    if str(device).startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return f"{device} ({torch.cuda.get_device_name(0)})"
    return f"{device} ({os.cpu_count()} cores)"


def main(argv=None):
    args = get_parser().parse_args(argv)
    prefix = args.output
    _make_folder(os.path.dirname(prefix), "--output")
    if args.replot:
        if not os.path.isfile(prefix + ".json"):
            raise SystemExit(f"error: --replot needs {prefix}.json, which does not exist")
        with open(prefix + ".json") as f:
            data = json.load(f)
        if args.title:
            data["title"] = args.title
        print(write_outputs(data, prefix))
        return 0

    runs = plan_runs(args)
    work_dir = args.work_dir or prefix + "_runs"
    if not args.no_train:
        _make_folder(work_dir, "--work-dir")
    first = runs[0]["settings"]
    setting = (f"{first['DATASETS.TRAIN']} -> {first['DATASETS.TEST']}, "
               f"{first['INPUT.IMAGE_SIZE']} px, batch {first['SOLVER.IMS_PER_BATCH']}, "
               f"{first['SOLVER.MAX_ITER']} iterations, lr {first['SOLVER.BASE_LR']}, "
               f"evaluated every {first['TEST.EVAL_PERIOD']}")
    print(f"{len(runs)} models x {len(args.seeds)} seeds: {setting}", flush=True)

    def log(msg):
        print(msg, flush=True)

    commit = source_commit()
    if commit.endswith("+dirty") and not args.no_train:
        log(f"warning: the working tree has uncommitted changes ({commit}); runs trained now "
            "are recorded as dirty and their table needs --allow-mixed-commits")
    jobs = [(run, seed) for run in runs for seed in args.seeds]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(train_one, run, seed, work_dir, log, not args.no_train, commit)
                   for run, seed in jobs]
        results, failures, missing = [], [], []
        for future in futures:
            try:
                results.append(future.result())
            except MissingRun as e:
                missing.append(str(e))
                log(f"missing: {e}")
            except RuntimeError as e:
                failures.append(str(e))
                log(f"error: {e}")
    labels = [r["label"] for r in runs if any(x["label"] == r["label"] for x in results)]
    if not labels:
        print("error: no finished run to tabulate", file=sys.stderr)
        return 1
    if failures:
        print(f"error: {len(failures)} of {len(jobs)} runs failed; the tables are not written",
              file=sys.stderr)
        return 1
    notes = check_provenance(results, args.allow_mixed_commits, args.allow_different)
    run_commits = sorted({r.get("commit") or "none recorded" for r in results})
    data = {"command": "python tools/convergence.py " + " ".join(
                _quote(a) for a in (argv if argv is not None else sys.argv[1:])),
            "setting": setting, "seeds": args.seeds, "device": _device_name(runs),
            "title": args.title, "labels": labels, "results": results, "missing": missing,
            "allowed_differences": args.allow_different, "commit": commit,
            "run_commits": run_commits, "notes": notes}
    write_json(data, prefix + ".json", indent=1)
    print(write_outputs(data, prefix))
    print(f"wrote {prefix}.md, .csv, .json and .png")
    return 0


def _make_folder(path, option):
    """Create ``path`` (if given) and check that files can be written there; a problem
    ends the tool with one line naming the option and the folder."""
    if not path:
        return
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, ".convergence_write_test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise SystemExit(f"error: {option} {path}: cannot write there ({e.strerror or e})")


def _quote(arg):
    return f'"{arg}"' if re.search(r"[\s()',]", arg) else arg


if __name__ == "__main__":
    sys.exit(main())
