"""Stage 2 + 3 against Stage 1 alone at equal budget, written to ``docs/results.md``.

    python benchmarks/equal_budget.py [--work runs/equal-budget] [--settings shb-5 shb-10 ...]
        [--root ../shared/data/shanghaitech] [--threads N] [--report-only] [--doc docs/results.md]

For each setting (default: ShanghaiTech B 5 / 10 / 40 % and ShanghaiTech A 40 %) it runs
``xmask train --pipeline SETTING-cpu-pipeline`` into ``WORK``: Stage 1 (the CPU recipe), then
either Stage 1 continued alone (``stage1-more``) or annotation + Stage 2 + Stage 3, for the
same training-loop time, and every stage's teacher evaluated on the test split (counting,
localisation, and for the mask-head stages the masks against the superpixel annotation of the
test images, made first into ``WORK/masks-DATASET-test`` by ``xmask annotate``).

``--stage1 SETTING=RUN`` starts a setting's pipeline from a finished Stage-1 run of the same
recipe (copied in as its ``stage1``; its training time is read from its ``metrics.jsonl``)
instead of training Stage 1 again. Everything resumes: rerun the same command after an
interruption. ``--report-only`` writes the document from the pipelines already finished. Every
figure in the document is read from the pipelines' ``pipeline.json``; a setting whose pipeline
is no longer in ``WORK`` (a new machine) keeps its section from the document being replaced,
marked as carried over. The paper's figures are quoted beside them for reference.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import torch

SETTINGS = ("shb-5", "shb-10", "shb-40", "sha-40")
DATASETS = {"sha": "ShanghaiTech A", "shb": "ShanghaiTech B"}
PAPER = {
    "sha-5": "XMask 64.6 / 106.2 · P2R 69.9 / 119.5",
    "sha-10": "XMask 62.4 / 104.4 · P2R 64.2 / 114.6",
    "sha-40": "XMask 56.2 / 93.5 · P2R 55.6 / 95.0",
}
"""The paper's Tab. 2 (MAE / RMSE, GPU, VGG16-BN, about 2,000 epochs); it has no ShanghaiTech B."""

BEATS = "beats Stage 1 alone"
CARRIED = "Carried over from an earlier version of this document"

ROWS = (
    ("stage1", "Stage 1 (P2R + Mean Teacher)"),
    ("stage1-more", "Stage 1 continued alone (equal budget)"),
    ("stage2", "Stage 2 (mask head; counter as Stage 1)"),
    ("stage3", "Stage 3 (mask-constrained counting)"),
)


def machine() -> str:
    """CPU model and core count (Linux ``/proc/cpuinfo``, else ``platform``)."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        model = names[0] if names else model
    return (
        f"{model}, {os.cpu_count()} cores, no GPU"
        if not torch.cuda.is_available()
        else (f"{model}, {os.cpu_count()} cores, {torch.cuda.get_device_name()}")
    )


def run(command: list[str]) -> None:
    """Run a command, echoing it; fail on a non-zero exit."""
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def test_masks(work: Path, dataset: str, root: str) -> Path:
    """The superpixel annotation of the test split (resumable)."""
    folder = work / f"masks-{dataset}-test"
    where = ["--dataset", dataset, "--root", root, "--split", "test", "--out", str(folder)]
    run([sys.executable, "-m", "xmask", "annotate", *where, "--backend", "superpixel"])
    return folder


def seed_stage1(work: Path, setting: str, run_dir: Path) -> None:
    """Copy a finished Stage-1 run in as the pipeline's ``stage1`` (before the pipeline
    starts; never over an existing one)."""
    target = work / f"{setting}-cpu-pipeline" / "stage1"
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(".stage1.partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(run_dir, partial, ignore=shutil.ignore_patterns("eval-*", "*.out"))
    (partial / "seeded-from.txt").write_text(f"{run_dir.resolve()}\n")
    partial.rename(target)
    print(f"{setting}: Stage 1 from {run_dir}")


def finished_pipeline(folder: Path) -> bool:
    """The pipeline in ``folder`` has run every part, its evaluations included."""
    path = folder / "pipeline.json"
    return path.is_file() and "evaluate-stage1-more" in json.loads(path.read_text())["parts"]


def run_setting(work: Path, setting: str, root: str, threads: int | None = None) -> None:
    """One setting's pipeline (resumes when started before; a finished one, e.g. a pipeline
    run elsewhere and linked in as ``WORK/SETTING-cpu-pipeline``, is left as it is).
    ``threads`` overrides the recipes' torch threads for every stage."""
    if finished_pipeline(work / f"{setting}-cpu-pipeline"):
        print(f"{setting}: finished already")
        return
    dataset = setting.split("-")[0]
    masks = test_masks(work, dataset, root)
    overrides = [f"out={work}", f"data.root={root}", f"pipeline.test_masks={masks}"]
    if threads is not None:
        overrides.append(f"threads={threads}")
    run(
        [
            sys.executable,
            "-m",
            "xmask",
            "train",
            "--pipeline",
            f"{setting}-cpu-pipeline",
            *overrides,
        ]
    )


def _cell(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f}"


def setting_table(setting: str, summary: dict) -> list[str]:
    """The rows of one setting."""
    parts = summary["parts"]
    lines = [
        "| model | training min (cumulative) | MAE | RMSE | loc. F1 @ 4 / 8 px | mask IoU "
        "| mask F1 @ IoU 0.5 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    cumulative = {
        "stage1": parts["stage1"]["total"],
        "stage1-more": parts["stage1"]["total"] + parts["stage1-more"]["total"],
        "stage2": parts["stage1"]["total"]
        + parts["annotations"]["total"]
        + parts["stage2"]["total"],
    }
    cumulative["stage3"] = cumulative["stage2"] + parts["stage3"]["total"]
    for name, label in ROWS:
        result = parts[f"evaluate-{name}"]
        loc = result["localisation"]
        seg = result.get("segmentation", {}).get("predicted")
        lines.append(
            f"| {label} | {_minutes(cumulative[name])} | {_cell(result['mae'])} "
            f"| {_cell(result['rmse'])} | {_cell(loc['4']['f1'], 3)} / {_cell(loc['8']['f1'], 3)} "
            f"| {_cell(seg and seg['mean_iou'], 3)} | {_cell(seg and seg['f1'], 3)} |"
        )
    return lines


def overhead_breakdown(parts: dict) -> str:
    """Where the time outside training steps went, in minutes."""
    training = [p for n, p in parts.items() if n.startswith("stage")]
    evaluation = sum(
        p["wall"] for n, p in parts.items() if n.startswith(("evaluate-", "annotations-"))
    )
    items = {
        "annotation of the labeled images": parts["annotations"]["total"],
        "pseudo-masks": sum(p["pseudo_masks"] for p in training),
        "loading and calibration": sum(p["total"] - p["loop"] for p in training),
        "test evaluation (and test-mask annotation)": evaluation,
    }
    return "Overhead (min): " + "; ".join(f"{k} {_minutes(v)}" for k, v in items.items()) + "."


def schedules(root: Path) -> str:
    """One line: each stage's threads, epochs × steps, batch and learning rate (a seeded
    Stage 1 from the run it was copied from)."""
    from xmask.train.run_folder import load_run_config

    parts = []
    for stage in ("stage1", "stage2", "stage3"):
        folder = root / stage
        seeded = folder / "seeded-from.txt"
        if seeded.is_file():
            folder = Path(seeded.read_text().strip())
        cfg = load_run_config(folder)
        sched = cfg.schedule
        parts.append(
            f"{stage}: {sched.epochs} epochs × {sched.steps_per_epoch} steps, batch "
            f"{sched.batch_labeled} + {sched.batch_unlabeled}, lr {cfg.optim.lr:g}, "
            f"{_threads(cfg.threads)}"
        )
    if (root / "stage1-more" / "config.yaml").is_file():
        more = load_run_config(root / "stage1-more")
        parts.append(f"stage1-more: until the budget, {_threads(more.threads)}")
    stage1 = load_run_config(root / "stage1")
    return f"Schedules ({stage1.model.backbone}): " + "; ".join(parts) + "."


def _threads(threads: int | None) -> str:
    return "default threads" if threads is None else f"{threads} thread{'s' * (threads != 1)}"


def earlier_sections(doc: Path) -> dict[str, list[str]]:
    """The finished settings' sections of an earlier ``doc`` (heading → the lines under it,
    trailing blank lines dropped), each marked once as carried over from that document."""
    if not doc.is_file():
        return {}
    text = doc.read_text(encoding="utf-8")
    stamp = re.search(r"generated (\d{4}-\d\d-\d\d \d\d:\d\d UTC)", text)
    note = (
        f"{CARRIED} (generated {stamp.group(1) if stamp else 'earlier'}): its pipeline "
        "folder is no longer in the work folder."
    )
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("## "):
            current = sections.setdefault(line[3:], [])
        elif current is not None:
            current.append(line)
    carried = {}
    for name, body in sections.items():
        while body and not body[-1].strip():
            body.pop()
        if "Not finished yet." in body:
            continue
        carried[name] = body if any(line.startswith(CARRIED) for line in body) else [*body, note]
    return carried


def report(work: Path, settings: list[str], doc: Path) -> None:
    """Write ``doc`` from the finished pipelines in ``work``; a setting finished in an earlier
    ``doc`` whose pipeline is no longer in ``work`` keeps its section from there."""
    hardware = (
        json.loads((work / "hardware.json").read_text())
        if (work / "hardware.json").is_file()
        else {}
    )
    lines = [
        "# Results at equal budget: Stage 2 + 3 against Stage 1 alone",
        "",
        "Written by `python benchmarks/equal_budget.py` from the pipelines' `pipeline.json` "
        f"(generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC); do not edit by hand.",
        "",
        f"Hardware: {hardware.get('machine', 'unknown')}; torch {hardware.get('torch', '?')}. "
        "Each setting ran `xmask train --pipeline SETTING-cpu-pipeline` (the CPU recipes). A "
        "setting's parts after Stage 1 ran either alone on the machine, or with 1 torch thread "
        "beside at most one other 1-thread job (which leaves its step times as they are alone: "
        "README, Sharing a CPU); the schedules and threads under each table are read from the "
        "stages' `config.yaml`.",
        "",
        "The budget: Stage 1 continued alone trains for the training-loop time that annotation, "
        "Stage 2 and Stage 3 cost together (their loop time plus loading and calibration). "
        "Counting: test MAE / RMSE with each model's count threshold calibrated on its labeled "
        "images; localisation: Hungarian F1 of the predicted points at 4 and 8 px; masks: the "
        "model's own heads against the superpixel annotation of the test images (mean IoU = "
        "Σ matched IoU / annotated heads; F1 of matches with IoU >= 0.5). The test set was never "
        "used to select anything.",
        "",
    ]
    wins, finished = 0, 0
    earlier = earlier_sections(doc)
    for setting in settings:
        path = work / f"{setting}-cpu-pipeline" / "pipeline.json"
        name = f"{DATASETS[setting.split('-')[0]]} {setting.split('-')[1]} % labeled"
        if not finished_pipeline(path.parent):
            body = earlier.get(name, ["", "Not finished yet."])
            carried = name in earlier
            finished += carried
            wins += carried and any(line.startswith(f"Stage 3 {BEATS}") for line in body)
            lines += [f"## {name}", *body, ""]
            continue
        summary = json.loads(path.read_text())
        parts = summary["parts"]
        finished += 1
        better = parts["evaluate-stage3"]["mae"] < parts["evaluate-stage1-more"]["mae"]
        wins += better
        lines += [f"## {name}", "", *setting_table(setting, summary), ""]
        seeded = path.parent / "stage1" / "seeded-from.txt"
        if seeded.is_file():
            lines.append(
                "Stage 1 is an earlier run of the same recipe on this machine, copied in "
                "(its minutes from its metrics.jsonl), not trained again."
            )
        lines.append(schedules(path.parent))
        lines.append(
            f"Stage 3 {BEATS if better else 'does not beat Stage 1 alone'} at equal budget. "
            f"Pipeline overhead outside training steps: {100 * summary['overhead_share']:.1f} % "
            f"of {_minutes(summary['seconds_total'])} min."
        )
        lines.append(overhead_breakdown(parts))
        if setting in PAPER:
            lines.append(f"Paper Tab. 2 (MAE / RMSE): {PAPER[setting]}.")
        lines.append("")
    lines.insert(
        4, f"**Stage 2 + 3 beats Stage 1 alone (MAE) on {wins} of {finished} finished settings.**\n"
    )
    doc.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {doc}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/equal-budget"))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--root", default="../shared/data/shanghaitech")
    parser.add_argument("--doc", type=Path, default=Path("docs/results.md"))
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads of every stage (default: recipe)"
    )
    parser.add_argument(
        "--stage1",
        nargs="+",
        default=[],
        metavar="SETTING=RUN",
        help="start a setting from a finished Stage-1 run of its recipe",
    )
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if not args.report_only or not (args.work / "hardware.json").is_file():
        hardware = {"machine": machine(), "torch": torch.__version__}
        (args.work / "hardware.json").write_text(json.dumps(hardware))
    if not args.report_only:
        seeds = dict(item.split("=", 1) for item in args.stage1)
        for setting in args.settings:
            if setting in seeds:
                seed_stage1(args.work, setting, Path(seeds[setting]))
            run_setting(args.work, setting, args.root, args.threads)
    report(args.work, args.settings, args.doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
