"""A small LoRA on the embedded targets' SmolLM2 text stack, merged into its weights at build time.

Training wraps the LM's linear layers (``LoRALinear``: ``W x + up (down x)``, ``up`` starting
at zero so the wrapped LM starts as SmolLM2); what is committed next to the vision parts is
the factors, keyed ``lora.<module>.down`` / ``lora.<module>.up`` with ``<module>`` the
decoder's own name (``layers.3.self_attn.q_proj``: the same in Qwen2.5-VL's and LLaVA-OV's
language model and in ``LlamaForCausalLM.model``), the scale folded into ``up``.
``merge_lora`` adds ``up @ down`` to the matching ``.weight`` of a decoder state dict, so the
assembled checkpoint is a plain model that vLLM serves unmodified.
"""

from __future__ import annotations

import math

import torch
from torch import nn

PREFIX = "lora."
# Every linear layer of a Llama/Qwen2 decoder layer.
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Module):
    """``base(x) + scale * B(A(x))``; ``base`` frozen, ``B`` zero at init."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.down = nn.Parameter(torch.empty(rank, base.in_features))
        self.up = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))
        self.scale = alpha / rank

    def forward(self, x):
        return self.base(x) + (x @ self.down.t() @ self.up.t()) * self.scale


def add_lora(lm: nn.Module, rank: int, alpha: float | None = None) -> list[nn.Parameter]:
    """Wrap every ``TARGET_MODULES`` linear of ``lm`` (in place); returns the new parameters."""
    if rank <= 0:
        raise ValueError(f"--lora-rank must be positive, got {rank}")
    alpha = float(2 * rank if alpha is None else alpha)
    params = []
    for name, module in list(lm.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in TARGET_MODULES and isinstance(child, nn.Linear):
                wrapped = LoRALinear(child, rank, alpha)
                setattr(module, child_name, wrapped)
                params += [wrapped.down, wrapped.up]
    if not params:
        raise RuntimeError(f"no {TARGET_MODULES} linear layers found to adapt")
    return params


def lora_parts(lm: nn.Module) -> dict[str, torch.Tensor]:
    """The factors to commit (scale folded into ``up``), keyed by the decoder's module names."""
    parts = {}
    for name, module in lm.named_modules():
        if isinstance(module, LoRALinear):
            parts[f"{PREFIX}{name}.down"] = module.down.detach().clone().contiguous()
            parts[f"{PREFIX}{name}.up"] = (module.up.detach() * module.scale).contiguous()
    return parts


def load_lora_parts(lm: nn.Module, parts: dict[str, torch.Tensor], grow: bool = False) -> None:
    """Put committed factors back into the wrappers of ``lm`` (``add_lora`` first; same rank).

    ``grow``: the wrappers may have a higher rank than the parts (a continued run given more
    capacity): the parts fill the first rows of ``down`` and columns of ``up``, the other
    columns of ``up`` are zeroed, so the adapted LM is exactly the parts' at the start and the
    other rows of ``down`` keep their random init to learn from."""
    wrappers = {name: m for name, m in lm.named_modules() if isinstance(m, LoRALinear)}
    names = {k[len(PREFIX):].rsplit(".", 1)[0] for k in parts if k.startswith(PREFIX)}
    if names != set(wrappers):
        raise ValueError(f"LoRA factors for {len(names)} modules, the model has {len(wrappers)} adapted ones")
    with torch.no_grad():
        for name, m in wrappers.items():
            down, up = parts[f"{PREFIX}{name}.down"], parts[f"{PREFIX}{name}.up"]
            rank = down.shape[0]
            if down.shape[1:] != m.down.shape[1:] or rank > m.down.shape[0] or (rank < m.down.shape[0] and not grow):
                raise ValueError(f"LoRA rank {rank} in the parts, {m.down.shape[0]} in the model")
            m.down[:rank].copy_(down)
            m.up.zero_()
            m.up[:, :rank].copy_(up / m.scale)


def has_lora(parts: dict[str, torch.Tensor] | None) -> bool:
    return bool(parts) and any(k.startswith(PREFIX) for k in parts)


def without_lora(parts: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    return None if parts is None else {k: v for k, v in parts.items() if not k.startswith(PREFIX)}


def merge_lora(state: dict[str, torch.Tensor], parts: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """``state`` (a decoder's state dict) with ``up @ down`` added to each adapted weight."""
    if not has_lora(parts):
        return state
    state = dict(state)
    for key in parts:
        if not key.startswith(PREFIX) or not key.endswith(".down"):
            continue
        name = key[len(PREFIX):-len(".down")]
        weight = f"{name}.weight"
        if weight not in state:
            raise KeyError(f"LoRA factors for {name}, which the language model does not have")
        up, down = parts[f"{PREFIX}{name}.up"], parts[key]
        state[weight] = state[weight] + (up.double() @ down.double()).to(state[weight].dtype)
    return state
