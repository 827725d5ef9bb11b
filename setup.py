"""iaunet_d2: IAUNet (instance-aware U-Net) for cell instance segmentation on Detectron2.

Detectron2 itself is not on PyPI: install it first (tools/setup.sh does, see README).
"""
from setuptools import find_packages, setup

setup(
    name="iaunet_d2",
    version="0.1.0",
    description="IAUNet, the instance-aware U-Net for cell instance segmentation, "
    "as a Detectron2 extension, with Mask R-CNN and PointRend baselines.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["iaunet_d2", "iaunet_d2.*"]),
    install_requires=[
        "torch>=2.0",
        "torchvision",
        "fvcore",
        "pycocotools>=2.0.2",
        "scipy",
        "numpy",
        "opencv-python-headless",
        "tifffile",
        "timm>=0.9",
        "tqdm",
        "matplotlib",
        "tensorboard",
    ],
    extras_require={
        "test": ["pytest"],
        # The real-data suite's bacteria_phase TIFFs are zstd-compressed.
        "realcells": ["imagecodecs"],
    },
    # Each returns the exit status; train_net.py, tools/*.py and datasets/*.py run the same.
    entry_points={
        "console_scripts": [
            "iaunet-train = iaunet_d2.apps.train:cli",
            "iaunet-predict = iaunet_d2.predict:main",
            "iaunet-convert-labels = iaunet_d2.apps.convert_labels:main",
            "iaunet-convert-evican2 = iaunet_d2.apps.convert_evican2:main",
            "iaunet-convert-livecell-crop = iaunet_d2.apps.convert_livecell_crop:main",
            "iaunet-analyze = iaunet_d2.apps.analyze_model:main",
            "iaunet-benchmark = iaunet_d2.apps.benchmark:main",
            "iaunet-compare = iaunet_d2.apps.compare:main",
            "iaunet-convergence = iaunet_d2.apps.convergence:main",
            "iaunet-prepare-realcells = iaunet_d2.apps.prepare_realcells:main",
            "iaunet-memory-soak = iaunet_d2.apps.memory_soak:main",
        ],
    },
)
