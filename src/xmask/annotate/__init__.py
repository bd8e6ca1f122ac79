"""Mask annotation from head points: backends (superpixel, EDP-SAM, FastSAM baselines), COCO."""
