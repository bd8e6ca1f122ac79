"""Datasets: image loading and validation, readers, splits, joint augmentation, synthetic crowds."""
