"""Instance segmentation from the mask embedding: smoothing (Eq. 2–5), centres (Eq. 9),
instances (Eq. 11–12)."""
