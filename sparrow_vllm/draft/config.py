"""``SparrowDraftConfig``: the one config of a Sparrow (or EAGLE-3 baseline) draft.

Serialized into the draft directory's ``config.json`` in the ``speculators`` layout, so vLLM
(``SpeculatorsConfig``) and the speculators tools read it; every Sparrow field is also kept
verbatim under the ``"sparrow"`` key and read back from there by ``from_dir``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

SPECULATORS_VERSION = "0.3.0"
RECIPES = ("sparrow", "eagle3")
ATTENTIONS = ("text_window", "full")
ARCHITECTURES = {"sparrow": "Eagle3SparrowForCausalLM", "eagle3": "Eagle3LlamaForCausalLM"}
VERIFIER_ARCHITECTURES = ["Qwen2_5_VLForConditionalGeneration"]
WINDOW_SIZE = 128  # VATA's default W (text tokens), for training and serving
NUM_SPECULATIVE_TOKENS = 5  # default k a draft advertises (speculators_config)


def anchor_layer_problems(layers, num_layers: int) -> list[str]:
    """The one anchor-layer rule, for training and serving: anchor layer ``i`` is the *input*
    of target layer ``i`` (vLLM's ``eagle_aux_hidden_state_layer_ids``), so ``1..L-1``: 0 would
    be the embeddings, and at ``L`` HF returns the final-normed state where vLLM gives the
    pre-norm one."""
    return [f"anchor layer {layer!r} outside the target's layers 1..{num_layers - 1}"
            for layer in layers if not (isinstance(layer, int) and not isinstance(layer, bool)
                                        and 0 < layer < num_layers)]


class DraftConfigError(ValueError):
    """A config field has a value outside the allowed ones (the message names both)."""


@dataclass(slots=True)
class SparrowDraftConfig:
    # IVSB: target layers whose *input* hidden states (HF ``hidden_states[l]``) feed ``fc``.
    anchor_layers: list[int] = field(default_factory=lambda: [15])
    # VATA: a draft query at text index i attends to text indices max(0, i-W+1)..i.
    window_size: int = WINDOW_SIZE
    attention: str = "text_window"
    recipe: str = "sparrow"
    num_layers: int = 1
    mtp_depth: int = 3  # MTP: training unroll k (draft steps per position)
    num_speculative_tokens: int = NUM_SPECULATIVE_TOKENS  # default k written into speculators_config
    # target
    target_hidden_size: int = 576
    target_num_layers: int = 30
    target_vocab_size: int = 49156
    video_token_id: int = 49155
    image_token_id: int = 49154
    verifier_name_or_path: str = "sparrow-qwen25vl-smollm2"
    verifier_architectures: list[str] = field(default_factory=lambda: list(VERIFIER_ARCHITECTURES))
    # draft layer
    hidden_size: int = 576
    intermediate_size: int = 1536
    num_attention_heads: int = 9
    num_key_value_heads: int = 3
    head_dim: int = 64
    rms_norm_eps: float = 1e-5
    rope_theta: float = 100000.0
    max_position_embeddings: int = 32768
    norm_before_residual: bool = False
    draft_vocab_size: int = 49156  # == target_vocab_size: no d2t/t2d map
    torch_dtype: str = "float16"

    def __post_init__(self):
        self.anchor_layers = [int(x) for x in self.anchor_layers]
        self.verifier_architectures = list(self.verifier_architectures)
        self.validate()

    def validate(self) -> None:
        def bad(name, allowed):
            raise DraftConfigError(f"SparrowDraftConfig.{name}={getattr(self, name)!r}: {allowed}")

        if self.recipe not in RECIPES:
            bad("recipe", f"allowed values are {list(RECIPES)}")
        if self.attention not in ATTENTIONS:
            bad("attention", f"allowed values are {list(ATTENTIONS)}")
        if self.recipe == "eagle3" and self.attention != "full":
            bad("attention", "recipe 'eagle3' (the full-context baseline) needs attention='full'")
        if self.recipe == "sparrow" and self.attention != "text_window":
            bad("attention", "recipe 'sparrow' needs attention='text_window'")
        if self.target_num_layers < 1:
            bad("target_num_layers", "must be >= 1")
        if not self.anchor_layers or len(set(self.anchor_layers)) != len(self.anchor_layers) or \
                anchor_layer_problems(self.anchor_layers, self.target_num_layers):
            bad("anchor_layers", f"must be a non-empty list of distinct layer ids in "
                                 f"[1, target_num_layers - 1 = {self.target_num_layers - 1}]")
        if self.anchor_layers != sorted(self.anchor_layers):
            # vLLM collects aux hidden states in layer order, so fc's input is concatenated
            # in ascending layer order whatever order a config lists them in.
            bad("anchor_layers", "must be sorted ascending (vLLM concatenates aux states in layer order)")
        for name in ("window_size", "num_layers", "mtp_depth", "num_speculative_tokens",
                     "target_hidden_size", "target_vocab_size", "hidden_size", "intermediate_size",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(name, "must be an integer >= 1")
        if self.num_attention_heads % self.num_key_value_heads:
            bad("num_key_value_heads", f"must divide num_attention_heads={self.num_attention_heads}")
        if self.head_dim % 2:
            bad("head_dim", "must be even (RoPE)")
        if not 1 <= self.draft_vocab_size <= self.target_vocab_size:
            bad("draft_vocab_size", f"must be in [1, target_vocab_size={self.target_vocab_size}]")
        if not self.rms_norm_eps > 0:
            bad("rms_norm_eps", "must be > 0")
        if not self.rope_theta > 0:
            bad("rope_theta", "must be > 0")
        if self.torch_dtype not in ("float16", "bfloat16", "float32"):
            bad("torch_dtype", "allowed values are ['float16', 'bfloat16', 'float32']")

    # ---- derived -----------------------------------------------------------------------
    @property
    def text_only(self) -> bool:
        """Sparrow drafts see text positions only; the baseline sees every position."""
        return self.attention == "text_window"

    @property
    def has_vocab_map(self) -> bool:
        return self.draft_vocab_size != self.target_vocab_size

    # ---- construction ------------------------------------------------------------------
    @classmethod
    def for_target(cls, target_config, recipe: str = "sparrow", **overrides) -> "SparrowDraftConfig":
        """Defaults matched to a HF Video LLM (or plain decoder) config: the draft layer has
        the target's width/heads, its eps and rope theta. The baseline uses EAGLE-3's anchors
        (2, L//2, L-3) and full attention."""
        tc = getattr(target_config, "text_config", target_config)
        L = tc.num_hidden_layers
        rope = getattr(tc, "rope_parameters", None) or {}
        kw = dict(
            recipe=recipe,
            attention="text_window" if recipe == "sparrow" else "full",
            anchor_layers=[L // 2] if recipe == "sparrow" else [2, L // 2, L - 3],
            target_hidden_size=tc.hidden_size, target_num_layers=L, target_vocab_size=tc.vocab_size,
            hidden_size=tc.hidden_size, num_attention_heads=tc.num_attention_heads,
            num_key_value_heads=tc.num_key_value_heads,
            head_dim=getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads,
            rms_norm_eps=tc.rms_norm_eps,
            rope_theta=float(rope.get("rope_theta", getattr(tc, "rope_theta", 10000.0))),
            max_position_embeddings=tc.max_position_embeddings,
            video_token_id=getattr(target_config, "video_token_id", -1) or -1,
            image_token_id=getattr(target_config, "image_token_id", -1) or -1,
            draft_vocab_size=tc.vocab_size,
            verifier_architectures=list(getattr(target_config, "architectures", None) or VERIFIER_ARCHITECTURES),
        )
        kw.update(overrides)
        return cls(**kw)

    def replace(self, **changes) -> "SparrowDraftConfig":
        d = asdict(self)
        d.update(changes)
        return SparrowDraftConfig(**d)

    # ---- serialization -----------------------------------------------------------------
    def to_speculators_dict(self) -> dict:
        algo = "sparrow" if self.recipe == "sparrow" else "eagle3"
        return {
            "speculators_model_type": algo,
            "speculators_version": SPECULATORS_VERSION,
            "architectures": [ARCHITECTURES[self.recipe]],
            "torch_dtype": self.torch_dtype,
            "transformer_layer_config": {
                "model_type": "llama",
                "hidden_size": self.hidden_size,
                "num_attention_heads": self.num_attention_heads,
                "num_key_value_heads": self.num_key_value_heads,
                "head_dim": self.head_dim,
                "intermediate_size": self.intermediate_size,
                "num_hidden_layers": self.num_layers,
                "rms_norm_eps": self.rms_norm_eps,
                "rope_theta": self.rope_theta,
                "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
                "max_position_embeddings": self.max_position_embeddings,
                "vocab_size": self.target_vocab_size,
                "hidden_act": "silu",
                "attention_bias": False,
                "mlp_bias": False,
                "tie_word_embeddings": False,
                "torch_dtype": self.torch_dtype,
            },
            "draft_vocab_size": self.draft_vocab_size,
            "target_hidden_size": self.target_hidden_size,
            "norm_before_residual": self.norm_before_residual,
            "norm_before_fc": False,
            "eagle_aux_hidden_state_layer_ids": list(self.anchor_layers),
            "sparrow": asdict(self),
            "speculators_config": {
                "algorithm": algo,
                "proposal_methods": [{"proposal_type": "greedy",
                                      "speculative_tokens": self.num_speculative_tokens}],
                "default_proposal_method": "greedy",
                "verifier": {"name_or_path": self.verifier_name_or_path,
                             "architectures": list(self.verifier_architectures)},
            },
        }

    @classmethod
    def from_dict(cls, d: dict) -> "SparrowDraftConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise DraftConfigError(f"unknown SparrowDraftConfig fields {sorted(unknown)}; "
                                   f"known fields are {sorted(known)}")
        return cls(**d)

    def save(self, out_dir) -> Path:
        out = Path(out_dir) / "config.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.to_speculators_dict(), indent=2) + "\n")
        return out

    @classmethod
    def from_speculators_dict(cls, d: dict, where: str = "config") -> "SparrowDraftConfig":
        """From a draft's ``config.json`` as written by :meth:`save` (or a partial one whose
        ``"sparrow"`` section omits fields the speculators keys carry)."""
        if "sparrow" not in d or d.get("speculators_model_type") not in ("sparrow", "eagle3"):
            raise DraftConfigError(f"{where} is not a Sparrow draft config (needs speculators_model_type "
                                   f"'sparrow' or 'eagle3' and a 'sparrow' section)")
        return cls.from_dict({**_fields_from_speculators(d), **d["sparrow"]})

    @classmethod
    def from_dir(cls, path) -> "SparrowDraftConfig":
        path = Path(path)
        cfg = path / "config.json"
        if not cfg.is_file():
            raise FileNotFoundError(f"{cfg} not found: expected a draft directory written by "
                                    "`sparrow train` / `sparrow export` (config.json + model.safetensors)")
        return cls.from_speculators_dict(json.loads(cfg.read_text()), str(cfg))


def _fields_from_speculators(d: dict) -> dict:
    """Fields recoverable from the speculators keys: fills a partial ``"sparrow"`` section."""
    t = d.get("transformer_layer_config", {})
    out = {
        "recipe": "eagle3" if d.get("speculators_model_type") == "eagle3" else "sparrow",
        "hidden_size": t.get("hidden_size"), "intermediate_size": t.get("intermediate_size"),
        "num_attention_heads": t.get("num_attention_heads"), "num_key_value_heads": t.get("num_key_value_heads"),
        "head_dim": t.get("head_dim"), "num_layers": t.get("num_hidden_layers"),
        "rms_norm_eps": t.get("rms_norm_eps"), "rope_theta": t.get("rope_theta"),
        "max_position_embeddings": t.get("max_position_embeddings"), "target_vocab_size": t.get("vocab_size"),
        "draft_vocab_size": d.get("draft_vocab_size"), "target_hidden_size": d.get("target_hidden_size"),
        "norm_before_residual": d.get("norm_before_residual"),
        "anchor_layers": d.get("eagle_aux_hidden_state_layer_ids"),
    }
    out["attention"] = "full" if out["recipe"] == "eagle3" else "text_window"
    return {k: v for k, v in out.items() if v is not None}
