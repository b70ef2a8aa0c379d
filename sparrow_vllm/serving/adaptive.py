"""Adaptive k: how many tokens to draft per step, from measured step costs and acceptance.

For a batch of ``B`` requests whose mean context is ``L`` tokens, drafting ``k`` tokens a
request gives, per engine step,

    speedup(k, B, L) = E[accepted + 1 | k] / (t_step(k, B, L) / t_plain(B, L))
    E[accepted + 1 | k] = 1 + sum_{i < k} p_i

where ``p_i`` is the draft's acceptance at position ``i`` (vLLM's
``spec_decode_num_accepted_tokens_per_pos / spec_decode_num_drafts``: a draft token counts
only if all before it were accepted), ``t_plain`` the step time without speculation and
``t_step(k)`` the measured time of a whole speculative step: the verify of ``k + 1`` tokens a
request *and* the draft's own forwards (the issue's ``k * c`` term is inside the measurement,
not modelled). ``k = 0`` is a step that drafts nothing; in a Sparrow engine it still writes
the draft KV of the step's tokens (vLLM's EAGLE proposer does the same), so its speedup is
``t_plain / t_step(0)``, a little below 1.

``sparrow tune`` measures ``t_step`` on this machine (``serving/tune.py``) and writes a
:class:`KTable`: per measured context length, a vLLM batch-size schedule
``[[lo, hi, k], ...]`` (``num_speculative_tokens_per_batch_size``). With
``"num_speculative_tokens_per_batch_size": "auto"`` the engine runs it: vLLM's own scheduler
looks up k by batch size; with more than one context length, ``vllm_compat`` patch 9 picks the
row of the batch's mean context each step.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

K_TABLE_NAME = "k_table.json"  # beside the draft's config.json
# A k > 0 must beat no speculation by this much in the model to be chosen: the model is fitted
# from a short warm-up, and a predicted 1.01x is within its error.
MIN_GAIN = 1.05


class KTableError(ValueError):
    """A missing or malformed k table; the message says how to make one."""


def expected_tokens(acceptance: list[float], k: int) -> float:
    """E[accepted + 1 | k] tokens per request per step."""
    return 1.0 + sum(acceptance[:k])


def predicted_speedup(acceptance: list[float], step_s: dict[int, float], plain_s: float, k: int) -> float:
    """``step_s[k]``: measured seconds of a speculative step drafting k (k = 0 included)."""
    return expected_tokens(acceptance, k) / (step_s[k] / plain_s)


def best_k(acceptance: list[float], step_s: dict[int, float], plain_s: float) -> tuple[int, float]:
    """(k, predicted speedup): the k of the highest predicted speedup; 0 unless some k > 0 is
    predicted at least ``MIN_GAIN`` times no speculation."""
    scores = {k: predicted_speedup(acceptance, step_s, plain_s, k) for k in step_s if k <= len(acceptance)}
    k = max((k for k in scores if k > 0), key=lambda k: scores[k], default=0)
    if k == 0 or scores[k] < MIN_GAIN:
        return 0, scores.get(0, 1.0)
    return k, scores[k]


def batch_schedule(k_at: dict[int, int]) -> list[list[int]]:
    """Measured batch sizes -> vLLM's ``[[lo, hi, k], ...]``. A batch between two measured
    sizes takes the k of the larger one (k falls with batch size: the safe side); batches
    above the largest take its k. Adjacent ranges with the same k merge."""
    sizes = sorted(k_at)
    out, lo = [], 1
    for i, b in enumerate(sizes):
        hi = b if i + 1 < len(sizes) else 1 << 20
        if out and out[-1][2] == k_at[b]:
            out[-1][1] = hi
        else:
            out.append([lo, hi, k_at[b]])
        lo = b + 1
    return out


@dataclass(slots=True)
class KTable:
    """``contexts[i]`` (tokens, ascending) -> ``schedules[i]`` (vLLM batch-size schedule)."""

    contexts: list[int]
    schedules: list[list[list[int]]]
    k_max: int
    hardware: dict = field(default_factory=dict)
    measured: list[dict] = field(default_factory=list)  # the cells the table came from

    def __post_init__(self):
        if not self.contexts or len(self.contexts) != len(self.schedules):
            raise KTableError("a k table needs one batch-size schedule per context length")
        if self.contexts != sorted(self.contexts):
            raise KTableError(f"k table contexts must ascend, got {self.contexts}")
        from vllm.v1.spec_decode.dynamic.utils import validate_and_normalize_dynamic_sd_schedule

        for s in self.schedules:
            try:
                validate_and_normalize_dynamic_sd_schedule(s)
            except ValueError as e:
                raise KTableError(f"k table schedule {s}: {e}") from None
            if any(k > self.k_max for _, _, k in s):
                raise KTableError(f"k table schedule {s} drafts more than its k_max {self.k_max}")

    def row(self, context: float) -> int:
        """The measured context nearest ``context`` in log space."""
        c = max(1.0, context)
        return min(range(len(self.contexts)), key=lambda i: abs(math.log(self.contexts[i] / c)))

    def lookup(self, max_batch: int) -> list[list[int]]:
        """Per row, vLLM's dense batch-size -> k list (index 0 unused)."""
        from vllm.v1.spec_decode.dynamic.utils import build_dynamic_sd_schedule_lookup

        return [build_dynamic_sd_schedule_lookup(s, max_batch, self.k_max) for s in self.schedules]

    def to_json(self) -> dict:
        return {"contexts": self.contexts, "schedules": self.schedules, "k_max": self.k_max,
                "hardware": self.hardware, "measured": self.measured}

    @classmethod
    def read(cls, path: str | Path) -> "KTable":
        p = Path(path)
        if not p.exists():
            raise KTableError(f"{p} does not exist: run `sparrow tune --draft {p.parent}` on this machine "
                              "first (it measures the step costs \"auto\" needs).")
        try:
            d = json.loads(p.read_text())
            return cls(contexts=[int(c) for c in d["contexts"]], schedules=d["schedules"], k_max=int(d["k_max"]),
                       hardware=d.get("hardware", {}), measured=d.get("measured", []))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise KTableError(f"{p} is not a k table ({e!r}): rerun `sparrow tune`.") from None


def fit_table(cells: list[dict], acceptance: list[float], k_max: int, hardware: dict | None = None) -> KTable:
    """``cells``: measured steps, each ``{"visual_tokens", "context", "batch", "k", "step_s"}``
    with ``k = None`` for no speculation. One schedule per context length measured."""
    by_len: dict[int, dict[int, dict]] = {}
    for c in cells:
        by_len.setdefault(c["visual_tokens"], {}).setdefault(c["batch"], {})[c["k"]] = c
    contexts, schedules, measured = [], [], []
    for vt in sorted(by_len):
        k_at = {}
        for b, at in sorted(by_len[vt].items()):
            if None not in at:
                raise KTableError(f"no plain step measured at {vt} visual tokens, batch {b}")
            step_s = {k: c["step_s"] for k, c in at.items() if k is not None}
            k, s = best_k(acceptance, step_s, at[None]["step_s"])
            k_at[b] = k
            measured.append({"visual_tokens": vt, "batch": b, "k": k, "predicted_speedup": s,
                             "step_over_plain": {str(kk): v / at[None]["step_s"] for kk, v in sorted(step_s.items())}})
        contexts.append(int(sum(c["context"] for at in by_len[vt].values() for c in at.values())
                            / sum(len(at) for at in by_len[vt].values())))
        schedules.append(batch_schedule(k_at))
    if all(s == schedules[0] for s in schedules):
        # The context axis earns nothing here: one row, and vLLM's own lookup alone runs it.
        contexts, schedules = [contexts[0]], schedules[:1]
    return KTable(contexts=contexts, schedules=schedules, k_max=k_max, hardware=hardware or {}, measured=measured)
