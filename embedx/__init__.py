"""embedx: what medical images carry besides anatomy and disease."""

import os

# Before torch (and its OpenMP runtime) is imported anywhere: with the default busy-waiting policy a
# two-thread torch step slows ~10x as soon as any other process wants a core (a DataLoader worker, the
# dashboard, a second job), measured 20 vs 190 img/s on a 2-core machine. Passive waiting costs nothing
# measurable when the cores are free. Users who set OMP_WAIT_POLICY keep their choice.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from embedx._version import __version__
from embedx.errors import EmbedxError

__all__ = ["EmbedxError", "__version__"]
