"""Which positions of a request are text, and the draft's text index of each (pure numpy).

The Sparrow draft's sequence is the request's text tokens only: text index ``i`` is the
i-th non-visual token. Prompt text positions come from the request's multimodal
placeholder ranges; every generated token is text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RequestText:
    prompt_len: int
    prompt_token_ids: np.ndarray  # [prompt_len] int64
    text_positions: np.ndarray  # [num_prompt_text] sorted positions of the prompt's text tokens

    @classmethod
    def build(cls, prompt_token_ids, visual_ranges: list[tuple[int, int, np.ndarray | None]]) -> "RequestText":
        """``visual_ranges``: ``(offset, length, is_embed or None)`` per multimodal item."""
        ids = np.asarray(prompt_token_ids, dtype=np.int64)
        visual = np.zeros(len(ids), dtype=bool)
        for offset, length, is_embed in visual_ranges:
            if is_embed is None:
                visual[offset:offset + length] = True
            else:
                visual[offset:offset + length] |= np.asarray(is_embed, dtype=bool)[:length]
        return cls(len(ids), ids, np.flatnonzero(~visual).astype(np.int64))

    @property
    def num_prompt_text(self) -> int:
        return len(self.text_positions)

    def is_text(self, positions: np.ndarray) -> np.ndarray:
        in_prompt = positions < self.prompt_len
        out = ~in_prompt
        if in_prompt.any():
            p = positions[in_prompt]
            idx = np.searchsorted(self.text_positions, p)
            idx_c = np.minimum(idx, max(self.num_prompt_text - 1, 0))
            out[in_prompt] = (idx < self.num_prompt_text) & (self.text_positions[idx_c] == p) if self.num_prompt_text else False
        return out

    def text_index(self, positions: np.ndarray) -> np.ndarray:
        """Number of text tokens before each position (= the text index of a text position)."""
        in_prompt = positions < self.prompt_len
        return np.where(
            in_prompt,
            np.searchsorted(self.text_positions, positions),
            self.num_prompt_text + (positions - self.prompt_len),
        )

    def positions_of(self, text_idx: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`text_index` on text positions."""
        in_prompt = text_idx < self.num_prompt_text
        safe = np.minimum(text_idx, max(self.num_prompt_text - 1, 0))
        prompt_pos = self.text_positions[safe] if self.num_prompt_text else np.zeros_like(text_idx)
        return np.where(in_prompt, prompt_pos, self.prompt_len + (text_idx - self.num_prompt_text))

    def next_text_position(self, positions: np.ndarray) -> np.ndarray:
        """The first text position strictly after each position."""
        idx = np.searchsorted(self.text_positions, positions, side="right")
        nxt_prompt = np.where(
            idx < self.num_prompt_text,
            self.text_positions[np.minimum(idx, max(self.num_prompt_text - 1, 0))] if self.num_prompt_text else self.prompt_len,
            self.prompt_len,
        )
        return np.where(positions + 1 < self.prompt_len, nxt_prompt, positions + 1)
