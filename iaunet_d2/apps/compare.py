"""Evaluate several models on one dataset and write one comparison table and chart.

    # trained checkpoints, one --weights per config (same order)
    python tools/compare.py --config-file configs/livecell/mask_rcnn_R50.yaml \
        configs/livecell/iaunet_R50.yaml --weights out/mrcnn/model_final.pth \
        out/iaunet/model_final.pth --output output/compare/livecell
    # or a short training of each config in its own OUTPUT_DIR first
    python tools/compare.py --config-file configs/demo/mask_rcnn_R50.yaml \
        configs/demo/iaunet_R18_small.yaml --train-iters 100 --output output/compare/demo

Every row comes from Detectron2's COCO evaluator (``Trainer.test`` -> results["segm"])
on --dataset (default: each config's DATASETS.TEST[0]); #params and GFLOPs come from
``iaunet_d2.utils.analysis`` on the evaluated model: "GFLOPs" = 2 x fvcore multiply-adds
on one random --flops-size image, R-CNNs at full load (all post-NMS proposals,
TEST.DETECTIONS_PER_IMAGE detections); "GFLOPs paper conv." = the IAUNet paper's
convention (the same for IAUNet, fvcore multiply-adds without PointRend's point head
for R-CNNs), comparable with the paper's tables. Writes OUTPUT.md, OUTPUT.csv and
OUTPUT.png (AP, AP50, AP75 bars grouped by backbone, like the IAUNet paper's Table 2).
Trailing KEY VALUE pairs override every config.
"""
import iaunet_d2.compat  # noqa: F401  (must precede every Detectron2 import)

import argparse
import csv
import logging
import math
import os
import sys

import iaunet_d2  # noqa: F401  (registers the project's models)
import iaunet_d2.modeling.backbone  # noqa: F401  (registers build_swin_backbone)
from iaunet_d2.engine.checkpoint import CheckpointReadError

COLUMNS = ["model", "backbone", "AP", "AP50", "AP75", "APs", "APm", "APl", "#params (M)", "GFLOPs",
           "GFLOPs paper conv."]
AP_KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]


def get_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", nargs="+", required=True, metavar="FILE")
    parser.add_argument("--weights", nargs="+", default=None, metavar="PTH",
                        help="trained weights, one per config (same order)")
    parser.add_argument("--train-iters", type=int, default=0,
                        help="instead of --weights: train each config for N iterations "
                             "(in OUTPUT/<config name>) and evaluate the result")
    parser.add_argument("--dataset", default="",
                        help="registered dataset to evaluate on (default: DATASETS.TEST[0])")
    parser.add_argument("--flops-size", nargs=2, type=int, default=[512, 512], metavar=("H", "W"),
                        help="input size for the GFLOPs column (default 512 512, the paper's)")
    parser.add_argument("--output", default="output/compare/compare",
                        help="path prefix of the .md/.csv/.png files (default %(default)s)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="KEY VALUE config overrides applied to every config")
    return parser


def _config_name(path):
    parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return f"{parent}_{os.path.splitext(os.path.basename(path))[0]}"


def _segm_results(results, dataset):
    """results['segm'] from Trainer.test's output (one or several datasets)."""
    if "segm" not in results and dataset in results:
        results = results[dataset]
    if "segm" not in results:
        raise RuntimeError(f"the evaluation gave no 'segm' results (got keys {sorted(results)}); "
                           "TEST.EVAL_TASKS must include 'segm'")
    return results["segm"]


def evaluate_config(path, opts, weights="", train_iters=0, dataset="", output_dir="",
                    flops_size=(512, 512), log=print):
    """Train (optionally) or load, then evaluate one config; returns a table row dict."""
    from detectron2.modeling import build_model

    from iaunet_d2.config import build_config
    from iaunet_d2.engine import AtomicCheckpointer, Trainer
    from iaunet_d2.utils.analysis import (
        count_flops_with_paper_convention,
        count_parameters,
        describe_model,
    )

    base = build_config(path, opts, prepare_data=False)
    dataset = dataset or base.DATASETS.TEST[0]
    run_opts = list(opts) + ["DATASETS.TEST", f"('{dataset}',)"]
    if output_dir:
        run_opts += ["OUTPUT_DIR", output_dir]
    if train_iters > 0:
        run_opts += ["SOLVER.MAX_ITER", str(train_iters), "MODEL.WEIGHTS", ""]
        cfg = build_config(path, run_opts)
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        log(f"[{path}] training {train_iters} iterations in {cfg.OUTPUT_DIR}")
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
        model = trainer.model
        # The trainer's final EvalHook already evaluated DATASETS.TEST.
        results = getattr(trainer, "_last_eval_results", None)
        if not results:
            results = Trainer.test(cfg, model)
    else:
        if weights:
            run_opts += ["MODEL.WEIGHTS", weights]
        else:
            log(f"[{path}] warning: no --weights and no --train-iters: evaluating random weights")
        cfg = build_config(path, run_opts)
        model = build_model(cfg)
        if weights:
            # Strict, as train_net.py --eval-only: weights of another model are refused.
            AtomicCheckpointer(model, save_dir=cfg.OUTPUT_DIR).load_weights(weights, strict=True)
        log(f"[{path}] evaluating on {dataset}")
        results = Trainer.test(cfg, model)
    segm = _segm_results(results, dataset)

    arch, backbone = describe_model(cfg)
    params = count_parameters(model)["total"]
    # FLOPs of the architecture, counted on a fresh CPU copy: tracing the model that was
    # just trained and evaluated (inference-mode state, device) is avoided.
    cpu_cfg = cfg.clone()
    cpu_cfg.defrost()
    cpu_cfg.MODEL.DEVICE = "cpu"
    fresh = build_model(cpu_cfg)
    fresh.load_state_dict(model.state_dict())
    flops, paper_flops, _, _ = count_flops_with_paper_convention(
        fresh, cfg.MODEL.META_ARCHITECTURE, int(flops_size[0]), int(flops_size[1])
    )
    row = {"model": arch, "backbone": backbone, "config": path, "dataset": dataset,
           "#params (M)": params / 1e6, "GFLOPs": flops / 1e9,
           "GFLOPs paper conv.": paper_flops / 1e9}
    for key in AP_KEYS:
        row[key] = float(segm.get(key, float("nan")))
    log(f"[{path}] segm AP {row['AP']:.2f}, AP50 {row['AP50']:.2f}")
    return row


def _cell(row, key):
    value = row[key]
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if key in AP_KEYS or key == "#params (M)":
            return f"{value:.2f}"
        # GFLOPs: one decimal for real models, 3 significant digits for tiny ones.
        return f"{value:.1f}" if value >= 10 else f"{value:.3g}"
    return str(value)


def write_table(rows, prefix):
    """Write PREFIX.md and PREFIX.csv; return the Markdown text."""
    header = COLUMNS + ["config", "dataset"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(r, k) for k in header) + " |" for r in rows]
    text = "\n".join(lines) + "\n"
    with open(prefix + ".md", "w") as f:
        f.write(text)
    with open(prefix + ".csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for r in rows:
            writer.writerow([_cell(r, k) for k in header])
    return text


def plot_chart(rows, path, metrics=("AP", "AP50", "AP75")):
    """Bars of ``metrics`` per model, grouped by backbone, one panel per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backbones = list(dict.fromkeys(r["backbone"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    width = 0.8 / max(1, len(models))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for i, model in enumerate(models):
            xs, ys = [], []
            for j, backbone in enumerate(backbones):
                match = [r for r in rows if r["model"] == model and r["backbone"] == backbone]
                if match:
                    value = match[0][metric]
                    xs.append(j + (i - (len(models) - 1) / 2) * width)
                    ys.append(0.0 if math.isnan(value) else value)
            ax.bar(xs, ys, width=width, label=model)
        ax.set_xticks(range(len(backbones)))
        ax.set_xticklabels(backbones)
        ax.set_title(f"mask {metric}")
        ax.set_ylabel(metric)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=max(1, len(models)), fontsize=9)
    datasets = ", ".join(dict.fromkeys(r["dataset"] for r in rows))
    fig.suptitle(f"Instance segmentation on {datasets}")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.weights is not None and len(args.weights) != len(args.config_file):
        raise SystemExit(f"error: {len(args.weights)} --weights for {len(args.config_file)} configs")
    if args.weights is not None and args.train_iters > 0:
        raise SystemExit("error: give either --weights or --train-iters, not both")
    folder = os.path.dirname(args.output)
    if folder:
        os.makedirs(folder, exist_ok=True)
    rows = []
    for i, path in enumerate(args.config_file):
        weights = args.weights[i] if args.weights else ""
        out_dir = ""
        if args.train_iters > 0:
            out_dir = os.path.join(args.output + "_runs", f"{i}_{_config_name(path)}")
        try:
            rows.append(evaluate_config(path, args.opts, weights, args.train_iters, args.dataset,
                                        out_dir, args.flops_size,
                                        log=lambda msg: print(msg, flush=True)))
        except CheckpointReadError as e:  # unreadable weights, or weights of another model
            print(f"error: {e}", file=sys.stderr)
            return 2
    text = write_table(rows, args.output)
    plot_chart(rows, args.output + ".png")
    print(text)
    print(f"wrote {args.output}.md, {args.output}.csv and {args.output}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
