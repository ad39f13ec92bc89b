"""embedx: what medical images carry besides anatomy and disease."""

import os

# Before torch (and its OpenMP runtime) is imported anywhere: with the default busy-waiting policy a
# two-thread torch step slows ~10x as soon as any other process wants a core (a DataLoader worker, the
# dashboard, a second job), measured 20 vs 190 img/s on a 2-core machine. Purely passive waiting, though,
# puts the threads to sleep between every two of a small model's many short parallel regions: a 32 px DAE
# step took 0.52 s instead of 0.25 s. A short spin (GNU OpenMP's GOMP_SPINCOUNT, ~20 us) before sleeping
# keeps both: 0.25 s on free cores and 0.23 s beside a busy process (0.56 s passive). Users who set either
# variable keep their choice.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "20000")

from embedx._version import __version__
from embedx.errors import EmbedxError

__all__ = ["EmbedxError", "__version__"]
