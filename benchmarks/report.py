"""Turns the harness's measurements into ratios, targets and output.

Every figure is set against a baseline measured in the same run: the
plain single-process loop for throughput and memory, Bytewax for
latency, a plain interpreter for start-up, and the same job without
checkpoints for the checkpoint workloads. This module computes those
ratios, checks them against the targets, and writes the Markdown
table, the JSON-ready summary, the history line and the chart.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness import Launch, Variant, Workload

MB = 1024 * 1024
# Average cores other processes kept busy during a run above which the
# run counts as shared: its figures say more about the neighbours.
BUSY_CORES = 0.3
# Must match harness.RESUME_EXTRA; repeated to keep this module free
# of a circular import.
RESUME_EXTRA = 1000


# --- summaries ------------------------------------------------------------


def summarize_workload(workload: Workload) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": workload.name,
        "description": workload.description,
        "ratio_kind": workload.ratio_kind,
        "available": workload.unavailable is None,
    }
    if workload.unavailable:
        out["reason"] = workload.unavailable
        out["variants"] = []
        return out
    rows = [summarize_variant(v) for v in workload.variants]
    base = next((r for r in rows if r["baseline"] and r["ok"]), None)
    for row in rows:
        row["ratio"] = _ratio(workload.ratio_kind, row, base)
    _check_records(rows, base)
    out["baseline"] = base["label"] if base else None
    out["variants"] = rows
    return out


def summarize_variant(variant: Variant) -> dict[str, Any]:
    """Medians and extras of one variant's runs.

    The figures come from the runs that had the CPU to themselves
    (other processes used < ``BUSY_CORES``) when there is at least one,
    else from all successful runs, and the row says which.
    """
    ok = [launch for launch in variant.launches if launch.error is None]
    quiet = [launch for launch in ok if launch.other_cores < BUSY_CORES]
    good = quiet or ok
    row: dict[str, Any] = {
        "label": variant.label,
        "engine": variant.engine,
        "workers": variant.workers,
        "baseline": variant.baseline,
        "ok": bool(good),
        "runs_used": f"{len(good)} {'quiet' if quiet else 'shared'}",
        "errors": [launch.error for launch in variant.launches if launch.error],
        "runs": [_launch_json(launch) for launch in variant.launches],
    }
    if not good:
        return row
    job = [launch.job_s for launch in good]
    run = [launch.run_s for launch in good]
    records = good[0].records
    row.update(
        job_s=statistics.median(job),
        job_min_s=min(job),
        job_max_s=max(job),
        run_s=statistics.median(run),
        records=records,
        throughput=records / statistics.median(job) if records else None,
        in_process_throughput=records / statistics.median(run)
        if records and any(run)
        else None,
        peak_rss=_peaks(good),
        other_cores_max=max(launch.other_cores for launch in good),
    )
    latency = [
        launch.results[0]["latency_ms"]
        for launch in good
        if "latency_ms" in launch.results[0]
    ]
    if latency:
        row["latency_ms"] = {
            q: statistics.median(entry[q] for entry in latency)
            for q in ("p50", "p99", "max")
        }
    cpu = _cpu_split(good)
    if cpu:
        row["cpu_s"] = cpu
    if variant.report_first:
        starts = [_time_to_first(launch) for launch in good]
        starts = [s for s in starts if s is not None]
        if starts:
            row["first_record_s"] = statistics.median(starts)
    if variant.checkpoint:
        row["checkpoints"] = _checkpoint_stats(good)
        row["resume"] = _resume_stats(variant.resumes)
    return row


def _cpu_split(launches: list[Launch]) -> dict[str, float]:
    """Median CPU seconds per process, as sage_mp jobs report them."""
    samples: dict[str, list[float]] = {}
    for launch in launches:
        for name, value in launch.results[0].get("cpu_s", {}).items():
            cpu = value["cpu"] if isinstance(value, dict) else value
            samples.setdefault(name, []).append(cpu)
    return {name: statistics.median(values) for name, values in samples.items()}


def _launch_json(launch: Launch) -> dict[str, Any]:
    return {
        "wall_s": launch.wall_s,
        "gen_s": launch.gen_s,
        "job_s": launch.job_s,
        "run_s": launch.run_s,
        "records": launch.records,
        "peak_rss": launch.peak_rss,
        "other_cores": round(launch.other_cores, 3),
        "first_record_s": _time_to_first(launch),
        "error": launch.error,
        "results": launch.results,
    }


def _peaks(launches: list[Launch]) -> dict[str, int]:
    peaks: dict[str, int] = {}
    for launch in launches:
        for label, rss in launch.peak_rss.items():
            peaks[label] = max(peaks.get(label, 0), rss)
    return peaks


def _time_to_first(launch: Launch) -> float | None:
    """Seconds from launch to the first record, less data generation."""
    if launch.first_record_at is None:
        return None
    return launch.first_record_at - launch.launched_at - launch.gen_s


def _checkpoint_stats(launches: list[Launch]) -> dict[str, Any]:
    taken = [c for launch in launches for c in launch.results[0].get("checkpoints", [])]
    per_run = [len(launch.results[0].get("checkpoints", [])) for launch in launches]
    if not taken:
        return {"count": 0}
    pauses = [_num(c.get("pause")) for c in taken]
    return {
        "count": statistics.median(per_run),
        "pause_max_ms": max(pauses) * 1e3,
        "pause_median_ms": statistics.median(pauses) * 1e3,
        "duration_max_ms": max(_num(c.get("duration")) for c in taken) * 1e3,
        "bytes_max": max(int(_num(c.get("bytes"))) for c in taken),
    }


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else 0.0


def _resume_stats(launches: list[Launch]) -> dict[str, Any]:
    good = [launch for launch in launches if launch.error is None]
    stats: dict[str, Any] = {
        "runs": len(launches),
        "errors": [launch.error for launch in launches if launch.error],
    }
    firsts = [s for s in (_time_to_first(launch) for launch in good) if s is not None]
    if firsts:
        stats["first_record_s"] = statistics.median(firsts)
    if good:
        first = good[0].results[0]
        stats["resumed_from"] = first.get("resumed_from")
        stats["processed"] = statistics.median(
            launch.results[0].get("processed") or 0 for launch in good
        )
        stats["job_s"] = statistics.median(launch.job_s for launch in good)
    return stats


def _ratio(kind: str, row: dict[str, Any], base: dict[str, Any] | None) -> float | None:
    """The row against the baseline; see the table legend for meanings."""
    if base is None or not row["ok"]:
        return None
    if kind == "speedup":
        return base["job_s"] / row["job_s"] if row["job_s"] > 0 else None
    if kind == "p99":
        mine, theirs = row.get("latency_ms"), base.get("latency_ms")
        if mine and theirs and theirs["p99"] > 0:
            return float(mine["p99"] / theirs["p99"])
        return None
    if kind == "rss":
        mine_peak, base_peak = (
            max(row["peak_rss"].values(), default=0),
            max(base["peak_rss"].values(), default=0),
        )
        return mine_peak / base_peak if base_peak else None
    return row["job_s"] / base["job_s"] if base["job_s"] > 0 else None


def _check_records(rows: list[dict[str, Any]], base: dict[str, Any] | None) -> None:
    """Flag a run that processed a different number of records."""
    if base is None:
        return
    for row in rows:
        if row["ok"] and row.get("records") != base.get("records"):
            row.setdefault("warnings", []).append(
                f"processed {row.get('records')} records, the baseline "
                f"{base.get('records')}"
            )


# --- targets --------------------------------------------------------------


@dataclass
class Target:
    name: str
    goal: str
    check: Callable[[dict[str, dict[str, Any]]], tuple[float | None, str]]
    passes: Callable[[float], bool]
    #: A column heading for ``--history``.
    short: str = ""


def _find(
    workloads: dict[str, dict[str, Any]], workload: str, label: str
) -> dict[str, Any] | None:
    rows = workloads.get(workload, {}).get("variants", [])
    return next((r for r in rows if r["label"] == label and r["ok"]), None)


def evaluate_targets(
    workloads: list[dict[str, Any]], workers: list[int]
) -> list[dict[str, Any]]:
    """Each target as PASS, MISS or not run, from same-run figures."""
    by_name = {w["name"]: w for w in workloads}
    results = []
    for target in build_targets(max(workers), min(workers)):
        value, text = target.check(by_name)
        if value is None:
            verdict = "not run"
        else:
            verdict = "PASS" if target.passes(value) else "MISS"
        results.append(
            {
                "target": target.name,
                "goal": target.goal,
                "measured": text,
                "value": value,
                "result": verdict,
            }
        )
    return results


def _x(ratio: float) -> str:
    """A ratio cut, not rounded, to two decimals: 1.697 misses a goal of
    1.7, so it must not print as 1.70."""
    return f"{math.floor(ratio * 100 + 1e-9) / 100:.2f}x"


def build_targets(most: int, least: int) -> list[Target]:
    sage_most, sage_least = f"sage_mp {most}w", f"sage_mp {least}w"

    def light_vs_bytewax(w: dict[str, dict[str, Any]]) -> tuple[float | None, str]:
        mine = _find(w, "light", sage_most)
        peers = [r for r in (_find(w, "light", f"bytewax {p}p") for p in (1, 2)) if r]
        if mine is None or not peers:
            return None, "needs light with Bytewax"
        best = min(peers, key=lambda r: r["job_s"])
        fastest_in = min(peers, key=lambda r: r["run_s"])
        ratio = best["job_s"] / mine["job_s"]
        inner = fastest_in["run_s"] / mine["run_s"]
        return ratio, f"{_x(ratio)} vs {best['label']} (in-process {_x(inner)})"

    def speedup(workload: str, over: str) -> Callable[..., tuple[float | None, str]]:
        def check(w: dict[str, dict[str, Any]]) -> tuple[float | None, str]:
            mine, base = _find(w, workload, sage_most), _find(w, workload, over)
            if mine is None or base is None:
                return None, f"needs {workload}: {sage_most} and {over}"
            ratio = base["job_s"] / mine["job_s"]
            inner = base["run_s"] / mine["run_s"] if mine["run_s"] else 0.0
            text = f"{_x(ratio)} (in-process {_x(inner)}"
            ceiling = _find(w, workload, f"plain loop x{most} (ceiling)")
            if over == "plain loop" and ceiling is not None and ceiling["job_s"]:
                # The goal stays the verdict; the ceiling says how much of
                # it this machine could give in this run.
                text += (
                    f"; the ceiling row reached {_x(base['job_s'] / ceiling['job_s'])}"
                )
            return ratio, text + ")"

        return check

    def checkpointed(w: dict[str, dict[str, Any]]) -> tuple[float | None, str]:
        mine = _find(w, "checkpointed", f"{sage_most} checkpoints")
        base = _find(w, "checkpointed", f"{sage_most} no checkpoints")
        if mine is None or base is None:
            return None, _unavailable(w, "checkpointed")
        ratio = base["job_s"] / mine["job_s"]
        return ratio, f"{_x(ratio)} of light without checkpoints"

    def latency(w: dict[str, dict[str, Any]]) -> tuple[float | None, str]:
        mine = _find(w, "latency", sage_most)
        if mine is None or "latency_ms" not in mine:
            return None, "needs latency"
        p99 = mine["latency_ms"]["p99"]
        return p99, f"p99 {p99:.1f} ms ({sage_most})"

    def pause(w: dict[str, dict[str, Any]]) -> tuple[float | None, str]:
        mine = _find(w, "big-state", f"{sage_most} checkpoints")
        if mine is None or not mine.get("checkpoints", {}).get("count"):
            return None, _unavailable(w, "big-state")
        worst = mine["checkpoints"]["pause_max_ms"]
        return worst, f"max pause {worst:.1f} ms"

    def memory(w: dict[str, dict[str, Any]]) -> tuple[float | None, str]:
        mine = _find(w, "memory", sage_most)
        if mine is None:
            return None, "needs memory"
        label, worst = max(mine["peak_rss"].items(), key=lambda kv: kv[1])
        return worst / MB, f"max {worst / MB:.0f} MB ({label})"

    def startup(w: dict[str, dict[str, Any]]) -> tuple[float | None, str]:
        mine = _find(w, "startup", "sage_mp (default workers)")
        if mine is None:
            return None, "needs startup"
        return mine["job_s"], f"{mine['job_s']:.2f} s"

    return [
        Target(
            f"light: {sage_most} vs Bytewax (its faster run)",
            ">= 3x",
            light_vs_bytewax,
            lambda v: v >= 3.0,
            f"light {most}w vs Bytewax",
        ),
        Target(
            f"heavy: {sage_most} vs {sage_least}",
            ">= 1.8x",
            speedup("heavy", sage_least),
            lambda v: v >= 1.8,
            f"heavy {most}w vs {least}w",
        ),
        Target(
            f"heavy: {sage_most} vs plain loop",
            ">= 1.7x",
            speedup("heavy", "plain loop"),
            lambda v: v >= 1.7,
            f"heavy {most}w vs plain",
        ),
        Target(
            "checkpointed vs light",
            ">= 0.9x",
            checkpointed,
            lambda v: v >= 0.9,
            "checkpointed",
        ),
        Target("latency p99", "< 50 ms", latency, lambda v: v < 50.0, "p99"),
        Target(
            "big-state checkpoint pause per worker",
            "< 100 ms",
            pause,
            lambda v: v < 100.0,
            "big-state pause",
        ),
        Target(
            "memory: peak RSS per process",
            "< 300 MB",
            memory,
            lambda v: v < 300.0,
            "peak RSS",
        ),
        Target(
            "startup: trivial job via python -m sage_mp run",
            "< 1 s",
            startup,
            lambda v: v < 1.0,
            "startup",
        ),
    ]


def _unavailable(w: dict[str, dict[str, Any]], name: str) -> str:
    entry = w.get(name)
    if entry is not None and not entry["available"]:
        return entry["reason"]
    return f"needs {name}"


# --- output ---------------------------------------------------------------

LEGEND = (
    "job s: whole-job wall time of a fresh process, start-up included and "
    "data generation excluded, as median (min-max). vs baseline: speed-up "
    "for throughput workloads (higher is better); p99 ratio for latency, "
    "peak-RSS ratio for memory, wall-time ratio for startup (lower is "
    "better). in-process s: what the job timed around its own run."
)
TABLE_HEAD = (
    "| workload | engine | job s | records/s | vs baseline | in-process s "
    "| peak RSS MB | detail |"
)


def render_markdown(report: dict[str, Any]) -> str:
    """The results table and the targets table, as Markdown."""
    lines = [
        f"## sage_mp benchmarks, {report['meta']['date']}",
        "",
        _setting(report["meta"]),
        "",
        LEGEND,
        "",
        TABLE_HEAD,
        "|---|---|---|---|---|---|---|---|",
    ]
    for workload in report["workloads"]:
        lines += _workload_lines(workload)
    lines += ["", "### Targets", "", "| target | goal | measured | result |"]
    lines.append("|---|---|---|---|")
    for t in report["targets"]:
        lines.append(
            f"| {t['target']} | {t['goal']} | {t['measured']} | {t['result']} |"
        )
    for note in [*report["meta"]["notes"], *_busy_notes(report)]:
        lines += ["", f"Note: {note}"]
    return "\n".join(lines)


def _busy_notes(report: dict[str, Any]) -> list[str]:
    loads = [
        run["other_cores"]
        for workload in report["workloads"]
        for row in workload.get("variants", [])
        for run in row["runs"]
    ]
    shared = [load for load in loads if load >= BUSY_CORES]
    if not shared:
        return []
    return [
        f"{len(shared)} of {len(loads)} runs shared the CPU with other "
        f"processes (up to {max(shared):.1f} cores on average). Each row "
        "uses only its quiet runs when it has any; rows marked 'every run "
        "shared the CPU' are unreliable. Rerun on a quiet machine, or "
        "with --settle."
    ]


def _setting(meta: dict[str, Any]) -> str:
    machine = meta["machine"]
    text = (
        f"{machine['cpu_model']}, {machine['cores']} cores, Python "
        f"{machine['python']}; sage_mp {meta['sage_mp']}, Bytewax "
        f"{meta['bytewax'] or 'not run'}; size {meta['size']}, "
        f"{meta['repeat']} runs each"
    )
    if meta["heavy_loops"]:
        text += (
            f"; heavy: {meta['heavy_loops']} loops of burn() = "
            f"{meta['heavy_burn_us']} us per event"
        )
    return text


def _workload_lines(workload: dict[str, Any]) -> list[str]:
    name = workload["name"]
    if not workload["available"]:
        return [f"| {name} | - | {workload['reason']} | | | | | |"]
    lines = []
    for row in workload["variants"]:
        label = row["label"] + (" (baseline)" if row["baseline"] else "")
        if not row["ok"]:
            error = _cell((row["errors"] or ["no runs"])[0])[:160]
            lines.append(f"| {name} | {label} | failed | | | | | {error} |")
            continue
        spread = f"{row['job_s']:.2f} ({row['job_min_s']:.2f}-{row['job_max_s']:.2f})"
        cells = [
            name,
            label,
            spread,
            _rate(row.get("throughput")),
            _ratio_text(row["ratio"]),
            f"{row['run_s']:.2f}",
            _rss_text(row["peak_rss"]),
            _detail(row),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")


def _rate(value: float | None) -> str:
    if not value:
        return "-"
    if value >= 1e6:
        return f"{value / 1e6:.2f} M"
    if value >= 1e3:
        return f"{value / 1e3:.0f} k"
    return f"{value:.0f}"


def _ratio_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _rss_text(peaks: dict[str, int]) -> str:
    if not peaks:
        return "-"
    if len(peaks) == 1:
        return f"{next(iter(peaks.values())) / MB:.0f}"
    return ", ".join(f"{label} {rss / MB:.0f}" for label, rss in sorted(peaks.items()))


def _detail(row: dict[str, Any]) -> str:
    parts = []
    if "latency_ms" in row:
        lat = row["latency_ms"]
        parts.append(f"p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms")
    if "cpu_s" in row:
        split = ", ".join(f"{name} {cpu:.2f}" for name, cpu in row["cpu_s"].items())
        parts.append(f"cpu s: {split}")
    if "first_record_s" in row:
        parts.append(f"first record after {row['first_record_s']:.2f} s")
    if "checkpoints" in row:
        parts.append(_checkpoint_text(row["checkpoints"]))
    if row.get("resume"):
        parts += _resume_text(row["resume"])
    parts += row.get("warnings", [])
    if row["other_cores_max"] >= BUSY_CORES:
        parts.append(
            f"every run shared the CPU: others used up to "
            f"{row['other_cores_max']:.1f} cores"
        )
    return _cell("; ".join(parts))


def _checkpoint_text(ckpt: dict[str, Any]) -> str:
    if not ckpt.get("count"):
        return "no checkpoints reported"
    return (
        f"{ckpt['count']:g} checkpoints, pause max {ckpt['pause_max_ms']:.0f} ms, "
        f"duration max {ckpt['duration_max_ms']:.0f} ms, "
        f"{ckpt['bytes_max'] / MB:.1f} MB"
    )


def _resume_text(resume: dict[str, Any]) -> list[str]:
    parts = [f"resume failed: {error[:120]}" for error in resume["errors"][:1]]
    if "first_record_s" in resume:
        parts.append(
            f"resumed from checkpoint {resume.get('resumed_from')}: first record "
            f"after {resume['first_record_s']:.2f} s, "
            f"{resume['processed']:,.0f} records processed ({RESUME_EXTRA} new)"
        )
    return parts


def history_entry(report: dict[str, Any]) -> dict[str, Any]:
    """The compact line ``--record`` appends to history.jsonl."""
    meta = report["meta"]
    machine = meta["machine"]
    return {
        "date": meta["date"],
        "machine": f"{machine['cpu_model']}, {machine['cores']} cores",
        "sage_mp": meta["sage_mp"],
        "bytewax": meta["bytewax"],
        "size": meta["size"],
        "repeat": meta["repeat"],
        "rows": [
            _history_row(workload["name"], row)
            for workload in report["workloads"]
            for row in workload.get("variants", [])
            if row["ok"]
        ],
        "targets": {
            t["target"]: [t["measured"], t["result"]] for t in report["targets"]
        },
        # The figures uncut, and what they are held to, for --history.
        "values": {
            t["target"]: t["value"] for t in report["targets"] if t["value"] is not None
        },
        "goals": {t["target"]: t["goal"] for t in report["targets"]},
    }


def _history_row(workload: str, row: dict[str, Any]) -> dict[str, Any]:
    entry = {
        "workload": workload,
        "engine": row["label"],
        "job_s": round(row["job_s"], 4),
        "throughput": round(row["throughput"] or 0.0, 1),
        "ratio": None if row["ratio"] is None else round(row["ratio"], 3),
    }
    if "latency_ms" in row:
        entry["p99_ms"] = round(row["latency_ms"]["p99"], 2)
    return entry


_COLORS = {"baseline": "#888888", "sage_mp": "#1f77b4", "peer": "#ff7f0e"}


def draw_chart(report: dict[str, Any], path: str) -> None:
    """One panel per workload: each engine's ratio against the baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [w for w in report["workloads"] if w["available"] and w.get("baseline")]
    bars = sum(len(w["variants"]) for w in panels)
    height = 1.2 + 0.45 * bars + 0.6 * len(panels)
    fig, axes = plt.subplots(max(1, len(panels)), 1, figsize=(8, height), squeeze=False)
    for axis, workload in zip(axes[:, 0], panels, strict=False):
        _draw_panel(axis, workload)
    meta = report["meta"]
    title = f"sage_mp benchmarks {meta['date'][:10]}, size {meta['size']}"
    fig.suptitle(title, fontsize=10)
    # Leave the title a strip of its own above the first panel.
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / height))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _draw_panel(axis: Any, workload: dict[str, Any]) -> None:
    rows = [r for r in workload["variants"] if r["ratio"] is not None]
    values = [r["ratio"] for r in rows]
    colors = [
        _COLORS["baseline" if r["baseline"] else r["engine"]]
        if r["baseline"] or r["engine"] == "sage_mp"
        else _COLORS["peer"]
        for r in rows
    ]
    axis.barh([r["label"] for r in rows], values, color=colors)
    axis.axvline(1.0, color="black", linewidth=0.8)
    axis.invert_yaxis()
    better = "higher" if workload["ratio_kind"] == "speedup" else "lower"
    axis.set_title(
        f"{workload['name']}: vs {workload['baseline']} ({better} is better)",
        fontsize=9,
    )
    for y, value in enumerate(values):
        axis.text(value, y, f" {value:.2f}x", va="center", fontsize=8)
