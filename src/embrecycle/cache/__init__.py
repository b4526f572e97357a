"""The recycling cache: per-document layer-k states, content-addressed and crash-safe."""

from .builder import BuildConfig, BuildSummary, build_cache, cache_settings_for
from .convert import ConvertSummary, convert_cache
from .ray_engine import RayOptions, build_cache_ray
from .settings import CacheSettings
from .store import Cache, CachedBatch, CachedDocument, VerifyReport, document_key, open_cache

__all__ = [
    "BuildConfig",
    "BuildSummary",
    "Cache",
    "CacheSettings",
    "CachedBatch",
    "CachedDocument",
    "ConvertSummary",
    "RayOptions",
    "VerifyReport",
    "build_cache",
    "build_cache_ray",
    "cache_settings_for",
    "convert_cache",
    "document_key",
    "open_cache",
]
