"""Teach the LM where to look: an attention loss from the answer to the object asked about.

docs/target.md E-F: the tower encodes what an object is and which way it moves (linear probes
90% and 95% per object), yet the LM answers direction questions at chance, on training clips as
on test clips (``benchmarks/answer_loss.py``): its answers do not read the visual tokens of the
object the question names. SparrowWorld knows which tokens those are. For questions about one
object (``Sample.subject``: identify, colour, direction, recolour, first, disappear), one
attention head of one LM layer (default layer 19, head 1: on STUDY E's candidate, a head
already drawn to the object, 0.14 of its mass on the object's tokens against 0.37 on all
visual tokens, the object being 11% of them; ``benchmarks/subject_attention.py``) is trained
to put its mass, at every position that predicts an answer token, on the visual tokens the
object covers (any temporal patch):
``-log(attention mass on them)``, averaged over those positions, added to the answer loss
times ``--grounding-weight``. The head then has every reason to carry the object's features to
the answer; the tower's tokens get a reason to make the object findable. Training scaffolding:
nothing is added to the model.

The loss reads the layer's post-RoPE query and key from the attention function train_vision
routes the LM through (``capture``), so it sees the attention exactly as the forward computed
it, the long-video key bias included.
"""

from __future__ import annotations

import numpy as np
import torch

from sparrow_vllm.target.perception import FRAMES_PER_TOKEN, MIN_OBJECT, _tracked, token_cover


def subject_tokens(sample, min_cover: float = MIN_OBJECT) -> np.ndarray | None:
    """Bool [merged visual tokens] (Qwen2.5-VL layout): the tokens at least ``min_cover`` of
    whose pixels the question's object covers, or None for a question about no one object
    (or one never visible at this length)."""
    if sample.subject is None:
        return None
    tokens = token_cover(sample, sample.subject, _tracked(sample, FRAMES_PER_TOKEN)[3]).reshape(-1) >= min_cover
    return tokens if tokens.any() else None


class Grounding:
    """Captures head ``head`` of LM layer ``layer`` during a forward; ``loss`` afterwards."""

    def __init__(self, layer: int, head: int):
        self.layer, self.head = layer, head
        self.query = self.key = self.scaling = None

    def capture(self, module, query: torch.Tensor, key: torch.Tensor) -> None:
        """From the attention function: ``query [1, heads, T, d]``, ``key [1, kv_heads, T, d]``."""
        if getattr(module, "layer_idx", None) != self.layer:
            return
        groups = query.shape[1] // key.shape[1]
        self.query, self.key = query[0, self.head], key[0, self.head // groups]
        self.scaling = module.scaling

    def loss(self, is_visual: torch.Tensor, subject: np.ndarray, labels: torch.Tensor,
             visual_key_bias: torch.Tensor | None = None) -> torch.Tensor:
        """``is_visual [T]`` bool; ``subject`` the visual tokens to look at (``subject_tokens``);
        ``labels [T]`` the LM labels (-100 outside the answer). Mean ``-log`` attention mass on
        the subject's tokens over the positions that predict an answer token."""
        if self.query is None:
            raise RuntimeError(f"no attention captured at layer {self.layer}: is the LM routed through "
                               "train_vision's attention function?")
        visual_at = torch.nonzero(is_visual)[:, 0]
        if len(visual_at) != len(subject):
            raise ValueError(f"{len(visual_at)} visual tokens, {len(subject)} in the subject mask")
        keys = torch.zeros_like(is_visual)
        keys[visual_at[torch.as_tensor(subject)]] = True
        rows = torch.nonzero(labels[1:] != -100)[:, 0]  # position t predicts token t + 1
        q, k = self.query[rows], self.key
        scores = (q @ k.t()).float() * self.scaling
        if visual_key_bias is not None:
            scores = scores + visual_key_bias[None, :].to(scores.dtype)
        future = torch.arange(len(k), device=k.device)[None, :] > rows[:, None]
        scores = scores.masked_fill(future, float("-inf"))
        on_subject = scores.masked_fill(~keys[None, :], float("-inf"))
        log_mass = torch.logsumexp(on_subject, -1) - torch.logsumexp(scores, -1)
        self.query = self.key = None
        return -log_mass.mean()
