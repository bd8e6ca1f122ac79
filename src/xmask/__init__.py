"""xmask: crowd counts, head points and one instance mask per person from head-point labels.

Implements "Exclusivity-Guided Mask Learning for Semi-Supervised Crowd Instance Segmentation
and Counting" (XMask). Importing the package has no side effects; heavy parts load lazily.
"""

__version__ = "0.1.0"

DISTRIBUTION = "xmask-crowd"
"""The name xmask is installed under (``pip install xmask-crowd``; ``xmask`` on PyPI is another
project). The import name and the command stay ``xmask``."""
