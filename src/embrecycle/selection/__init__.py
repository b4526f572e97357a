"""Choose the layer to recycle from measurements: ``select_layer``, its settings and its result.

The pieces: :mod:`.config` (the settings), :mod:`.results` (what is measured), :mod:`.costs` (the timing
probe, the cost model and the budget), :mod:`.proxies` (the samples and short runs), :mod:`.stats` (chance
level, intervals, stability, the recommendation), :mod:`.notes` (the report's notes), :mod:`.report`
(table, JSON, plot) and :mod:`.runner` (the steps in order).
"""

from .config import SelectConfig
from .results import Candidate, Selection
from .runner import select_layer
from .stats import recommend, retention_interval

__all__ = ["Candidate", "SelectConfig", "Selection", "recommend", "retention_interval", "select_layer"]
