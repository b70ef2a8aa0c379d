import os

# Before anything imports triton: ``@triton.jit`` reads TRITON_INTERPRET when it decorates, and
# triton's own library functions (tl.max, tl.sum, ...) are decorated when triton is first
# imported, by whichever test module imports vLLM or the kernels first. Without a GPU only the
# interpreter runs the Triton kernel; a GPU run opts out with TRITON_INTERPRET=0.
os.environ.setdefault("TRITON_INTERPRET", "1")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# Keep vLLM / inductor caches out of ~ and make engine runs use both cores.
_cache = Path(os.environ.setdefault("SPARROW_CACHE", str(Path.home() / ".cache" / "sparrow-vllm")))
os.environ.setdefault("VLLM_CACHE_ROOT", str(_cache / "vllm"))
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(_cache / "inductor"))
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def target_dir() -> Path:
    """The embedded target, assembled once per machine into the cache (~1 min)."""
    from sparrow_vllm.target.build import build_target

    if os.environ.get("SPARROW_TEST_TARGET"):  # development: an already-built checkpoint
        return Path(os.environ["SPARROW_TEST_TARGET"])
    return build_target()


@pytest.fixture(scope="session")
def random_draft(target_dir, tmp_path_factory) -> Path:
    from draft_factory import write_random_draft

    return write_random_draft(tmp_path_factory.mktemp("drafts") / "random", target_dir)


@pytest.fixture(scope="session")
def sparrow_draft(target_dir, random_draft) -> Path:
    """The committed default draft of the embedded target (random weights as a fallback
    while none is committed: losslessness must hold for any draft)."""
    from sparrow_vllm.serving.config import SparrowConfigError, default_draft_for

    try:
        return default_draft_for(str(target_dir))
    except SparrowConfigError:
        return random_draft


@pytest.fixture(scope="session")
def llava_target_dir() -> Path:
    """The embedded LLaVA-OneVision target (second family), assembled once per machine."""
    from sparrow_vllm.families import get_family

    return get_family("llava-onevision").build_target()


def _committed_or_random(target_dir, method: str, tmp_path_factory) -> Path:
    """The committed draft of an embedded target, random weights while none is committed
    (losslessness must hold for any draft)."""
    import json

    from draft_factory import write_random_draft
    from sparrow_vllm.serving.defaults import default_drafts

    name = json.loads((Path(target_dir) / "sparrow_target.json").read_text())["name"]
    try:
        return default_drafts(name, methods=(method,))[method]
    except FileNotFoundError:
        return write_random_draft(tmp_path_factory.mktemp("drafts") / f"{name}-{method}", target_dir,
                                  recipe=method, anchor_layers=(15,) if method == "sparrow" else (2, 15, 27))


@pytest.fixture(scope="session")
def llava_draft(llava_target_dir, tmp_path_factory) -> Path:
    return _committed_or_random(llava_target_dir, "sparrow", tmp_path_factory)


@pytest.fixture(scope="session")
def llava_eagle3_draft(llava_target_dir, tmp_path_factory) -> Path:
    return _committed_or_random(llava_target_dir, "eagle3", tmp_path_factory)


@pytest.fixture(scope="module")
def ray_cluster():
    """A local 2-CPU Ray cluster for one test module."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
