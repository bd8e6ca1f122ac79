"""The report of ``xmask bench``: per image, per density bin and in total, as JSON and as text
(:mod:`xmask.apps.bench` runs the timings)."""

from __future__ import annotations

import resource
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from xmask.inference.predictor import Predictor
from xmask.types import Sample

DENSE = 1000
"""Images with at least this many heads make ``post_network_share_over_1000_heads``."""


@dataclass
class Timed:
    """One method's seconds per selected image (None: not run on it; the median of its
    ``calls``), and its set-up."""

    name: str
    description: str
    seconds: list[float | None] = field(default_factory=list)
    calls: list[list[float]] = field(default_factory=list)
    load_s: float = 0.0
    rss_mb_after: float = 0.0
    status: str = "ok"
    reason: str = ""


def bin_of(heads: int, edges: Sequence[int]) -> int:
    """Index of the bin ``[edges[i], edges[i+1])`` (the last one open) holding ``heads``."""
    return int(np.searchsorted(np.asarray(edges), heads, side="right")) - 1


def bin_ratio(bins: Sequence[int], seconds: Sequence[float | None]) -> float | None:
    """The slowest bin's mean seconds over the fastest's, among the bins holding images (None:
    fewer than two bins, or an image the method did not run on)."""
    members: dict[int, list[float]] = {}
    for index, value in zip(bins, seconds, strict=True):
        if value is None:
            return None
        members.setdefault(index, []).append(value)
    means = [float(np.mean(values)) for values in members.values()]
    return max(means) / min(means) if len(means) > 1 else None


def _ratios(bins: Sequence[int], timed: Timed) -> dict[str, Any]:
    """:func:`bin_ratio` of the medians, and its lowest and highest over the timed calls (the
    ratio of every image's first call, of every image's second, ...)."""
    per_call = [bin_ratio(bins, list(call)) for call in zip(*timed.calls, strict=True)]
    kept = [r for r in per_call if r is not None]
    return {
        "median_calls": bin_ratio(bins, timed.seconds),
        "spread_over_calls": [min(kept), max(kept)] if kept else None,
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (``ru_maxrss``, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_report(
    setup: dict[str, Any],
    edges: Sequence[int],
    samples: Sequence[Sample],
    heads_of: dict[str, int],
    predictor: Predictor,
    xmask: Timed,
    own: Timed,
    predictions: Sequence[Any],
    methods: Sequence[Timed],
    skipped: list[dict[str, str]],
) -> dict[str, Any]:
    """The JSON-ready report of :func:`run_bench`."""
    post = [p.post_s for p in predictions]
    network = [p.network_s for p in predictions]
    total = [float(s) for s in xmask.seconds if s is not None]
    bins = [bin_of(heads_of[s.name], edges) for s in samples]
    dense = [i for i, s in enumerate(samples) if s.count >= DENSE]
    per_image = []
    for i, (sample, prediction) in enumerate(zip(samples, predictions, strict=True)):
        row = {
            "name": sample.name,
            "heads": sample.count,
            "heads_in_file": heads_of[sample.name],
            "size": f"{sample.size[1]}x{sample.size[0]}",
            "predicted_count": prediction.count,
            "segmented_heads": int((prediction.areas > 0).sum()),
            "xmask_s": total[i],
            "xmask_network_s": network[i],
            "xmask_post_s": post[i],
            "xmask_predicted_s": own.seconds[i],
        }
        row |= {f"{m.name}_s": m.seconds[i] for m in methods}
        per_image.append(row)
    report: dict[str, Any] = {
        "setup": setup
        | {
            "device": str(predictor.device),
            "torch_threads": torch.get_num_threads(),
            "xmask_model": xmask.description,
            "count_rule": predictor.count_rule.describe(),
            "xmask_load_s": xmask.load_s,
        },
        "images": len(samples),
        "heads": sum(s.count for s in samples),
        "segmented_heads": sum(r["segmented_heads"] for r in per_image),
        "predicted_count": sum(p.count for p in predictions),
        "bins": _bins(edges, bins, samples, per_image, methods),
        "slowest_over_fastest_bin": {
            timed.name: _ratios(bins, timed) for timed in (xmask, own, *methods)
        },
        "xmask_s_per_image": _mean(total),
        "xmask_network_s_per_image": _mean(network),
        "xmask_post_s_per_image": _mean(post),
        "xmask_predicted_s_per_image": _mean(own.seconds),
    }
    for m in methods:
        report[f"{m.name}_s_per_image"] = _mean(m.seconds)
    report |= {
        "post_network_share": _share(post, total),
        "post_network_share_over_1000_heads": _share(
            [post[i] for i in dense], [total[i] for i in dense]
        ),
        "peak_rss_mb": peak_rss_mb(),
        "rss_mb_after": {"xmask": xmask.rss_mb_after}
        | {m.name: m.rss_mb_after for m in methods if m.status == "ok"},
        "baselines": {
            m.name: {
                "description": m.description,
                "status": m.status,
                "reason": m.reason,
                "load_s": m.load_s,
            }
            for m in methods
        },
        "per_image": per_image,
        "skipped": skipped,
    }
    return report


def _bins(
    edges: Sequence[int],
    bins: Sequence[int],
    samples: Sequence[Sample],
    rows: Sequence[dict[str, Any]],
    methods: Sequence[Timed],
) -> list[dict[str, Any]]:
    """Per-bin image counts, heads and mean seconds of every method."""
    out = []
    names = ["xmask", "xmask_predicted", *(m.name for m in methods)]
    for index, lo in enumerate(edges):
        members = [i for i, b in enumerate(bins) if b == index]
        entry: dict[str, Any] = {
            "lo": lo,
            "hi": edges[index + 1] if index + 1 < len(edges) else None,
            "images": len(members),
            "heads": sum(samples[i].count for i in members),
        }
        for name in names:
            entry[f"{name}_s"] = _mean([rows[i][f"{name}_s"] for i in members])
        out.append(entry)
    return out


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def format_report(report: dict[str, Any]) -> str:
    """Human-readable table of a :func:`run_bench` report."""
    setup = report["setup"]
    names = [key[: -len("_s_per_image")] for key in report if key.endswith("_s_per_image")]
    names = [n for n in names if n not in ("xmask_network", "xmask_post")]
    lines = [
        f"ShanghaiTech A {setup['split']} ({setup['root']}): {report['images']} images, "
        f"first {setup['per_bin']} per bin, device {setup['device']}, "
        f"torch threads {setup['torch_threads']}, 1 warm-up call per method",
        f"xmask: {setup['xmask_model']}, count threshold {setup['count_rule']}",
        "",
        "| heads | images | " + " | ".join(f"{n} s" for n in names) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in names) + " |",
    ]
    for entry in report["bins"]:
        hi = "∞" if entry["hi"] is None else entry["hi"]
        cells = " | ".join(_seconds(entry[f"{n}_s"]) for n in names)
        lines.append(f"| [{entry['lo']}, {hi}) | {entry['images']} | {cells} |")
    cells = " | ".join(_seconds(report[f"{n}_s_per_image"]) for n in names)
    lines.append(f"| all | {report['images']} | {cells} |")
    share, dense = report["post_network_share"], report["post_network_share_over_1000_heads"]
    lines += [
        "",
        f"heads {report['heads']:,} (ground truth), {report['segmented_heads']:,} with a "
        f"non-empty xmask mask; xmask's own count {report['predicted_count']:,}",
        f"xmask per image: network {_seconds(report['xmask_network_s_per_image'])} s, "
        f"after the network {_seconds(report['xmask_post_s_per_image'])} s "
        f"(share {_percent(share)}; images with >= {DENSE} heads: {_percent(dense)})",
        "slowest bin / fastest bin (of the medians; lowest–highest over the timed calls): "
        + ", ".join(
            f"{name} {_times(ratio['median_calls'])} ({_spread(ratio['spread_over_calls'])})"
            for name, ratio in report["slowest_over_fastest_bin"].items()
        ),
        f"peak RSS {report['peak_rss_mb']:,.0f} MiB",
    ]
    for name, info in report["baselines"].items():
        what = {"ok": info["description"], "unavailable": f"not run: {info['reason']}"}.get(
            info["status"], f"skipped: {info['reason']}"
        )
        lines.append(f"{name}: {what}")
    lines += [f"skipped {s['name']}: {s['problem']}" for s in report["skipped"]]
    return "\n".join(lines)


def _times(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _spread(values: list[float] | None) -> str:
    return "—" if values is None else f"{values[0]:.2f}–{values[1]:.2f}"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _share(post: Sequence[float], total: Sequence[float]) -> float | None:
    return float(sum(post) / sum(total)) if total and sum(total) > 0 else None
