"""embrecycle: embedding recycling for transformer encoders.

Run the frozen lower layers of an encoder once over a corpus, store layer k's
states, and train and serve task models that run only layers k+1..N.
"""

from ._version import __version__
from .cache import (
    BuildConfig,
    BuildSummary,
    Cache,
    CachedBatch,
    CachedDocument,
    CacheSettings,
    ConvertSummary,
    RayOptions,
    build_cache,
    build_cache_ray,
    convert_cache,
    open_cache,
)
from .encoder import LoadedEncoder, load_encoder
from .errors import (
    CacheCorruptedError,
    CacheError,
    CacheLockedError,
    CacheMismatchError,
    CacheMissError,
    ConfigError,
    DiskFullError,
    EmbRecycleError,
    IncompleteRunError,
    InputDataError,
    MissingDependencyError,
    ModelLoadError,
    NotARunError,
    RunCorruptedError,
    RunError,
    RunExistsError,
    UnstorableStatesError,
    UnsupportedModelError,
)
from .export import ExportResult, export_run
from .families import supported_model_types
from .multitask import TaskSet
from .predict import Predictions, TaskModel, load
from .split import SplitEncoder
from .sweep import SweepResult, sweep

__all__ = [
    "BuildConfig",
    "BuildSummary",
    "Cache",
    "CacheCorruptedError",
    "CacheError",
    "CacheLockedError",
    "CacheMismatchError",
    "CacheMissError",
    "CacheSettings",
    "CachedBatch",
    "CachedDocument",
    "ConfigError",
    "ConvertSummary",
    "DiskFullError",
    "EmbRecycleError",
    "ExportResult",
    "IncompleteRunError",
    "InputDataError",
    "LoadedEncoder",
    "MissingDependencyError",
    "ModelLoadError",
    "NotARunError",
    "Predictions",
    "RayOptions",
    "RunCorruptedError",
    "RunError",
    "RunExistsError",
    "SplitEncoder",
    "SweepResult",
    "TaskModel",
    "TaskSet",
    "UnstorableStatesError",
    "UnsupportedModelError",
    "__version__",
    "build_cache",
    "build_cache_ray",
    "convert_cache",
    "export_run",
    "load",
    "load_encoder",
    "open_cache",
    "supported_model_types",
    "sweep",
]
