"""Training utilities (``pip install imagetok``; nothing here is imported by the core).

>>> from imagetok.train import train
>>> train("train.json")      # -> folder of the exported imagetok model
"""

from .config import TrainConfig
from .loop import Trainer, train

__all__ = ["TrainConfig", "Trainer", "train"]
