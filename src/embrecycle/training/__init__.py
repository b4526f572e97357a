"""Training task models on recycled states (and the baselines that train from text), as one recipe."""

from .config import TrainConfig
from .data import read_split
from .loop import train
from .result import TrainResult
from .warm_start import warm_start

__all__ = ["TrainConfig", "TrainResult", "read_split", "train", "warm_start"]
