"""``{"method": "sparrow", ...}`` -> what vLLM 0.32 runs, validated with clear errors.

Inside vLLM, Sparrow rides on the EAGLE-3 machinery (anchor-layer capture, draft KV in the
target's block table, rejection sampling): the user's config is translated to
``method="eagle3"`` with a Sparrow draft, whose config carries a ``sparrow`` section that
makes the model runner use :class:`~sparrow_vllm.proposer.SparrowProposer`.
"""

from __future__ import annotations

import json
from pathlib import Path

# Keys of the user's speculative config that are Sparrow's, not vLLM's.
SPARROW_KEYS = ("window_size", "anchor_layers")
DRAFT_LINK_NAMES = ("sparrow_draft",)  # <target>/sparrow_draft/ holds a target's default draft
MAX_SPECULATIVE_TOKENS = 16


class SparrowConfigError(ValueError):
    """A user mistake in the Sparrow speculative config; the message says how to fix it."""


def read_draft_config(draft_dir: str | Path) -> dict:
    d = Path(draft_dir)
    cfg = d / "config.json"
    if not d.is_dir():
        raise SparrowConfigError(f"Sparrow draft directory {d} does not exist. Train one with "
                                 "`sparrow train` or omit \"model\" to use the target's default draft.")
    if not cfg.exists():
        raise SparrowConfigError(f"{d} has no config.json: it is not a Sparrow draft directory.")
    data = json.loads(cfg.read_text())
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
    if marker.exists():
        from sparrow_vllm.target.paths import ASSETS_DIR

        default = ASSETS_DIR.parent / "drafts" / "sparrow-default"
        if (default / "config.json").exists():
            return default
    raise SparrowConfigError(
        f"No Sparrow draft is known for target {target!r}. Pass one: "
        "--speculative-config '{\"method\": \"sparrow\", \"model\": \"<draft dir>\"}', "
        f"or put the draft at {t / DRAFT_LINK_NAMES[0]}/."
    )


def check_draft_matches_target(draft: dict, draft_dir, target_hf_config) -> None:
    text = target_hf_config.get_text_config() if hasattr(target_hf_config, "get_text_config") else target_hf_config
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
    for layer in sp.get("anchor_layers", []):
        if not 0 < int(layer) < text.num_hidden_layers:
            problems.append(f"anchor layer {layer} outside the target's layers 1..{text.num_hidden_layers - 1}")
    if problems:
        raise SparrowConfigError(
            f"Sparrow draft {draft_dir} was not trained for this target ("
            + "; ".join(problems) + "). Train a draft for it with `sparrow data` + `sparrow train`."
        )


def translate(user: dict, target_model_config) -> tuple[dict, dict]:
    """User's sparrow config -> (kwargs for vLLM's SpeculativeConfig, sparrow overrides)."""
    cfg = dict(user)
    cfg["method"] = "eagle3"
    overrides = {k: cfg.pop(k) for k in SPARROW_KEYS if k in cfg}
    draft_dir = cfg.get("model") or default_draft_for(target_model_config.model)
    draft = read_draft_config(draft_dir)
    check_draft_matches_target(draft, draft_dir, target_model_config.hf_config)
    cfg["model"] = str(draft_dir)
    k = cfg.get("num_speculative_tokens")
    if k is None:
        methods = draft.get("speculators_config", {}).get("proposal_methods") or [{}]
        k = methods[0].get("speculative_tokens", 3)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_SPECULATIVE_TOKENS:
        raise SparrowConfigError(
            f"num_speculative_tokens must be an integer in 1..{MAX_SPECULATIVE_TOKENS}, got {k!r}."
        )
    cfg["num_speculative_tokens"] = k
    validate_overrides(overrides, draft["sparrow"], draft_dir)
    return cfg, overrides


def validate_overrides(overrides: dict, sparrow: dict, draft_dir) -> None:
    if "window_size" in overrides:
        w = overrides["window_size"]
        if not isinstance(w, int) or isinstance(w, bool) or w < 1:
            raise SparrowConfigError(f"window_size must be a positive integer (text tokens), got {w!r}.")
    if "anchor_layers" in overrides:
        a = overrides["anchor_layers"]
        if list(a) != list(sparrow.get("anchor_layers", [])):
            raise SparrowConfigError(
                f"anchor_layers={a!r} differs from the layers the draft {draft_dir} was trained on "
                f"({sparrow.get('anchor_layers')}); anchor layers are fixed by training. Retrain with "
                "`sparrow train --anchor-layers ...` or drop the override."
            )
