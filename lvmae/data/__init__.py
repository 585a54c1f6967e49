"""Pretraining data: random crops of stored embedding sequences, masked in the collate step."""

from lvmae.data.collate import MaskCollate, pad_batch
from lvmae.data.dataset import Crop, CropDataset, draw_lengths
from lvmae.data.loader import DataStream, build_stream, to_device
from lvmae.data.sampler import CropBatchSampler, store_counts

__all__ = [
    "Crop", "CropBatchSampler", "CropDataset", "DataStream", "MaskCollate",
    "build_stream", "draw_lengths", "pad_batch", "store_counts", "to_device",
]
