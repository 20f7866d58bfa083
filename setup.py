"""Installation script for art-generalist."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def _long_description() -> str:
    """README.md as PyPI shows it: a link to a file of the repository (dead on PyPI) becomes its
    text and the file's name, which the sdist carries; web links and anchors stay."""
    readme = HERE / "README.md"
    if not readme.exists():
        return ""
    text = readme.read_text(encoding="utf-8")
    def local(match: "re.Match[str]") -> str:
        label, target = match.groups()
        return f"`{target}` (in the source distribution)" if label == target else f"{label} (`{target}`)"
    return re.sub(r"\[([^\]]+)\]\((?!https?://|#)([^)\s]+)\)", local, text)

VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "art_generalist" / "_version.py").read_text()).group(1)

setup(
    name="art-generalist",
    version=VERSION,
    description=(
        "Generalist (Wang & Wang, CVPR 2023) and related adversarial-training methods "
        "as drop-in trainers for IBM's Adversarial Robustness Toolbox"
    ),
    long_description=_long_description(),
    long_description_content_type="text/markdown",
    license="MIT",
    license_files=["LICENSE"],
    packages=find_packages(include=["art_generalist", "art_generalist.*"]),
    python_requires=">=3.10",
    install_requires=[
        # torch >= 2.6: torch.load(weights_only=True) is the default and CVE-2025-32434 is fixed.
        "torch>=2.6",
        "torchvision",
        "adversarial-robustness-toolbox>=1.20.1,<1.21",
        # torchattacks 3.5.1 pins requests~=2.25.1 in its metadata (its issue #205); see README.
        "torchattacks>=3.5.1",
        # Reference AutoAttack code (fra31's kernels) under the module name `pyautoattack`.
        "pyautoattack>=0.2.0",
        "numpy",
        "tqdm",
        "scikit-learn",
        "safetensors",
        "matplotlib",
    ],
    entry_points={"console_scripts": ["art-generalist = art_generalist.cli:main"]},
    extras_require={
        # transformers: the Hugging Face drop-in tests (a tiny ViT built from a config, no download)
        # setuptools, twine: the sdist CI step builds the sdist and checks its long description
        "test": ["pytest>=7", "ruff>=0.5", "transformers", "setuptools>=61", "twine"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
