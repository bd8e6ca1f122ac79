"""``docs/accuracy.md`` from the runs of ``benchmarks/accuracy.py``: counting error by variant,
density and head size, the lattice count, the resolution test, cross-part generalisation and the
worst images, for a model before and after a change.

    python benchmarks/accuracy_report.py --work work/accuracy --before before --after after \\
        [--cross-a a-only --cross-b b-only] [--out docs/accuracy.md]

``--cross-a`` names the run of a model trained on ShanghaiTech A alone (its ``shb`` files are
the A → B figures), ``--cross-b`` one trained on B alone (its ``sha`` files). The overlays of the
worst images come from ``benchmarks/accuracy.py gallery`` (not committed: they are dataset
images).
"""

from __future__ import annotations

import argparse
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from accuracy import HEAD_EDGES, PARTS, VARIANTS

DENSITY_EDGES = (0, 50, 100, 250, 500, 1000)
SIZE_EDGES = (0.0, 8.0, 16.0, 32.0)
"""Lower edges of the image-level head-size bins (median nearest-neighbour distance, px)."""


def load(work: Path, label: str, part: str, variant: str) -> list[dict[str, Any]]:
    """Records of one run file (a truncated last line is skipped); [] when absent."""
    path = work / label / f"{part}-{variant}.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def errors(rows: list[dict[str, Any]]) -> dict[str, float]:
    """MAE, RMSE, bias, mean relative error, share of images off by more than 30 %, F1."""
    if not rows:
        return {}
    gt = np.array([r["gt"] for r in rows], float)
    pred = np.array([r["pred"] for r in rows], float)
    err = pred - gt
    rel = np.abs(err) / np.maximum(gt, 1.0)
    out = {
        "images": len(rows),
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "bias": float(err.mean()),
        "mre": float(rel.mean() * 100),
        "off30": float((rel > 0.3).mean() * 100),
        "lattice": int(sum(r["lattice_blocks"] > 0 for r in rows)),
        "passes2": int(sum(r["passes"] == 2 for r in rows)),
        "seconds": float(np.mean([r["seconds"] for r in rows])),
    }
    for k in (4, 8):
        tp = sum(r[f"tp{k}"] for r in rows)
        out[f"f1_{k}"] = 2 * tp / max(gt.sum() + pred.sum(), 1.0)
    return out


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def summary_table(work: Path, labels: list[str]) -> list[str]:
    lines = [
        "| model | part | variant | images | MAE | RMSE | bias | rel. error | > 30 % off "
        "| F1@4 | F1@8 | lattice images | enlarged | s/image |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label in labels:
        for part in PARTS:
            for variant in VARIANTS:
                e = errors(load(work, label, part, variant))
                if not e:
                    continue
                lines.append(
                    f"| {label} | {PARTS[part]} | {variant} | {e['images']} | {fmt(e['mae'])} "
                    f"| {fmt(e['rmse'])} | {fmt(e['bias'], 1)} | {fmt(e['mre'], 1)} % "
                    f"| {fmt(e['off30'], 1)} % | {fmt(e['f1_4'], 3)} | {fmt(e['f1_8'], 3)} "
                    f"| {e['lattice']} | {e['passes2']} | {fmt(e['seconds'])} |"
                )
    return lines


def robustness(work: Path, labels: list[str]) -> list[str]:
    lines = [
        "| model | part | grey / x1 | x0.5 / x1 | x2 / x1 | x4 / x1 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for label in labels:
        for part in PARTS:
            base = errors(load(work, label, part, "x1"))
            if not base:
                continue
            cells = []
            for variant in ("grey", "x0.5", "x2", "x4"):
                e = errors(load(work, label, part, variant))
                cells.append(fmt(e["mae"] / base["mae"]) if e else "–")
            lines.append(f"| {label} | {PARTS[part]} | " + " | ".join(cells) + " |")
    return lines


def binned(rows: list[dict[str, Any]], key: str, edges: tuple[float, ...]) -> list[list[dict]]:
    out: list[list[dict]] = [[] for _ in edges]
    for row in rows:
        value = row[key]
        if value is None:
            continue
        out[int(np.searchsorted(edges, value, side="right") - 1)].append(row)
    return out


def bin_label(edges: tuple[float, ...], i: int, unit: str = "") -> str:
    hi = f"{edges[i + 1]:g}" if i + 1 < len(edges) else "∞"
    return f"[{edges[i]:g}, {hi}){unit}"


def bin_table(work: Path, labels: list[str], key: str, edges: tuple, title: str) -> list[str]:
    lines = [
        f"| model | part | {title} | images | MAE | bias | rel. error |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for label in labels:
        for part in PARTS:
            for i, rows in enumerate(binned(load(work, label, part, "x1"), key, edges)):
                e = errors(rows)
                if e:
                    lines.append(
                        f"| {label} | {PARTS[part]} | {bin_label(edges, i)} | {e['images']} "
                        f"| {fmt(e['mae'])} | {fmt(e['bias'], 1)} | {fmt(e['mre'], 1)} % |"
                    )
    return lines


def recall_by_head_size(work: Path, labels: list[str]) -> list[str]:
    head = " | ".join(bin_label(HEAD_EDGES, i, " px") for i in range(len(HEAD_EDGES)))
    lines = [f"| model | part | {head} |", "|---|---|" + "---:|" * len(HEAD_EDGES)]
    for label in labels:
        for part in PARTS:
            rows = load(work, label, part, "x1")
            if not rows:
                continue
            heads = np.sum([r["heads_by_size"] for r in rows], axis=0)
            found = np.sum([r["found_by_size"] for r in rows], axis=0)
            cells = [
                f"{f / h:.3f} ({h:,})" if h else "–" for f, h in zip(found, heads, strict=True)
            ]
            lines.append(f"| {label} | {PARTS[part]} | " + " | ".join(cells) + " |")
    return lines


def resolution_table(work: Path, labels: list[str]) -> list[str]:
    lines = ["| model | image | true | " + " | ".join(f"{w} px" for w in (1024, 2048, 3000, 4000))
             + " | spread |", "|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for label in labels:
        path = work / label / "resolution.json"
        if not path.is_file():
            continue
        rows = json.loads(path.read_text(encoding="utf-8"))
        for part in ("shb", "sha"):
            mine = [r for r in rows if r["part"] == part]
            counts = [r["pred"] for r in mine]
            spread = (max(counts) - min(counts)) / max(min(counts), 1) * 100
            cells = " | ".join(f"{c:,}" for c in counts)
            lines.append(
                f"| {label} | {PARTS[part]} test IMG_1 | {mine[0]['gt']:,} | {cells} "
                f"| {spread:.0f} % |"
            )
    return lines


def worst(work: Path, label: str, n: int) -> list[str]:
    lines = [
        "| part | image | true | predicted | error | head size (px) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    rows = [(p, r) for p in PARTS for r in load(work, label, p, "x1")]
    rows.sort(key=lambda pr: -abs(pr[1]["pred"] - pr[1]["gt"]) / max(pr[1]["gt"], 1))
    for part, r in rows[:n]:
        lines.append(
            f"| {PARTS[part]} | {r['name']} | {r['gt']:,} | {r['pred']:,} "
            f"| {(r['pred'] - r['gt']) / max(r['gt'], 1) * 100:+.0f} % | {fmt(r['head_px'], 1)} |"
        )
    return lines


def meta(work: Path, label: str) -> str:
    path = work / label / "meta.json"
    if not path.is_file():
        return f"- `{label}`: no run"
    m = json.loads(path.read_text(encoding="utf-8"))
    model = Path(m["model"]).name
    return (
        f"- `{label}`: model `{model}`, count rule {m['count_rule']}, {m['scale']}; {m['machine']}"
    )


def report(args: argparse.Namespace) -> str:
    work = Path(args.work)
    labels = [args.before, *args.after]
    out = [
        "# Counting accuracy: where the counts go wrong, before and after",
        "",
        "Generated by `benchmarks/accuracy_report.py` from the runs of `benchmarks/accuracy.py`"
        f" ({datetime.now(timezone.utc):%Y-%m-%d}); rerun both to refresh it. Test sets of "
        "ShanghaiTech A (182 images) and B (316 images), as they are (`x1`), in greyscale, and "
        "rescaled ×0.5, ×2 and ×4 (bicubic; points scaled with them). Relative error: "
        "|predicted − true| / true per image, averaged. Localisation F1 in pixels of the `x1` "
        "image. A *lattice* image has a 32×32-px block of the network input where at least 32 "
        "of its 64 cells are predicted heads and predictions outnumber true heads by 1.25× or "
        "more. *Enlarged*: images where the scale rule ran the second, enlarged pass.",
        "",
        *[meta(work, label) for label in labels],
        *[f"- `{label}`: {text}" for label, text in (p.split("=", 1) for p in args.describe)],
        "",
        "## All variants",
        "",
        *summary_table(work, labels),
        "",
        "## Robustness: MAE of each variant over MAE as it is",
        "",
        *robustness(work, labels),
        "",
        "## By density (true heads per image, `x1`)",
        "",
        *bin_table(work, labels, "gt", DENSITY_EDGES, "true heads"),
        "",
        "## By head size (median distance of a true head to its nearest neighbour, `x1`)",
        "",
        *bin_table(work, labels, "head_px", SIZE_EDGES, "head size (px)"),
        "",
        "## Heads found (recall at 8 px) by head size (`x1`; heads in brackets)",
        "",
        *recall_by_head_size(work, labels),
        "",
        "## Resolution: one scene at four sizes",
        "",
        *resolution_table(work, labels),
        "",
    ]
    if args.cross_a or args.cross_b:
        cross = []
        for label, part in ((args.cross_a, "shb"), (args.cross_b, "sha")):
            if label:
                rows = load(work, label, part, "x1")
                e = errors(rows)
                if e:
                    cross.append(
                        f"| {label} | {PARTS[part]} | {e['images']} | {fmt(e['mae'])} "
                        f"| {fmt(e['rmse'])} | {fmt(e['bias'], 1)} | {fmt(e['mre'], 1)} % |"
                    )
        out += [
            "## Cross-part generalisation (trained on one part, tested on the other)",
            "",
            "| model | tested on | images | MAE | RMSE | bias | rel. error |",
            "|---|---|---:|---:|---:|---:|---:|",
            *cross,
            "",
        ]
    out += [
        f"## The worst images of `{labels[-1]}` (`x1`, by relative error)",
        "",
        *worst(work, labels[-1], args.worst),
        "",
    ]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", required=True)
    parser.add_argument("--before", required=True)
    parser.add_argument("--after", nargs="*", default=[], help="one label or several")
    parser.add_argument("--cross-a")
    parser.add_argument("--cross-b")
    parser.add_argument("--worst", type=int, default=10)
    parser.add_argument("--describe", nargs="*", default=[], metavar="LABEL=TEXT")
    parser.add_argument("--out", default="docs/accuracy.md")
    args = parser.parse_args()
    Path(args.out).write_text(report(args), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
