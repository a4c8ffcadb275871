"""ECG and CMR data: readers, the reference preprocessing, JAX augmentations, synthetic
datasets, the on-disk dataset format and the sharded, resumable loader.

Record layouts (every source, loader batch and dataset file uses these):

- ECG record: ``{"ecg": (12, T) float32, "label": int32 | (K,) float32}``; raw
  signals from the readers are ``(leads, T)`` float32 millivolts, preprocessed
  ones ``(12, 5000)`` group-normalised at 500 Hz.
- CMR record: ``{"image": (H, W, 3) float32 in [0, 1], "label": int32}`` (NHWC
  once batched).
- Loader batches stack records on a leading batch axis; augmentations run on
  device afterwards (``ecg_augment_batch``, ``cmr_contrastive_views_batch``).
"""

from jaxecg.data.augment_cmr import (
    CMRAugmentConfig,
    cmr_augment,
    cmr_contrastive_views,
    cmr_contrastive_views_batch,
    cmr_train_view,
    cmr_train_view_batch,
    colour_jitter,
    hflip,
    random_resized_crop,
    resize,
    rotate,
)
from jaxecg.data.augment_ecg import (
    ECGAugmentConfig,
    crop,
    ecg_augment,
    ecg_augment_batch,
    ft_surrogate,
    jitter,
    rescale,
)
from jaxecg.data.dataset import DatasetWriter, load_split, read_manifest
from jaxecg.data.pipeline import Loader, make_loader, read_records
from jaxecg.data.preprocess import baseline_als, preprocess_ecg
from jaxecg.data.readers import check_rate, read_array, read_record, read_wfdb, resample
from jaxecg.data.sources import (
    ArraySource,
    IndexSource,
    SyntheticCMRSource,
    SyntheticECGSource,
)
from jaxecg.data.synthetic import (
    CMR_CLASSES,
    ECG_CLASSES,
    synthetic_cmr,
    synthetic_cmr_record,
    synthetic_ecg,
    synthetic_ecg_record,
)

__all__ = [
    "CMR_CLASSES",
    "ECG_CLASSES",
    "ArraySource",
    "CMRAugmentConfig",
    "DatasetWriter",
    "ECGAugmentConfig",
    "IndexSource",
    "Loader",
    "SyntheticCMRSource",
    "SyntheticECGSource",
    "baseline_als",
    "check_rate",
    "cmr_augment",
    "cmr_contrastive_views",
    "cmr_contrastive_views_batch",
    "cmr_train_view",
    "cmr_train_view_batch",
    "colour_jitter",
    "crop",
    "ecg_augment",
    "ecg_augment_batch",
    "ft_surrogate",
    "hflip",
    "jitter",
    "load_split",
    "make_loader",
    "preprocess_ecg",
    "random_resized_crop",
    "read_array",
    "read_manifest",
    "read_record",
    "read_records",
    "read_wfdb",
    "resample",
    "rescale",
    "resize",
    "rotate",
    "synthetic_cmr",
    "synthetic_cmr_record",
    "synthetic_ecg",
    "synthetic_ecg_record",
]
