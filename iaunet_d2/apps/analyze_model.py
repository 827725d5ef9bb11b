"""Parameter and FLOP counts of the models described by config files.

    python tools/analyze_model.py --config-file configs/revvity25/iaunet_R50.yaml
    python tools/analyze_model.py --config-file configs/revvity25/iaunet_{R50,R101}.yaml \
        --input-size 512 512 --per-module --format csv
    python tools/analyze_model.py --config-file configs/demo/iaunet_R18_small.yaml \
        --input-size 64 64 MODEL.IAUNET.NUM_QUERIES 20

Each model is built on CPU with random weights (MODEL.WEIGHTS is not loaded) and run in
eval mode on one random 1x3xHxW image. "GFLOPs" are 2 x the multiply-adds counted by
fvcore for every model; elementwise ops and, unless --count-attention, fused attention
are not counted: they are listed with their call counts. Models are counted at full
test-time load (iaunet_d2.utils.analysis.full_test_workload): an R-CNN sends all
post-NMS proposals (MODEL.RPN.POST_NMS_TOPK_TEST) through the box head and
TEST.DETECTIONS_PER_IMAGE detections through the mask head; IAUNet sends every query's
mask through mask NMS.

"paper conv." is the count in the convention of the IAUNet paper's tables, which differs
for R-CNN models: there, FLOPs are fvcore's multiply-adds (not twice them) and PointRend's
point head is left out (see iaunet_d2.utils.analysis.paper_convention_flops). The paper's
Mask2Former rows are fvcore's multiply-adds too. The last
columns compare it and the parameter count with the paper's Tables 1-2.
Trailing ``KEY VALUE`` pairs override every config.
"""
import iaunet_d2.compat  # noqa: F401  (must precede every Detectron2 import)

import argparse
import logging
import sys
import time
from collections import Counter

import torch

import iaunet_d2  # noqa: F401  (registers the project's models)
import iaunet_d2.modeling.backbone  # noqa: F401  (registers build_swin_backbone)
from iaunet_d2.utils.analysis import (
    PAPER_UNCOUNTED_MODULES,
    count_flops_with_paper_convention,
    count_parameters,
    describe_model,
)

# Paper Tables 1-2: (#params in M, GFLOPs at 512x512).
PAPER_TARGETS = {
    ("IAUNet", "R50"): (65, 292.6),
    ("IAUNet", "R101"): (84, 331.6),
    ("IAUNet", "Swin-S"): (77, 328),
    ("IAUNet", "Swin-B"): (117, 412),
    ("Mask R-CNN", "R50"): (44, 115),
    ("Mask R-CNN", "R101"): (63, 134),
    ("Mask R-CNN", "Swin-S"): (69, 141),
    ("Mask R-CNN", "Swin-B"): (107, 179),
    ("PointRend", "R50"): (57, 66.3),
    ("PointRend", "R101"): (75, 85.7),
    ("PointRend", "Swin-S"): (81, 92.9),
    ("PointRend", "Swin-B"): (119, 131),
    ("Mask2Former", "R50"): (44, 66.2),
    ("Mask2Former", "R101"): (63, 85.6),
    ("Mask2Former", "Swin-S"): (69, 92.8),
    ("Mask2Former", "Swin-B"): (107, 134),
}


# Top-level modules whose children also get a row of --per-module (IAUNet's head: its
# pixel decoder and transformer decoder).
SPLIT_MODULES = ("head",)


def module_parts(model):
    """Dotted names of the children of the model's ``SPLIT_MODULES``."""
    return tuple(f"{top}.{name}" for top, module in model.named_children() if top in SPLIT_MODULES
                 for name, _ in module.named_children())


def get_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", nargs="+", required=True, metavar="FILE",
                        help="one or more config files; one table row each")
    parser.add_argument("--input-size", nargs=2, type=int, default=[512, 512],
                        metavar=("H", "W"), help="input image height and width (default 512 512)")
    parser.add_argument("--per-module", action="store_true",
                        help="also print parameters and FLOPs per top-level module "
                             "(and per part of IAUNet's head)")
    parser.add_argument("--format", choices=["md", "csv"], default="md",
                        help="table format (default: Markdown)")
    parser.add_argument("--count-attention", action="store_true",
                        help="also count fused attention (scaled_dot_product_attention) "
                             "and baddbmm, which fvcore and the paper's numbers leave out")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="KEY VALUE config overrides applied to every config")
    return parser


def load_config(path, opts):
    """Frozen config of ``path`` with ``opts``, forced onto CPU and random init."""
    from iaunet_d2.config import build_config

    opts = list(opts) + ["MODEL.DEVICE", "cpu"]
    return build_config(path, opts, prepare_data=False)


def analyze(path, opts, height, width, count_attention=False):
    """Build the model of ``path`` and return a dict with its counts."""
    cfg = load_config(path, opts)
    from detectron2.modeling import build_model

    start = time.perf_counter()
    model = build_model(cfg).eval()
    parts = module_parts(model)
    params = count_parameters(model, submodules=parts)
    flops, paper_flops, per_module_flops, unsupported = count_flops_with_paper_convention(
        model, cfg.MODEL.META_ARCHITECTURE, height, width, count_attention=count_attention,
        submodules=parts,
    )
    for name in PAPER_UNCOUNTED_MODULES:  # list only the parts this model has
        if not per_module_flops[name]:
            del per_module_flops[name]
    arch, backbone = describe_model(cfg)
    return {
        "config": path,
        "model": f"{arch} {backbone}",
        "paper": PAPER_TARGETS.get((arch, backbone)),
        "params": params,
        "flops": flops,
        "paper_convention_flops": paper_flops,
        "per_module_flops": per_module_flops,
        "unsupported": unsupported,
        "seconds": time.perf_counter() - start,
    }


def _fmt(value, digits):
    return "-" if value is None else f"{value:.{digits}f}"


def _deviation(value, target):
    """Signed relative deviation from the paper, as a percentage string."""
    return "-" if target is None else f"{100.0 * (value - target) / target:+.1f}%"


def render(rows, header, fmt):
    if fmt == "csv":
        def cell(v):
            v = str(v)
            return f'"{v}"' if ("," in v or '"' in v) else v
        return "\n".join(",".join(cell(v) for v in r) for r in [header] + rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None):
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    height, width = args.input_size
    results = [analyze(path, args.opts, height, width, args.count_attention)
               for path in args.config_file]

    header = ["config", "model", "params (M)", "GFLOPs", "GFLOPs paper conv.",
              "paper params (M)", "paper GFLOPs", "params vs paper", "GFLOPs vs paper"]
    rows = []
    for r in results:
        # The paper's figures are for 512x512 inputs: no comparison at other sizes.
        paper = r["paper"] if r["paper"] and (height, width) == (512, 512) else (None, None)
        params_m = r["params"]["total"] / 1e6
        paper_conv = r["paper_convention_flops"] / 1e9
        rows.append([r["config"], r["model"], _fmt(params_m, 2), _fmt(r["flops"] / 1e9, 1),
                     _fmt(paper_conv, 1), _fmt(paper[0], 0), _fmt(paper[1], 1),
                     _deviation(params_m, paper[0]), _deviation(paper_conv, paper[1])])
    counted = " (fused attention included)" if args.count_attention else ""
    out = [f"Input 1x3x{height}x{width}. GFLOPs = 2 x fvcore multiply-adds{counted}, R-CNNs "
           "at full load (all proposals, TEST.DETECTIONS_PER_IMAGE detections). GFLOPs paper "
           "conv. = the paper's convention: the same for IAUNet; fvcore multiply-adds "
           "without PointRend's point head for R-CNNs; fvcore multiply-adds for Mask2Former.", "",
           render(rows, header, args.format)]

    if args.per_module:
        module_rows = []
        for r in results:
            listed = [n for n in r["params"] if n != "total"]
            listed += [n for n in r["per_module_flops"] if n not in listed]
            # A module's parts right after it.
            names = []
            for n in listed:
                if "." not in n or n.split(".")[0] not in listed:
                    names += [n] + [m for m in listed if m.startswith(n + ".")]
            for n in names:
                p = r["params"].get(n)
                f = r["per_module_flops"].get(n)
                module_rows.append([r["config"], n, _fmt(None if p is None else p / 1e6, 2),
                                    _fmt(None if f is None else f / 1e9, 2)])
        out += ["", render(module_rows, ["config", "module", "params (M)", "GFLOPs"], args.format)]

    # Uncounted ops go to stderr in CSV mode so that stdout stays one clean table.
    notes = []
    for r in results:
        ops = Counter(r["unsupported"])
        listed = ", ".join(f"{k} x{v}" for k, v in ops.most_common())
        notes.append(f"{r['config']}: not counted: {listed or 'none'} ({r['seconds']:.1f} s)")
    if args.format == "md":
        out += [""] + [f"- {n}" for n in notes]
        print("\n".join(out))
    else:
        print("\n".join(out[2:]))
        print("\n".join(notes), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
