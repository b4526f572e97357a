"""A run directory's life: trained in a staging directory beside it, published by one rename when complete.

``train(out=runs/topic)`` writes into ``runs/topic.partial/``, which holds the marker file
``INCOMPLETE`` from its creation until training has finished. Only then is it renamed to
``runs/topic``. So ``runs/topic`` is always a whole run (the previous one, if it is being
replaced with ``overwrite``, until the new one is complete), and every reader refuses a
directory that carries the marker, or a run whose directory is missing while its staging
directory exists, with a message saying how to resume (``--resume``) or start over.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from . import faults
from .errors import IncompleteRunError, RunExistsError
from .files import write_text_atomic

__all__ = [
    "INCOMPLETE_MARKER",
    "STAGING_SUFFIX",
    "check_complete",
    "check_finished",
    "open_staging",
    "publish",
    "staging_dir",
]

STAGING_SUFFIX = ".partial"
INCOMPLETE_MARKER = "INCOMPLETE"
RESUME_FILE = "resume.safetensors"


def staging_dir(out: str | os.PathLike[str]) -> Path:
    """Where the run ``out`` is trained before it is published: ``out.partial`` beside it."""
    p = Path(out)
    return p.with_name(p.name + STAGING_SUFFIX)


def _hint(out: Path) -> str:
    return (
        f"Resume it with the same `embrecycle train` command plus --resume (or `resume=True`), or start over "
        f"with --overwrite; its partial files are in {staging_dir(out)}."
    )


def check_complete(run_dir: str | os.PathLike[str]) -> None:
    """Raise :class:`IncompleteRunError` when ``run_dir`` is an unfinished run (or its staging directory).

    A run is unfinished while it carries the ``INCOMPLETE`` marker (and a run of a release before 0.2, which wrote
    into the run directory itself, when it lacks ``metrics.json``: :func:`check_finished`). Nothing is raised for
    a finished run.
    """
    p = Path(run_dir)
    if p.name.endswith(STAGING_SUFFIX):
        target = p.with_name(p.name[: -len(STAGING_SUFFIX)])
        raise IncompleteRunError(
            f"{p} is the staging directory of the run {target}, not a finished run. " + _hint(target)
        )
    if not p.exists() and staging_dir(p).exists():
        raise IncompleteRunError(f"the run {p} did not finish training. " + _hint(p))
    marker = p / INCOMPLETE_MARKER
    if marker.exists():
        raise IncompleteRunError(
            f"the run in {p} did not finish training (it carries {INCOMPLETE_MARKER}). " + _hint(p)
        )


def check_finished(run_dir: str | os.PathLike[str]) -> None:
    """Raise :class:`IncompleteRunError` when a run directory lacks ``metrics.json``, which training writes last."""
    p = Path(run_dir)
    if not (p / "metrics.json").exists():
        raise IncompleteRunError(
            f"the run in {p} has no metrics.json (written when training ends): it was interrupted. "
            "Train it again (--overwrite replaces it)."
        )


def open_staging(out: str | os.PathLike[str], overwrite: bool, resume: bool) -> tuple[Path, bool]:
    """The staging directory to train ``out`` in, and whether it holds a run to resume.

    Raises:
        RunExistsError: ``out`` exists (and neither ``overwrite`` nor ``resume`` was asked for), or an
            unfinished run is in the staging directory (and neither ``resume`` nor ``overwrite`` was asked for).
        IncompleteRunError: ``resume`` was asked for but there is nothing to resume.
    """
    target, stage = Path(out), staging_dir(out)
    if resume:
        if stage.is_dir():
            return stage, True
        if target.exists():
            raise IncompleteRunError(
                f"nothing to resume: the run {target} is finished. Pass --overwrite (without --resume) to train "
                "it again, or choose another --out."
            )
        raise IncompleteRunError(f"nothing to resume: {stage} does not exist. Train without --resume.")
    if stage.exists():
        if not overwrite:
            raise RunExistsError(
                f"an unfinished run of {target} is in {stage}: pass --resume to continue it, or --overwrite "
                "to start over."
            )
        shutil.rmtree(stage)
    if target.exists() and not overwrite:
        what = "a file" if target.is_file() else "a directory"
        raise RunExistsError(
            f"--out {target} exists already ({what}): pass --overwrite to replace it (the old run stays until "
            "the new one is complete), or choose another --out."
        )
    if target.is_file():
        raise RunExistsError(f"--out {target} is a file: a run is a directory; choose another --out.")
    stage.mkdir(parents=True)
    write_text_atomic(
        stage / INCOMPLETE_MARKER,
        json.dumps({"run": str(target), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "pid": os.getpid()}) + "\n",
    )
    return stage, False


def publish(stage: Path, out: str | os.PathLike[str]) -> Path:
    """Make the finished staging directory the run ``out`` (replacing an older run there); returns ``out``.

    Order: the marker goes first (the staging directory is now whole), then the old run is moved aside, the
    staging directory renamed to ``out``, and the old run and the resume state deleted. A kill at any point
    leaves either the old run or the new one at ``out``, or none and a finished staging directory that
    ``--resume`` publishes.
    """
    target = Path(out)
    (stage / INCOMPLETE_MARKER).unlink(missing_ok=True)
    faults.point("publish: marker removed")
    aside = target.with_name(f".{target.name}.replaced-{os.getpid()}")
    if target.exists():
        os.replace(target, aside)
        faults.point("publish: old run moved aside")
    os.replace(stage, target)
    faults.point("publish: renamed")
    (target / RESUME_FILE).unlink(missing_ok=True)
    for old in target.parent.glob(f".{target.name}.replaced-*"):  # this one, and any a kill left behind
        shutil.rmtree(old, ignore_errors=True)
    return target
