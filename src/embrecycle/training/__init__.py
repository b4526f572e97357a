"""Training task models on recycled states (and the full fine-tuning baseline)."""

from .config import TrainConfig
from .loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
