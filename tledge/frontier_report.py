"""The frontier's result as a Markdown table, a JSON file and an accuracy-vs-latency plot."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tledge.frontier import TASKS


def _pct(stat: dict) -> str:
    if not stat.get("episodes") or not math.isfinite(stat["mean"]):
        return "–"
    return f"{100 * stat['mean']:.1f} ± {100 * stat['ci95']:.1f}"


def _diff(stat: dict) -> str:
    if not stat.get("episodes") or not math.isfinite(stat["difference"]):
        return "–"
    return f"{100 * stat['difference']:+.1f} ± {100 * stat['ci95']:.1f}"


def format_frontier(result: dict) -> str:
    """Two Markdown tables: the measurements, then paired differences to the first model."""
    opts = result["options"]
    tasks = [t[0] for t in TASKS] + list(result.get("transfer", {}))
    head = " | ".join(f"{t} (%)" for t in tasks)
    lines = [f"{result['data']}: " + ", ".join(
                 f"{k} {v['way']}-way × {v['episodes']} episodes" for k, v in
                 result["tasks"].items())
             + "".join(f"; {k}: {v['queries']} images of {len(v['classes'])} classes against "
                       "galleries of every DATA image" for k, v in result.get("transfer",
                                                                              {}).items())
             + f"; {opts['query']} queries per class; latency at batch 1, {opts['threads']} "
               f"threads, {opts['repeats']} calls; Pareto on {opts['metric']} vs p50",
             "", f"| model | precision | input | {head} | open-set AUROC | p50 ms | p95 ms | "
                 "file MB | memory MB | Pareto |",
             "|---" * (9 + len(tasks)) + "|"]
    for r in result["models"]:
        accs = " | ".join(_pct(r["accuracy"][t]) for t in tasks)
        auroc = r["auroc"]
        auroc_s = (f"{auroc['mean']:.3f} ± {auroc['ci95']:.3f}" if auroc["episodes"] else "–")
        lines.append(f"| {r['name']} ({r['backbone']}) | {r['precision']} | {r['input_size']} | "
                     f"{accs} | {auroc_s} | {r['latency_ms']['p50']:.2f} | "
                     f"{r['latency_ms']['p95']:.2f} | {r['file_mb']:.1f} | "
                     f"{r['memory_mb']:.0f} | {'**yes**' if r['pareto'] else ''} |")
    first = result["models"][0]["name"]
    lines += ["", f"Paired differences to {first} on the same episodes (points, 95% CI):", "",
              "| model | " + " | ".join(tasks) + " | AUROC |", "|---" * (len(tasks) + 2) + "|"]
    for r in result["models"][1:]:
        auroc = r["vs_first"].get("auroc")
        auroc_s = (f"{auroc['difference']:+.3f} ± {auroc['ci95']:.3f}"
                   if auroc and auroc["episodes"] else "–")
        lines.append(f"| {r['name']} | " + " | ".join(_diff(r["vs_first"][t]) for t in tasks)
                     + f" | {auroc_s} |")
    return "\n".join(lines)


def write_json(result: dict, path: Path) -> Path:
    """The whole result, per-episode figures included (so any paired test can be redone)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=1, allow_nan=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # never a half-written file under the final name
    return path


def plot_frontier(result: dict, path: Path) -> bool:
    """Accuracy (the options' metric, with its 95% interval) against p50 latency; Pareto
    models filled and joined; each point numbered, the numbers named in a key beside the
    plot. False, with nothing written, when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    metric, rows, opts = result["options"]["metric"], result["models"], result["options"]
    fig, ax = plt.subplots(figsize=(10.5, 5.8))
    fig.subplots_adjust(left=0.07, right=0.68, top=0.93, bottom=0.1)
    points = []
    for i, r in enumerate(rows):
        x, acc = r["latency_ms"]["p50"], r["accuracy"][metric]
        colour = "#c0392b" if r["pareto"] else "#7f8c8d"
        ax.errorbar(x, 100 * acc["mean"], yerr=100 * acc["ci95"], fmt="o", color=colour,
                    mfc=colour if r["pareto"] else "white", capsize=3)
        points.append((x, 100 * acc["mean"], str(i + 1), r["pareto"]))
    front = sorted((p[0], p[1]) for p in points if p[3])
    if len(front) > 1:
        ax.step(*zip(*front), where="post", color="#c0392b", lw=1, alpha=0.6,
                label="Pareto front")
        ax.legend(loc="lower right")
    ax.set(xlabel=f"latency p50 at batch 1, {opts['threads']} threads (ms)",
           ylabel=f"{metric} accuracy (%), 95% CI", title=f"tledge frontier — {result['data']}")
    ax.grid(alpha=0.3)
    _number_points(fig, ax, points)
    key = "\n".join(f"{i + 1:>2}{'*' if r['pareto'] else ' '} {Path(r['name']).stem} "
                    f"({r['precision']})" for i, r in enumerate(rows))
    fig.text(0.70, 0.93, key + "\n\n * Pareto-optimal", va="top", fontsize=8,
             family="monospace")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _number_points(fig, ax, points: list[tuple[float, float, str, bool]]) -> None:
    """Each point's number beside it; a number that would cover another moves up or down
    in small steps (a thin line then leads back to its point)."""
    from matplotlib.transforms import offset_copy

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    placed = []
    for x, y, name, pareto in sorted(points, key=lambda p: (not p[3], p[0])):
        for step in range(24):
            dy = (step + 1) // 2 * 7 * (1 if step % 2 else -1)
            where = offset_copy(ax.transData, fig=fig, x=5, y=dy - 3, units="points")
            text = ax.text(x, y, name, transform=where, fontsize=8,
                           fontweight="bold" if pareto else "normal",
                           color="#c0392b" if pareto else "#444")
            box = text.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed) or step == 23:
                placed.append(box)
                if dy:
                    lead = offset_copy(ax.transData, fig=fig, x=5, y=dy, units="points")
                    ax.annotate("", (x, y), xytext=(x, y), textcoords=lead,
                                arrowprops=dict(arrowstyle="-", lw=0.4, color="#aaa"))
                break
            text.remove()
