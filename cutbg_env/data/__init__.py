"""Datasets: glyph sources, the cluttered-animals generator and the VOC-layout reader.

Boxes everywhere follow :mod:`cutbg_env.geometry` (VOC: ``(xmin, ymin, xmax, ymax)``, 1-based
inclusive). Images are ``(H, W, 3)`` uint8 RGB.
"""

from cutbg_env.data.generate import (
    FORMAT_VERSION,
    GeneratorConfig,
    Scene,
    ensure_generated,
    generate,
    render_image,
)
from cutbg_env.data.sources import (
    ANIMAL_CLASSES,
    DIGIT_CLASSES,
    SafeUnpickler,
    ShapeSet,
    load_idx,
    load_source,
    read_idx,
    safe_load_array,
)
from cutbg_env.data.voc import (
    DATASET_DIRS,
    DATASET_SPLITS,
    DEFAULT_DATASET,
    VOC_CLASSES,
    Annotation,
    VOCDataset,
    VOCObject,
    data_dir,
    dataset_splits,
    download_voc,
    open_split,
    parse_annotation,
    resolve_dataset,
)

__all__ = [
    "ANIMAL_CLASSES",
    "DATASET_DIRS",
    "DATASET_SPLITS",
    "DEFAULT_DATASET",
    "DIGIT_CLASSES",
    "FORMAT_VERSION",
    "VOC_CLASSES",
    "Annotation",
    "GeneratorConfig",
    "SafeUnpickler",
    "Scene",
    "ShapeSet",
    "VOCDataset",
    "VOCObject",
    "data_dir",
    "dataset_splits",
    "download_voc",
    "ensure_generated",
    "generate",
    "load_idx",
    "load_source",
    "open_split",
    "parse_annotation",
    "read_idx",
    "render_image",
    "resolve_dataset",
    "safe_load_array",
]
