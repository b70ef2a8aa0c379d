"""Qwen2.5-VL mRoPE positions as vLLM computes them, for every transformers code path.

transformers 5.x (5.19 here) continues the text after a video at ``start + max(h, w)``, the
video's *spatial* extent only. The reference Qwen2.5-VL code and vLLM 0.32
(``Qwen2_5_VLForConditionalGeneration.get_mrope_input_positions``) continue at one past the
largest position in the video block, temporal extent included. The two agree while the
temporal extent is the smaller one (up to 96 frames at 24 fps for our 4x4 merged grid) and
drift apart beyond: at 128 frames every text position after the video moves, and greedy
answers from transformers and vLLM differ. Draft training data, offline evaluation and
serving must see the same positions, so our transformers paths use vLLM's convention.
"""

from __future__ import annotations

import itertools
import types

import numpy as np
import torch


def vision_positions(start: int, grid_thw, spatial_merge_size: int, t_factor: float) -> torch.Tensor:
    """``[3, t*h*w]`` positions of one image/video block starting at ``start`` (vLLM's
    arithmetic: temporal index scaled by ``t_factor`` in float64, then truncated)."""
    t, h, w = (int(x) for x in grid_thw)
    grid = np.indices((t, h // spatial_merge_size, w // spatial_merge_size))
    if t_factor != 1.0:
        grid[0] = (grid[0] * t_factor).astype(np.int64)
    return torch.from_numpy(grid.reshape(3, -1) + start)


def rope_index(self, input_ids, mm_token_type_ids, image_grid_thw=None, video_grid_thw=None,
               second_per_grid_ts=None, attention_mask=None, **kwargs):
    """Drop-in for ``Qwen2_5_VLModel.get_rope_index``: ``(position_ids [3, B, T], deltas [B, 1])``."""
    vcfg = self.config.vision_config
    position_ids = torch.zeros(3, *input_ids.shape, dtype=input_ids.dtype, device=input_ids.device)
    grids = {1: iter(image_grid_thw) if image_grid_thw is not None else None,
             2: iter(video_grid_thw) if video_grid_thw is not None else None}
    seconds = iter(second_per_grid_ts) if second_per_grid_ts is not None else itertools.repeat(1.0)
    deltas = []
    for b in range(input_ids.shape[0]):
        keep = attention_mask[b].bool() if attention_mask is not None else torch.ones_like(input_ids[b], dtype=torch.bool)
        kinds = mm_token_type_ids[b][keep].tolist()
        parts, start = [], 0
        for kind, group in itertools.groupby(kinds):
            n = len(list(group))
            if kind == 0:
                p = torch.arange(n).view(1, -1).expand(3, -1) + start
            else:
                t_factor = float(next(seconds)) * vcfg.tokens_per_second if kind == 2 else 1.0
                p = vision_positions(start, next(grids[kind]), vcfg.spatial_merge_size, t_factor)
            parts.append(p)
            start = int(p.max()) + 1
        pos = torch.cat(parts, 1).to(position_ids)
        position_ids[:, b, keep] = pos
        deltas.append(int(pos.max()) + 1 - int(keep.sum()))
    return position_ids, torch.tensor(deltas, device=input_ids.device).unsqueeze(1)


def use_vllm_positions(model):
    """Make a transformers Qwen2.5-VL model (``*ForConditionalGeneration`` or its ``.model``)
    compute vLLM's mRoPE positions; returns the model."""
    inner = getattr(model, "model", model)
    inner.get_rope_index = types.MethodType(rope_index, inner)
    return model
