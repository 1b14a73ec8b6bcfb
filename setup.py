"""MDPR for fastreid: install with `make setup` (see README), which also installs fastreid 1.4.0
without its impossible torch==1.13.1 pins and builds its fast ranking module."""
from setuptools import find_packages, setup

setup(
    name="mdpr-plugin",
    version="0.1.0",
    description="MDPR (Mutual Distillation Learning for Person Re-identification) as a fastreid plugin",
    python_requires=">=3.10",
    packages=find_packages(include=["mdpr_plugin", "mdpr_plugin.*"]),
    package_data={"mdpr_plugin": ["data/mini_market1501/**/*.jpg"]},
    include_package_data=True,
    # fastreid==1.4.0 itself is installed with `pip install --no-deps` (its metadata pins torch 1.13.1,
    # which has no Python 3.11 build); these are its real import-time needs plus ours.
    install_requires=[
        "torch>=2.0",
        "torchvision>=0.15",
        "numpy",
        "yacs",
        "termcolor>=2.2,<3",  # fastreid 1.4.0's own ranges
        "tabulate>=0.9,<0.10",
        "faiss-cpu",
        "scikit-learn",
        "scipy",  # sparse re-ranking (also a scikit-learn dependency)
        "tensorboard",
        "Pillow>=9.2",  # ImageFont.getlength (mdpr-visualize)
        "Cython",
    ],
    extras_require={
        # faiss-gpu wheels exist only for some CUDA/Python combinations; install it by hand there
        # and the re-ranking search moves to the GPU automatically.
        "gpu": ["faiss-gpu"],
        # mdpr-export / the ONNX Runtime backend of mdpr-extract and of the speed benchmark
        "onnx": ["onnx", "onnxscript", "onnxruntime"],
        "test": ["pytest", "onnx", "onnxscript", "onnxruntime"],
    },
    entry_points={
        "console_scripts": [
            "mdpr-export=mdpr_plugin.tools.export:main",
            "mdpr-extract=mdpr_plugin.tools.extract:main",
            "mdpr-search=mdpr_plugin.tools.search:main",
            "mdpr-visualize=mdpr_plugin.tools.visualize:main",
            "mdpr-benchmark=mdpr_plugin.benchmarks.model:main",
        ],
    },
)
