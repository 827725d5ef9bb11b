"""Inference/training speed and memory of models, as ratios to a baseline, in one run.

    python tools/benchmark.py --config-file configs/revvity25/mask_rcnn_R50.yaml \
        configs/revvity25/iaunet_R50.yaml --input-size 512 512 --repeats 5 \
        --output output/benchmark/r50

The first config is the baseline (ratio 1.0). Before and after the models the run
measures the machine's own ceiling (a 2048^3 fp32 matmul and a 3x3 conv, 256 channels,
128x128, through torch) and reports each model's achieved GFLOP/s (fvcore FLOPs at the
same input size / median latency) as a fraction of the conv ceiling.

Models are random-initialised (MODEL.WEIGHTS is ignored). So that random models do
their full test-time work, they run at full load (R-CNN: all MODEL.RPN.POST_NMS_TOPK_TEST
proposals through the box head, TEST.DETECTIONS_PER_IMAGE detections through the mask
head; IAUNet: every query's mask through mask NMS; Mask2Former: its top-k, always; see
iaunet_d2.utils.analysis.full_test_workload); --no-fair keeps the configs' thresholds
and NMS. Inference runs one image under torch.inference_mode; the training step
is forward + backward + optimizer step on a synthetic batch of random discs.
Peak memory: CUDA max_memory_allocated growth, or on CPU the peak RSS growth of this
process during one inference (VmHWM after resetting it through /proc/self/clear_refs).
Trailing KEY VALUE pairs override every config.
"""
import iaunet_d2.compat  # noqa: F401  (must precede every Detectron2 import)

import argparse
import json
import logging
import os
import sys

import iaunet_d2  # noqa: F401  (registers the project's models)
import iaunet_d2.modeling.backbone  # noqa: F401  (registers build_swin_backbone)
from iaunet_d2.apps.benchmark_lib import render_markdown, run_benchmark


def get_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", nargs="+", required=True, metavar="FILE",
                        help="config files; the first is the baseline")
    parser.add_argument("--input-size", nargs=2, type=int, default=[512, 512], metavar=("H", "W"))
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed inference runs")
    parser.add_argument("--warmup", type=int, default=1, help="untimed inference runs first")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--skip-train", action="store_true", help="no training-step timing")
    parser.add_argument("--train-repeats", type=int, default=3, help="timed training steps")
    parser.add_argument("--train-batch", type=int, default=2, help="images per training step")
    parser.add_argument("--no-fair", action="store_true",
                        help="keep the configs' test thresholds and NMS (the cost then "
                             "depends on the random weights)")
    parser.add_argument("--output", default="",
                        help="write OUTPUT.json and OUTPUT.md (a path without extension)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="KEY VALUE config overrides applied to every config")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    height, width = args.input_size
    result = run_benchmark(
        args.config_file, args.opts, height, width, args.device, args.repeats, args.warmup,
        args.threads, args.skip_train, args.train_repeats, args.train_batch,
        fair=not args.no_fair, log=lambda msg: print(msg, flush=True),
    )
    table = render_markdown(result)
    print()
    print(table)
    base = result["rows"][0]
    for row in result["rows"][1:]:
        print(f"latency ratio {row['model']} / {base['model']}: {row['latency_ratio']:.2f}")
    if args.output:
        folder = os.path.dirname(args.output)
        if folder:
            os.makedirs(folder, exist_ok=True)
        with open(args.output + ".json", "w") as f:
            json.dump(result, f, indent=2, default=str)
        with open(args.output + ".md", "w") as f:
            f.write(table)
        print(f"wrote {args.output}.json and {args.output}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
