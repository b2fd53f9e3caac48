"""Training: instance labels -> targets -> augmented crops -> losses -> loop -> checkpoint -> export.

Modules, in data-flow order: :mod:`~crossct.train.records` (the images and labels there are, read
from a data folder or a training pack), :mod:`~crossct.train.targets` (3-class and distance maps
from instance labels, cached on disk), :mod:`~crossct.train.data` (in-memory datasets,
augmentation, source-balanced sampling), then losses, loops, checkpoint and the
``python -m crossct.train`` CLI; :mod:`~crossct.train.pack` writes training packs.
"""
