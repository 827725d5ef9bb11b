"""The tables and chart of a convergence comparison, from its runs' results.

A result is one run and seed: {"label", "seed", "seconds", "curve", "final", ...}
where "curve" lists the evaluations {"iter", "AP", "AP50", "AP75"} (segm, 0-100) and
"final" is the last of them. :func:`write_outputs` writes PREFIX.md (tables: final
metrics per model with the mean and each seed, ratios to the first model, and AP at
every evaluation), PREFIX.csv (one row per run, seed and evaluation) and PREFIX.png
(segm AP against iterations, the mean over seeds with the seeds' range as a band).
"""
import csv
import math

__all__ = ["METRICS", "plot_curves", "summarize", "write_csv", "write_markdown", "write_outputs"]

METRICS = ("AP", "AP50", "AP75")


def _fmt(value, digits=1):
    return "nan" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _mean(values):
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def summarize(results, labels):
    """Per label: seeds, final metrics per seed and mean, mean curve, min/max band."""
    summary = []
    for label in labels:
        mine = sorted((r for r in results if r["label"] == label), key=lambda r: r["seed"])
        iters = sorted({p["iter"] for r in mine for p in r["curve"]})
        curve = []
        for it in iters:
            values = [p["AP"] for r in mine for p in r["curve"] if p["iter"] == it]
            clean = [v for v in values if not math.isnan(v)]
            curve.append({"iter": it, "mean": _mean(values),
                          "min": min(clean) if clean else float("nan"),
                          "max": max(clean) if clean else float("nan")})
        summary.append({
            "label": label,
            "seeds": [r["seed"] for r in mine],
            "final": {m: [r["final"][m] for r in mine] for m in METRICS},
            "mean": {m: _mean([r["final"][m] for r in mine]) for m in METRICS},
            "seconds": _mean([r["seconds"] for r in mine]),
            "curve": curve,
        })
    return summary


def write_markdown(summary, path, header_lines):
    """Write the markdown tables of :func:`summarize`'s ``summary`` below
    ``header_lines`` to ``path``; returns the text."""
    base = summary[0]
    lines = list(header_lines) + [""]
    lines.append(f"| model | segm AP (mean) | per seed | AP50 | AP75 | AP / {base['label']} "
                 f"| train time / {base['label']} |")
    lines.append("|---|---|---|---|---|---|---|")
    for s in summary:
        ratio = s["mean"]["AP"] / base["mean"]["AP"] if base["mean"]["AP"] > 0 else float("nan")
        speed = s["seconds"] / base["seconds"] if base["seconds"] > 0 else float("nan")
        per_seed = " / ".join(_fmt(v) for v in s["final"]["AP"])
        lines.append(f"| {s['label']} | {_fmt(s['mean']['AP'])} | {per_seed} | "
                     f"{_fmt(s['mean']['AP50'])} | {_fmt(s['mean']['AP75'])} | "
                     f"{_fmt(ratio, 2)} | {_fmt(speed, 2)} |")
    iters = sorted({p["iter"] for s in summary for p in s["curve"]})
    lines += ["", "segm AP (mean over seeds) at each evaluation:", ""]
    lines.append("| model | " + " | ".join(str(i) for i in iters) + " |")
    lines.append("|---|" + "---|" * len(iters))
    for s in summary:
        by_iter = {p["iter"]: p["mean"] for p in s["curve"]}
        lines.append(f"| {s['label']} | " + " | ".join(_fmt(by_iter.get(i, float("nan")))
                                                       for i in iters) + " |")
    text = "\n".join(lines) + "\n"
    with open(path, "w") as f:
        f.write(text)
    return text


def write_csv(results, path):
    """Write one csv row per result and evaluation to ``path``."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "seed", "iteration", *METRICS, "train seconds"])
        for r in results:
            for p in r["curve"]:
                writer.writerow([r["label"], r["seed"], p["iter"],
                                 *[_fmt(p[m], 2) for m in METRICS], f"{r['seconds']:.1f}"])


def plot_curves(summary, path, title):
    """Save the chart of segm AP against iterations (mean over seeds, the seeds'
    range as a band) of ``summary`` as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10.5, 5))
    # Up to 20 distinguishable colours; markers vary too, for grey-scale prints.
    colors = plt.get_cmap("tab10" if len(summary) <= 10 else "tab20").colors
    markers = "osD^v<>ph*"
    for i, s in enumerate(summary):
        xs = [p["iter"] for p in s["curve"]]
        line, = ax.plot(xs, [p["mean"] for p in s["curve"]], marker=markers[i % len(markers)],
                        markersize=4, color=colors[i % len(colors)],
                        label=f"{s['label']} ({_fmt(s['mean']['AP'])})")
        if len(s["seeds"]) > 1:
            ax.fill_between(xs, [p["min"] for p in s["curve"]], [p["max"] for p in s["curve"]],
                            color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_xlabel("iteration")
    ax.set_ylabel("segm AP")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7 if len(summary) > 10 else 8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              title="model (final segm AP)", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(data, prefix):
    """Write PREFIX.md, .csv and .png from a comparison's ``data`` (its json: command,
    setting, seeds, device, title, labels, results, missing, allowed_differences);
    returns the markdown text."""
    summary = summarize(data["results"], data["labels"])
    commits = data.get("run_commits") or sorted({r.get("commit") or "none recorded"
                                                 for r in data["results"]})
    header = [f"Written by tools/convergence.py from runs trained at commit "
              f"{', '.join(commits)}.", ""]
    for note in data.get("notes") or []:
        header += [note, ""]
    header += ["Command:", "", "```bash", data["command"], "```", "",
              f"Every model: {data['setting']}; seeds {data['seeds']}; "
              f"device: {data['device']}. Band in the chart: the seeds' range."]
    if data.get("allowed_differences"):
        header += ["", "Allowed to differ between runs: " + ", ".join(data["allowed_differences"])
                   + " (see the runs' overrides in the command)."]
    if data.get("missing"):
        header += ["", "Not finished, left out: " + "; ".join(data["missing"]) + "."]
    text = write_markdown(summary, prefix + ".md", header)
    write_csv(data["results"], prefix + ".csv")
    plot_curves(summary, prefix + ".png", data.get("title") or "segm AP during training")
    return text
