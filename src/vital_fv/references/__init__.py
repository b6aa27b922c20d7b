"""References: the real images a visualization matches, by job.

- ``sets``: reference sets and their sources (folders, files, tensors, bundled photos, an unlabelled pool)
- ``mining``: a unit's references, mined from a folder (``vital mine``)
- ``patches``: every patch of a folder with its activations (concepts, polysemantic units)
- ``scan``: the resumable, content-keyed scan over images that mining, patch scans and circuits share
- ``resolve``: which source a run's references come from (``vital visualize`` and ``vital_fv.visualize``)
"""

from .mining import (
    MiningResult,
    merge_shards,
    mine,
    mine_checked,
    mine_many,
    mine_to_folder,
    mined_references,
    save_mining,
)
from .patches import PatchScan, image_patches, scan_patches
from .resolve import resolve
from .scan import JsonStore, ScanInterrupted, TensorStore, scan_images
from .sets import (
    BUNDLED,
    IMAGE_SUFFIXES,
    MINING_RECORD,
    OFFLINE_PHOTOS,
    ReferenceSet,
    bundled,
    bundled_classes,
    contact_sheet,
    crop,
    decode_image,
    from_files,
    from_folder,
    from_mining,
    from_pool,
    from_tensor,
    image_paths,
    list_images,
    offline_photos,
    read_image,
    write_photos,
)

__all__ = [
    "BUNDLED",
    "IMAGE_SUFFIXES",
    "MINING_RECORD",
    "OFFLINE_PHOTOS",
    "JsonStore",
    "MiningResult",
    "PatchScan",
    "ReferenceSet",
    "ScanInterrupted",
    "TensorStore",
    "bundled",
    "bundled_classes",
    "contact_sheet",
    "crop",
    "decode_image",
    "from_files",
    "from_folder",
    "from_mining",
    "from_pool",
    "from_tensor",
    "image_paths",
    "image_patches",
    "list_images",
    "mine",
    "mine_checked",
    "mine_many",
    "mine_to_folder",
    "merge_shards",
    "mined_references",
    "offline_photos",
    "read_image",
    "resolve",
    "save_mining",
    "scan_images",
    "scan_patches",
    "write_photos",
]
