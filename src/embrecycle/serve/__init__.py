"""``embrecycle serve``: many task models over one trunk behind one HTTP endpoint, batched across requests.

Example:
    >>> from embrecycle.serve import ServeConfig, serve
    >>> serve(ServeConfig(runs=["runs/topic", "runs/sentiment"], cache="cache/"))  # doctest: +SKIP
"""

from .app import create_app
from .config import ServeConfig
from .server import build_app, serve

__all__ = ["ServeConfig", "build_app", "create_app", "serve"]
