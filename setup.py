"""resnorm: signal propagation and norm preservation in deep residual networks."""

import setuptools

setuptools.setup(
    name="resnorm",
    version="0.1.0",
    description=(
        "Norm preservation in deep residual networks: backward-norm probes, "
        "the delta(L) = c log(2L)/L sweep, Procrustes ResNets (JAX/Flax)."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["resnorm", "resnorm.*"]),
    # Lower bounds that hold on jax 0.10 (Python 3.11, CPU) and jax 0.11 (the GPU image).
    install_requires=[
        "absl-py>=2.1",
        "etils[epath]>=1.5",  # resnorm.records: local and gs:// paths
        "flax>=0.10.4",
        "jax>=0.5.0",
        "matplotlib>=3.8",
        "ml-collections>=1.0",
        "numpy>=1.26",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "scikit-learn>=1.4",
        "scipy>=1.11",  # resnorm.theory (t quantiles), resnorm.recurrence
        "tensorboard>=2.16",  # the event writer and reader, without TensorFlow
        "tensorflow-datasets>=4.9.7",
        "tqdm>=4.66",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "nbclient>=0.10",
            "nbformat>=5.9",
            "ipykernel>=6.29",
            "import-linter>=2.1",
        ],
        "notebooks": ["jupyter", "nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6.29"],
        "cuda": ["jax[cuda13]>=0.8"],
        "tpu": ["jax[tpu]>=0.5.0"],
    },
)
