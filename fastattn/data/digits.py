"""The 8×8 handwritten digits of scikit-learn (``sklearn.datasets.load_digits``), shipped as a compact
copy so that fastattn needs no scikit-learn at run time."""

from __future__ import annotations

from importlib import resources

import numpy as np
import torch
from torch import Tensor

NUM_IMAGES = 1797
MAX_INTENSITY = 16  # pixel values are counts of set pixels in 4×4 blocks of a 32×32 bitmap: 0..16


def load_digits() -> tuple[Tensor, Tensor]:
    """Returns ``(images, labels)``: uint8 ``(1797, 8, 8)`` with values 0..16 and int64 ``(1797,)``
    digits 0..9, in scikit-learn's order."""
    with resources.files(__package__).joinpath("digits.npz").open("rb") as file:
        arrays = np.load(file)
        images, labels = arrays["images"], arrays["labels"]
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))
