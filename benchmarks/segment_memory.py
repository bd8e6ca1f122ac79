"""Peak memory and time of segmenting every head of one dense synthetic image.

    python benchmarks/segment_memory.py [--size 1024x1024] [--heads 3000] [--checkpoint RUN]

Draws one synthetic crowd (:func:`xmask.data.synthetic.make_crowd`, seed 0) and segments
its exact head points with :meth:`xmask.inference.predictor.Predictor.segment_points`: the network
(logits and mask embedding), the smoothing and Eq. 11–12 for every head, as ``xmask bench``
times them. The model is the CPU recipes' (EfficientNet-Lite0, 64-channel mask head, random
weights) unless ``--checkpoint``. Prints one JSON object: heads, heads that got a mask, the
network and post-network seconds of the best of ``--repeat`` calls, and the process's peak
resident memory (``ru_maxrss``) before and after the calls, so the segmentation's own peak is
the difference and the whole process's peak is what a user sees.
"""

from __future__ import annotations

import argparse
import json

import torch

from xmask.apps.bench import BenchConfig, build_predictor
from xmask.apps.bench_report import peak_rss_mb
from xmask.data.synthetic import make_crowd


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="1024x1024", help="WxH")
    parser.add_argument("--heads", type=int, default=3000)
    parser.add_argument("--checkpoint", help="a Stage-2 run; default: random weights")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.lower().split("x"))
    crowd = make_crowd(height, width, args.heads, seed=0)
    predictor, described = build_predictor(
        BenchConfig(root=".", checkpoint=args.checkpoint, device=args.device)
    )
    before = peak_rss_mb()
    runs = [predictor.segment_points(crowd.image, crowd.points) for _ in range(args.repeat)]
    best = min(runs, key=lambda run: run.network_s + run.post_s)
    assert best.areas is not None
    report = {
        "size": f"{width}x{height}",
        "heads": len(crowd.points),
        "segmented_heads": int((best.areas > 0).sum()),
        "model": described,
        "device": str(predictor.device),
        "torch_threads": torch.get_num_threads(),
        "network_s": round(best.network_s, 4),
        "post_s": round(best.post_s, 4),
        "post_share": round(best.post_s / (best.network_s + best.post_s), 4),
        "peak_rss_mb_before": round(before, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
