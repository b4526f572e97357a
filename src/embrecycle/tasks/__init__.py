"""Task plug-ins: what the labels are, how logits are computed, decoded and scored.

Adding a task is one module with a :class:`~embrecycle.tasks.base.Task` subclass
registered in :data:`TASKS`.
"""

from ..errors import ConfigError
from .base import Task
from .classification import ClassificationTask
from .ner import NerTask

TASKS: dict[str, type[Task]] = {"classification": ClassificationTask, "ner": NerTask}


def get_task(name: str) -> type[Task]:
    """The task class registered as ``name``."""
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"task={name!r} is not known: choose one of {sorted(TASKS)}.") from None


__all__ = ["TASKS", "ClassificationTask", "NerTask", "Task", "get_task"]
