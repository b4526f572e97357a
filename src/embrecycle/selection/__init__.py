"""Choose the layer to recycle from measurements: ``select_layer`` and its settings and result."""

from .config import SelectConfig
from .runner import Candidate, Selection, select_layer

__all__ = ["Candidate", "SelectConfig", "Selection", "select_layer"]
