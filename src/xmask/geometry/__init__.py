"""Geometry every part of xmask shares: the pixel grid, NNEC circles and label resolution.

- :mod:`xmask.geometry.points`: coordinates ``(x, y)`` in pixels, the pixel grid and the
  stride-4 cell grid, point transforms (scale, flip, translate).
- :mod:`xmask.geometry.circles`: NNEC radii (paper Eq. 1, 6), ``R_MIN``, circle pixels (Eq. 7)
  and label maps of circles.
- :mod:`xmask.geometry.labels`: per-head candidate masks → one instance label map (point
  pixels, co-located heads, overlaps).
- :mod:`xmask.geometry.sampling`: a per-pixel map read at sub-pixel points (the centres of
  Eq. 9).
- :mod:`xmask.geometry.raster`: the vectorised passes behind circles and label maps.
- :mod:`xmask.geometry.kernels`: the compiled loops of the segmentation energy and the
  smoothing, and their background compilation (:func:`~xmask.geometry.kernels.warm_up`).

Nothing here imports another xmask package but :mod:`xmask.types` and :mod:`xmask.errors`.
"""
