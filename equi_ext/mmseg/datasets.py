"""MMSegmentation dataset classes provided by equi-ext."""

from __future__ import annotations

from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from equi_ext.data.synthetic import CLASSES, PALETTE


@DATASETS.register_module()
class SyntheticShapesDataset(BaseSegDataset):
    """The synthetic-shapes benchmark written by :func:`equi_ext.data.synthetic.generate_dataset`.

    The generator already writes the standard MMSeg layout (``img_dir/{split}``
    and ``ann_dir/{split}`` PNGs), so only the metadata and the defaults differ
    from :class:`BaseSegDataset`: classes and palette come from the generator's
    constants (one source of truth), both suffixes are ``.png`` because the
    images are lossless, and ``reduce_zero_label`` is off because label 0 is a
    real "background" class rather than an ignore value.

    Example config::

        dict(type='SyntheticShapesDataset', data_root='data/synthetic_shapes',
             data_prefix=dict(img_path='img_dir/val', seg_map_path='ann_dir/val'),
             pipeline=[...])

    Args:
        img_suffix: Suffix of the images.
        seg_map_suffix: Suffix of the label maps.
        reduce_zero_label: Whether to map label 0 to the ignore index.
        **kwargs: Passed on to :class:`BaseSegDataset`.
    """

    METAINFO = dict(classes=CLASSES, palette=[list(rgb) for rgb in PALETTE])

    def __init__(
        self,
        img_suffix: str = ".png",
        seg_map_suffix: str = ".png",
        reduce_zero_label: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(
            img_suffix=img_suffix,
            seg_map_suffix=seg_map_suffix,
            reduce_zero_label=reduce_zero_label,
            **kwargs,
        )
