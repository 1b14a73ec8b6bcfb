"""Data: the bundled real images, ReidFolder (a data set read from a folder named in the config), the plugin's
loaders (built from fastreid's builders, checked, CPU-capable), image reading, the fixed transforms and the
resumable seeded sampling."""
from .builders import test_loader, test_loader_parts, train_loader, train_loader_parts
from .datasets import BUNDLED_ROOT, MiniMarket1501, RGBCommDataset
from .folder import ReidFolder
from .images import read_image
from .loader import DeviceDataLoader
from .synergyreid import SynergyReID
from .transforms import build_transforms

__all__ = ["BUNDLED_ROOT", "MiniMarket1501", "ReidFolder", "SynergyReID", "RGBCommDataset", "DeviceDataLoader",
           "build_transforms", "read_image", "train_loader_parts", "train_loader", "test_loader_parts", "test_loader"]
