"""Training utilities: train or fine-tune any imagetok family on a folder of images.

Nothing here is imported by the core (``import imagetok`` does not load it).

>>> from imagetok.train import train
>>> train("train.json")                      # -> Path of the exported model folder
>>> train("train.json", steps=100, out_dir="runs/short")   # config keys overridden

Command line: ``imagetok train --config train.json [--steps N] [--out-dir DIR]``; several processes:
``torchrun --nproc-per-node 2 -m imagetok train --config train.json``. Modules: ``config``
(TrainConfig), ``data`` (image folder sampler), ``losses`` (reconstruction, VQ, GAN, adaptive weight),
``perceptual`` (LPIPS-VGG16 from user weights), ``discriminator`` (taming PatchGAN), ``codebook``
(data init, EMA updates, dead-code restarts, usage), ``dist`` (torchrun process group), ``loop``
(Trainer).
"""

from .config import TrainConfig
from .loop import Trainer, train

__all__ = ["TrainConfig", "Trainer", "train"]
