"""Data: the bundled real images, the CPU-safe loader, the fixed transforms."""
from .datasets import BUNDLED_ROOT, MiniMarket1501
from .loader import DeviceDataLoader
from .transforms import build_transforms

__all__ = ["BUNDLED_ROOT", "MiniMarket1501", "DeviceDataLoader", "build_transforms"]
