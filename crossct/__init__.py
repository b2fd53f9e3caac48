"""CrossCT: cell instance segmentation for every microscopy modality.

Inference, one module per step:
``io.read_image -> normalize -> tiling -> predictors -> postprocess -> io.write_labels``,
chained by :func:`crossct.pipeline.segment`.  Training lives in :mod:`crossct.train`.
"""

__version__ = "0.1.0"
