"""Training losses of xmask."""

from xmask.losses.p2r import P2RConfig, P2RResult, cell_validity, p2r_loss

__all__ = ["P2RConfig", "P2RResult", "cell_validity", "p2r_loss"]
