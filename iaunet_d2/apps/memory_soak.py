"""Does training memory stay flat? Train a config for a set time and record resident memory.

    python tools/memory_soak.py --config-file configs/demo/iaunet_R50.yaml --minutes 30 \\
        --output docs/benchmarks/memory_soak_iaunet_R50

The run trains in this process (no evaluation, no checkpoints) and samples its resident
set size (``/proc/self/statm``) after every iteration. The table compares the largest
value after ``--warm-up-minutes`` with the value at the end of the warm-up (data loader
workers started, allocator pools grown); a ratio near 1.00 means no leak. Writes
``<output>.json`` (every sample) and ``<output>.md``.
"""
import iaunet_d2.compat  # noqa: F401  (must precede every Detectron2 import)

import argparse
import os
import subprocess
import sys
import tempfile
import time

from detectron2.engine import HookBase

from iaunet_d2.config import build_config
from iaunet_d2.engine import Trainer
from iaunet_d2.io import write_json

__all__ = ["main", "resident_mib"]


def resident_mib():
    """Resident set size of this process in MiB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _TimeUp(BaseException):
    """Ends the loop at the time limit; a BaseException, so the trainer does not log it
    as a failure."""


class _SampleMemory(HookBase):
    def __init__(self, seconds, log_every):
        self.seconds, self.log_every = seconds, log_every
        self.samples, self.start = [], None

    def before_train(self):
        self.start = time.perf_counter()

    def after_step(self):
        elapsed = time.perf_counter() - self.start
        self.samples.append({"iter": self.trainer.iter, "seconds": round(elapsed, 2),
                             "rss_mib": round(resident_mib(), 1)})
        if len(self.samples) % self.log_every == 0:
            print(f"iteration {self.trainer.iter}: {elapsed / 60:.1f} min, resident "
                  f"{self.samples[-1]['rss_mib']:.0f} MiB", flush=True)
        if elapsed >= self.seconds:
            raise _TimeUp


def summarize(samples, warm_up_seconds):
    """Resident memory at the end of the warm-up, its largest value after it, and their
    ratio. Raises ValueError when no sample lies after the warm-up."""
    warm = [s for s in samples if s["seconds"] <= warm_up_seconds]
    after = [s for s in samples if s["seconds"] > warm_up_seconds]
    if not warm or not after:
        raise ValueError("the run is too short for its warm-up: no sample after it")
    base = warm[-1]["rss_mib"]
    peak = max(s["rss_mib"] for s in after)
    return {"iterations": samples[-1]["iter"] + 1, "minutes": samples[-1]["seconds"] / 60,
            "rss_after_warm_up_mib": base, "max_rss_after_warm_up_mib": peak,
            "final_rss_mib": samples[-1]["rss_mib"], "growth": peak / base}


def get_parser():
    parser = argparse.ArgumentParser(
        prog="tools/memory_soak.py",
        description="Train a config for a set time and record the process's resident memory.")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--minutes", type=float, default=30.0, help="training time (default 30)")
    parser.add_argument("--warm-up-minutes", type=float, default=3.0,
                        help="time before the reference sample (default 3)")
    parser.add_argument("--output", required=True, metavar="PREFIX",
                        help="writes PREFIX.json and PREFIX.md")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides as KEY VALUE pairs")
    return parser


def _commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None):
    args = get_parser().parse_args(argv)
    if not os.path.exists("/proc/self/statm"):
        print("error: resident memory is read from /proc (Linux only).", file=sys.stderr)
        return 2
    if not 0 < args.warm_up_minutes < args.minutes:
        print("error: --warm-up-minutes must be above 0 and below --minutes.", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as work:
        opts = list(args.opts) + ["SOLVER.MAX_ITER", "10000000", "TEST.EVAL_PERIOD", "0",
                                  "SOLVER.CHECKPOINT_PERIOD", "100000000", "OUTPUT_DIR", work]
        cfg = build_config(args.config_file, opts)
        trainer = Trainer(cfg)
        hook = _SampleMemory(args.minutes * 60, log_every=20)
        trainer.register_hooks([hook])
        trainer.resume_or_load(resume=False)
        print(f"training {args.config_file} for {args.minutes:g} min, sampling resident memory",
              flush=True)
        try:
            trainer.train()
        except _TimeUp:
            pass
    summary = summarize(hook.samples, args.warm_up_minutes * 60)
    record = {"config": args.config_file, "opts": list(args.opts), "commit": _commit(),
              "warm_up_minutes": args.warm_up_minutes, **summary, "samples": hook.samples}
    write_json(record, args.output + ".json", indent=1)
    lines = [
        f"Written by tools/memory_soak.py at commit {record['commit']}: `{args.config_file}` "
        f"{' '.join(args.opts)}, {summary['iterations']} iterations in {summary['minutes']:.1f} min.",
        "",
        "| resident after warm-up ({:g} min) | largest after it | at the end | largest / after warm-up |"
        .format(args.warm_up_minutes),
        "|---|---|---|---|",
        f"| {summary['rss_after_warm_up_mib']:.0f} MiB | {summary['max_rss_after_warm_up_mib']:.0f} MiB "
        f"| {summary['final_rss_mib']:.0f} MiB | {summary['growth']:.3f} |",
    ]
    with open(args.output + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {args.output}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
