"""MMSegmentation adapter: importing it registers equi-ext's classes in MMSeg's registries."""

from . import datasets  # noqa: F401  (registers SyntheticShapesDataset)
