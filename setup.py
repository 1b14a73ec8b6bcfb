"""MDPR for fastreid. `make setup` (see README) builds a complete environment here; in an existing fastreid
environment, `pip install -e '.[cpu]'` or `'.[gpu]'` (or no extra when faiss is already installed).

What is not a requirement, on purpose:
- torch / torchvision: the environment's own build (CUDA or CPU) must never be replaced; the package
  refuses, on import, a torch older than 2.0.
- faiss: an extra ([cpu] -> faiss-cpu, [gpu] -> faiss-gpu), so that installing the package never puts one
  build's files over another's.
- fastreid: PyPI's 1.4.0 pins torch 1.13.1 (no Python 3.11 build), so it is installed with --no-deps, and
  a fastreid git clone must not be shadowed by a second copy.
The rest are fastreid's real import-time needs plus ours, with no upper bounds (no downgrades).
"""
from setuptools import find_packages, setup

setup(
    name="mdpr-plugin",
    version="0.1.0",
    description="MDPR (Mutual Distillation Learning for Person Re-identification) as a fastreid plugin",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["mdpr_plugin", "mdpr_plugin.*"]),
    # the data folders are not packages (no __init__.py): their files listed here, and only here (setuptools
    # warns of include_package_data finding files in folders it takes for undeclared packages)
    package_data={"mdpr_plugin": ["configs/*.yml", "configs/*/*.yml",
                                  "data/mini_market1501/README.md", "data/mini_market1501/**/*.jpg"]},
    install_requires=[
        "numpy",
        "yacs",
        "PyYAML",
        "termcolor>=2.2",
        "tabulate>=0.9",
        "scikit-learn",
        "scipy",  # sparse re-ranking (also a scikit-learn dependency)
        "tensorboard",
        "Pillow>=9.2",  # ImageFont.getlength (mdpr-visualize)
        "Cython",  # fastreid's ranking module, built by `make setup` (optional: the plugin ranks without it)
    ],
    extras_require={
        "cpu": ["faiss-cpu"],
        "gpu": ["faiss-gpu"],
        # mdpr-export / the ONNX Runtime backend of mdpr-extract and of the speed benchmark
        "onnx": ["onnx", "onnxscript", "onnxruntime"],
        # build_timm_backbone: timm's CNNs as MDPR backbones (MODEL.BACKBONE.TIMM_MODEL)
        "timm": ["timm"],
        # FeatureExtractor as the appearance model of BoxMOT's trackers (BotSort(reid_model=extractor), ...); its
        # torch / torchvision requirements are lower bounds that the environment's builds meet
        "trackers": ["boxmot>=25"],
        "test": ["pytest", "pytest-timeout", "onnx", "onnxscript", "onnxruntime", "timm", "boxmot>=25"],
    },
    entry_points={
        "console_scripts": [
            "mdpr-export=mdpr_plugin.tools.export:main",
            "mdpr-extract=mdpr_plugin.tools.extract:main",
            "mdpr-search=mdpr_plugin.tools.search:main",
            "mdpr-visualize=mdpr_plugin.tools.visualize:main",
            "mdpr-dataset=mdpr_plugin.tools.dataset:main",
        ],
    },
)
