from setuptools import find_packages, setup

setup(
    name="vissl_models",
    version="0.1.0",
    description="VISSL's self-supervised model layer (trunks, heads, checkpoints) on current PyTorch",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    # The shipped YAML configs are the package vissl_models.configs, so they always come from the
    # installed package itself, never from another checkout that happens to be on the path.
    packages=find_packages(include=["vissl_models", "vissl_models.*"]),
    package_data={
        "vissl_models": ["zoo.yaml"],
        "vissl_models.config": ["*.yaml"],
        "vissl_models.configs": ["*.yaml"],
    },
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "classy-vision>=0.7",
        "fvcore>=0.1.5",
        "numpy>=1.21",
        "PyYAML>=5.4",
        "Pillow>=9",
        "tqdm>=4",
    ],
    extras_require={
        "timm": ["timm>=0.9"],
        "test": ["pytest>=7", "pytest-xdist>=3"],
    },
    entry_points={"console_scripts": ["vissl-models=vissl_models.cli:main"]},
)
