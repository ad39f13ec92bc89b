"""embedx: what medical images carry besides anatomy and disease."""

from embedx._version import __version__
from embedx.errors import EmbedxError

__all__ = ["EmbedxError", "__version__"]
