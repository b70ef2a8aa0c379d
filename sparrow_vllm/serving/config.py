"""``{"method": "sparrow", ...}`` -> what vLLM 0.32 runs, validated with clear errors.

Inside vLLM, Sparrow rides on the EAGLE-3 machinery (anchor-layer capture, draft KV in the
target's block table, rejection sampling): the user's config is translated to
``method="eagle3"`` with a Sparrow draft, whose config carries a ``sparrow`` section that
makes the model runner use :class:`~sparrow_vllm.serving.proposer.SparrowProposer`.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from sparrow_vllm.draft.config import (  # training's rules and its config type
    NUM_SPECULATIVE_TOKENS, DraftConfigError, SparrowDraftConfig, anchor_layer_problems)

# Keys of the user's speculative config that are Sparrow's, not vLLM's.
SPARROW_KEYS = ("window_size", "anchor_layers")
# vLLM 0.32 ``SpeculativeConfig`` fields that apply to a Sparrow draft. Anything else (a typo,
# another method's option such as ``prompt_lookup_max``) is refused, not silently ignored.
VLLM_KEYS = ("method", "model", "num_speculative_tokens", "num_speculative_tokens_per_batch_size",
             "draft_tensor_parallel_size", "revision", "code_revision", "enforce_eager",
             "disable_eagle_block_drop")
ALLOWED_KEYS = VLLM_KEYS + SPARROW_KEYS
DRAFT_LINK_NAMES = ("sparrow_draft",)  # <target>/sparrow_draft/ holds a target's default draft
MAX_SPECULATIVE_TOKENS = 16
# The engine's SparrowDraftConfig rides on vLLM's SpeculativeConfig under this name (vllm_compat
# patch 2 sets it; pickled with it into every process vLLM starts).
SPARROW_CONFIG_ATTR = "sparrow_config"
# With "num_speculative_tokens_per_batch_size": "auto", the draft's measured k table
# (serving/adaptive.py) rides the same way, for vllm_compat patch 9 in the scheduler.
K_TABLE_ATTR = "sparrow_k_table"
AUTO = "auto"


class SparrowConfigError(ValueError):
    """A user mistake in the Sparrow speculative config; the message says how to fix it."""


def sparrow_config_of(speculative_config) -> SparrowDraftConfig | None:
    """The config an engine's Sparrow draft runs with (its ``config.json`` with the user's
    overrides, validated once by :func:`translate`), or None for an engine without Sparrow."""
    cfg = getattr(speculative_config, SPARROW_CONFIG_ATTR, None)
    return cfg if isinstance(cfg, SparrowDraftConfig) else None


def k_table_of(speculative_config):
    """The engine's k table (``"num_speculative_tokens_per_batch_size": "auto"``) or None."""
    return getattr(speculative_config, K_TABLE_ATTR, None)


def auto_k_table(cfg: dict, draft_dir):
    """The draft's tuned k table if the user asked for ``"auto"``, else None."""
    if cfg.get("num_speculative_tokens_per_batch_size") != AUTO:
        return None
    from sparrow_vllm.serving.adaptive import K_TABLE_NAME, KTable, KTableError

    try:
        return KTable.read(Path(draft_dir) / K_TABLE_NAME)
    except KTableError as e:
        raise SparrowConfigError(f"\"num_speculative_tokens_per_batch_size\": \"auto\": {e}") from None


def read_draft_config(draft_dir: str | Path) -> dict:
    d = Path(draft_dir)
    cfg = d / "config.json"
    if not d.is_dir():
        what = "is a file, not a directory" if d.exists() else "does not exist"
        raise SparrowConfigError(f"Sparrow draft directory {d} {what}. Pass a directory written by "
                                 "`sparrow train`, or omit \"model\" to use the target's default draft.")
    if not cfg.exists():
        raise SparrowConfigError(f"{d} has no config.json: it is not a Sparrow draft directory. "
                                 "Pass a directory written by `sparrow train`.")
    try:
        data = json.loads(cfg.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SparrowConfigError(f"{cfg} is not valid JSON ({e}): it is not a Sparrow draft "
                                 "directory. Pass a directory written by `sparrow train`.") from None
    if not isinstance(data, dict):
        data = {}
    if data.get("speculators_model_type") != "sparrow" or "sparrow" not in data:
        kind = data.get("speculators_model_type") or data.get("architectures")
        raise SparrowConfigError(
            f"{d} is not a Sparrow draft (it is {kind!r}). For an EAGLE-3 draft use "
            "{\"method\": \"eagle3\"}; for Sparrow pass a directory written by `sparrow train`."
        )
    return data


def default_draft_for(target: str) -> Path:
    """The draft used by ``--speculative-config sparrow`` for ``target``."""
    t = Path(target)
    for name in DRAFT_LINK_NAMES:
        if (t / name / "config.json").exists():
            return t / name
    marker = t / "sparrow_target.json"
    if marker.exists():  # one of our embedded targets: its committed draft
        from sparrow_vllm.serving.defaults import DRAFTS_DIR, EMBEDDED_DRAFTS

        name = json.loads(marker.read_text()).get("name")
        default = DRAFTS_DIR / EMBEDDED_DRAFTS.get(name, {}).get("sparrow", "-")
        if (default / "config.json").exists():
            return default
    raise SparrowConfigError(
        f"No Sparrow draft is known for target {target!r}. Pass one: "
        "--speculative-config '{\"method\": \"sparrow\", \"model\": \"<draft dir>\"}', "
        f"or put the draft at {t / DRAFT_LINK_NAMES[0]}/."
    )


def _text_config(target_hf_config):
    if hasattr(target_hf_config, "get_text_config"):
        return target_hf_config.get_text_config()
    return target_hf_config


def check_keys(cfg: dict) -> None:
    """Refuse keys Sparrow does not use, naming the allowed ones (and the likely intended one)."""
    unknown = [k for k in cfg if k not in ALLOWED_KEYS]
    if not unknown:
        return
    hints = []
    for k in unknown:
        close = difflib.get_close_matches(str(k), ALLOWED_KEYS, n=1)
        hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise SparrowConfigError(
        f"Unknown key(s) in the sparrow speculative config: {', '.join(hints)}. "
        f"Allowed keys: {', '.join(ALLOWED_KEYS)}."
    )


def check_family(target_hf_config) -> None:
    """The target's family has an adapter (text positions, layers, hidden-state capture)."""
    from sparrow_vllm.families import UnsupportedFamilyError, family_of

    try:
        family_of(target_hf_config)
    except UnsupportedFamilyError as e:
        raise SparrowConfigError(str(e)) from None


def check_draft_matches_target(draft: dict, draft_dir, target_hf_config) -> None:
    text = _text_config(target_hf_config)
    sp = draft["sparrow"]
    problems = []
    want = {
        "target_hidden_size": text.hidden_size,
        "target_num_layers": text.num_hidden_layers,
        "target_vocab_size": text.vocab_size,
    }
    for key, value in want.items():
        if key in sp and sp[key] != value:
            problems.append(f"{key}: draft {sp[key]}, target {value}")
    problems += anchor_layer_problems(sp.get("anchor_layers", []), text.num_hidden_layers)
    if problems:
        raise SparrowConfigError(
            f"Sparrow draft {draft_dir} was not trained for this target ("
            + "; ".join(problems) + "). Train a draft for it with `sparrow data` + `sparrow train`."
        )


def check_draft_weights(draft_dir) -> None:
    """The draft's tensors have the shapes its config says (else vLLM's loader dies deep
    inside with ``AssertionError: Tried to load weights of size ...``)."""
    from sparrow_vllm.draft.export import weight_problems

    try:
        problems = weight_problems(draft_dir)
    except (ValueError, KeyError, TypeError, OSError) as e:  # config or header unreadable
        raise SparrowConfigError(f"Sparrow draft {draft_dir} cannot be read: {e}. Re-export it with "
                                 "`sparrow train`.") from None
    if problems:
        raise SparrowConfigError(
            f"Sparrow draft {draft_dir}: its weights do not match its config.json ("
            + "; ".join(problems[:3]) + (f"; {len(problems) - 3} more" if len(problems) > 3 else "")
            + "). The draft is damaged or was edited by hand: re-export it with `sparrow train`.")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def translate(user: dict, target_model_config) -> tuple[dict, SparrowDraftConfig]:
    """User's sparrow config -> (kwargs for vLLM's SpeculativeConfig, the draft's config as
    the engine runs it: its ``config.json`` with the user's overrides, parsed and validated
    once; ``vllm_compat`` hands this object to the proposer)."""
    cfg = {str(k).replace("-", "_"): v for k, v in user.items()}  # vLLM accepts both spellings
    check_keys(cfg)
    check_family(target_model_config.hf_config)
    cfg["method"] = "eagle3"
    overrides = {k: cfg.pop(k) for k in SPARROW_KEYS if k in cfg}
    model = cfg.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise SparrowConfigError(f"\"model\" must be the path of a Sparrow draft directory, got {model!r}.")
    draft_dir = Path(model) if model else default_draft_for(target_model_config.model)
    draft = read_draft_config(draft_dir)
    check_draft_matches_target(draft, draft_dir, target_model_config.hf_config)
    check_draft_weights(draft_dir)
    cfg["model"] = str(draft_dir)
    k = cfg.get("num_speculative_tokens")
    source = ""
    table = auto_k_table(cfg, draft_dir)
    if table is not None:
        # vLLM's own batch-size lookup runs the first row; patch 9 switches rows by context.
        cfg["num_speculative_tokens_per_batch_size"] = table.schedules[0]
        if k is None:
            k, source = table.k_max, f" (the k_max of {draft_dir}'s k table)"
    if k is None:
        methods = draft.get("speculators_config", {}).get("proposal_methods") or [{}]
        k = methods[0].get("speculative_tokens", NUM_SPECULATIVE_TOKENS)
        source = f" (the default of draft {draft_dir}; pass \"num_speculative_tokens\")"
    if not _is_int(k) or not 1 <= k <= MAX_SPECULATIVE_TOKENS:
        raise SparrowConfigError(
            f"num_speculative_tokens must be an integer in 1..{MAX_SPECULATIVE_TOKENS}, got {k!r}{source}."
        )
    cfg["num_speculative_tokens"] = k
    # vLLM's EAGLE path re-prefills the last cached KV block of every request (an EAGLE draft's
    # KV at a position depends on the token after it, which a new request may change). For
    # Sparrow that block is mostly video, where the draft writes no KV: reusing it costs at
    # most one stale draft entry, where re-prefilling it costs a block of target prefill for
    # every new question about a cached video (docs/results.md, "Adaptive k"). False: vLLM's.
    drop = cfg.setdefault("disable_eagle_block_drop", True)
    if not isinstance(drop, bool):
        raise SparrowConfigError(f"disable_eagle_block_drop must be true or false, got {drop!r}.")
    num_layers = _text_config(target_model_config.hf_config).num_hidden_layers
    validate_overrides(overrides, draft["sparrow"], draft_dir, num_layers)
    try:
        sparrow = SparrowDraftConfig.from_speculators_dict(draft, str(draft_dir / "config.json")).replace(
            num_speculative_tokens=k, **overrides)
    except DraftConfigError as e:
        raise SparrowConfigError(f"Sparrow draft {draft_dir}: {e}. Re-export it with `sparrow train`.") from None
    return cfg, sparrow


def validate_overrides(overrides: dict, sparrow: dict, draft_dir, num_layers: int) -> None:
    if "window_size" in overrides:
        w = overrides["window_size"]
        if not _is_int(w) or w < 1:
            raise SparrowConfigError(
                f"window_size must be a positive integer (text tokens), got {w!r}; the draft was "
                f"trained with {sparrow.get('window_size')}: omit the key to use that.")
    if "anchor_layers" in overrides:
        a = overrides["anchor_layers"]
        trained = list(sparrow.get("anchor_layers", []))
        if not isinstance(a, list) or not a or not all(_is_int(x) for x in a):
            raise SparrowConfigError(
                f"anchor_layers must be a list of target layer ids such as {trained}, got {a!r}.")
        outside = anchor_layer_problems(a, num_layers)
        if outside:
            raise SparrowConfigError(
                f"anchor_layers={a!r}: " + "; ".join(outside) + f". The draft {draft_dir} was "
                f"trained on {trained}: omit the key or pass exactly that.")
        if a != trained:
            raise SparrowConfigError(
                f"anchor_layers={a!r} differs from the layers the draft {draft_dir} was trained on "
                f"({trained}); anchor layers are fixed by training. Retrain with "
                "`sparrow train --anchor-layers ...` or drop the override."
            )
