"""What each visual token shows, as a training signal for the embedded target's vision tower.

Trained only through a frozen LM's answer loss, the committed tower learned colours (a linear
probe reads a token's colour 93.8% of the time) but not what the object is (22.7% for the 13
shapes and digits, the majority class is 20.3%; ``benchmarks/probe_tower.py``), which every
question but the colour and count ones needs. SparrowWorld knows what every pixel shows, so
each merged visual token gets labels — the identity and colour of the object covering its
28x28 px x 2 frames, or background — and linear heads on the tower's output learn them with a
cross-entropy added to the LM loss (``PerceptionHeads``, ``--perception-weight``); the heads are
first fitted on tower-only forwards, no LM (``warm_up_heads``; with the tower too, a perception stage). The
heads are training scaffolding, never committed. Per token, identity barely moved (a token shows
a piece of an object); ``object_instances`` / ``ObjectHeads`` pool each object's tokens instead,
and a perception stage on that (tower only, ``--perception-tower-lr``) took identity from ~20% to
86% in 1000 steps of 16 clips (docs/target.md D). ``--perception-level object-motion`` adds
which way each object moves between the two frames of its patch (``ObjectHeads(motion=True)``;
docs/target.md E).

Token layout (``FamilyAdapter.video_tokens`` gives the tokens in this order, separators left
out): one token per (group of ``frames_per_token`` frames, 28 px row, 28 px column). Qwen2.5-VL's
merger emits one per temporal patch of 2 frames (the processor's patch order, restored after
window attention); LLaVA-OneVision's 2x2 pooling of its 14 px patches, one per frame (its
bilinear halving is a 2x2 mean). Motion within a token needs 2 frames or more.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from sparrow_vllm.world.scene import COLOURS, DIGITS, DIRECTIONS, SHAPES, _mask

IDENTITIES = SHAPES + DIGITS
MOTIONS = tuple(DIRECTIONS.values())  # (dx, dy) in image axes, in DIRECTIONS' order
STILL_WEIGHT = 0.1  # of a still instance in the motion loss, against 1 for a moving one
CELL = 28  # px of one merged token (14 px patches, 2x2 merge or pooling)
FRAMES_PER_TOKEN = 2  # Qwen2.5-VL's temporal patch (the adapters' ``frames_per_token``)
IGNORE = -100
# A token is background below MIN_BG of its pixels covered, an object from MIN_OBJECT on;
# in between (a sliver of an object) it is not scored.
MIN_BG, MIN_OBJECT = 0.02, 0.15


def _tracked(sample, frames_per_token: int) -> tuple[int, int, int, dict]:
    """``(T, H, W, track)`` of a sample whose frames tile into merged visual tokens."""
    T, H, W = sample.num_frames, sample.height, sample.width
    if T % frames_per_token or H % CELL or W % CELL:
        raise ValueError(f"frames {T}x{H}x{W}: need a multiple of {frames_per_token} frames and sides that are "
                         f"multiples of {CELL}")
    return T, H, W, sample.scene.track(T, H, W)


def token_cells(frames: np.ndarray, frames_per_token: int) -> np.ndarray:
    """``[tokens, frames_per_token * CELL * CELL, ...]``: the pixels of each visual token of
    ``frames [T, H, W, ...]``, the tokens in the layout's order."""
    T, H, W, rest = *frames.shape[:3], frames.shape[3:]
    cells = frames.reshape(T // frames_per_token, frames_per_token, H // CELL, CELL, W // CELL, CELL, *rest)
    cells = cells.transpose(0, 2, 4, 1, 3, 5, *range(6, 6 + len(rest)))
    return cells.reshape((T // frames_per_token) * (H // CELL) * (W // CELL), -1, *rest)


def _object_pixels(obj, k: int, track: dict, T: int, H: int, W: int) -> np.ndarray:
    """Bool [T, H, W]: the pixels object ``k`` paints in each frame."""
    size = obj.size_px(H, W)
    mask = _mask(obj.label, size)
    pixels = np.zeros((T, H, W), bool)
    for f in np.flatnonzero(track["visible"][:, k]):
        y, x = track["top"][f, k], track["left"][f, k]
        pixels[f, y:y + size, x:x + size][mask] = True
    return pixels


def token_cover(sample, k: int, track: dict, frames_per_token: int = FRAMES_PER_TOKEN) -> np.ndarray:
    """Float [frame groups, rows, cols]: the share of each merged token's pixels (28x28 px x
    ``frames_per_token`` frames) object ``k`` of ``sample`` covers (``track``: ``_tracked``'s)."""
    T, H, W = sample.num_frames, sample.height, sample.width
    cover = _object_pixels(sample.scene.objects[k], k, track, T, H, W).astype(np.float32)
    return cover.reshape(T // frames_per_token, frames_per_token, H // CELL, CELL, W // CELL, CELL).mean((1, 3, 5))


def token_labels(sample, frames_per_token: int = FRAMES_PER_TOKEN) -> tuple[np.ndarray, np.ndarray]:
    """``(identity, colour)`` int64 arrays, one entry per merged visual token of ``sample``
    (the layout above): 0 background, ``1 + IDENTITIES.index`` / ``1 + COLOURS.index`` for
    the object covering most of the token, ``IGNORE`` for a sliver."""
    T, H, W, track = _tracked(sample, frames_per_token)
    ident = np.zeros((T, H, W), np.int64)
    colour = np.zeros((T, H, W), np.int64)
    for k, o in enumerate(sample.scene.objects):
        pixels = _object_pixels(o, k, track, T, H, W)
        ident[pixels] = 1 + IDENTITIES.index(o.label)
        colour[pixels] = np.broadcast_to((1 + track["colour"][:, k])[:, None, None], pixels.shape)[pixels]

    def per_token(labels: np.ndarray, classes: int) -> np.ndarray:
        cells = token_cells(labels, frames_per_token)
        counts = np.stack([(cells == c).sum(-1) for c in range(1, classes + 1)], -1)
        covered = counts.sum(-1) / cells.shape[-1]
        out = 1 + counts.argmax(-1)
        out[covered < MIN_OBJECT] = IGNORE
        out[covered < MIN_BG] = 0
        return out.reshape(-1)

    return per_token(ident, len(IDENTITIES)), per_token(colour, len(COLOURS))


def _motion(track: dict, k: int, frames: slice) -> int:
    """0 if object ``k`` holds still over ``frames`` (both visible), ``1 + MOTIONS.index`` if it
    moves, ``IGNORE`` if it is not visible in all of them."""
    if not track["visible"][frames, k].all():
        return IGNORE
    dx = int(np.sign(track["left"][frames, k][-1] - track["left"][frames, k][0]))
    dy = int(np.sign(track["top"][frames, k][-1] - track["top"][frames, k][0]))
    if (dx, dy) == (0, 0):
        return 0
    return 1 + MOTIONS.index((dx, dy)) if (dx, dy) in MOTIONS else IGNORE


def object_instances(sample, min_cover: float = 0.5, frames_per_token: int = FRAMES_PER_TOKEN
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Objects as the LM needs them: one instance per (object, frame group) in which at
    least ``min_cover`` of a token's worth of the object is visible. Returns ``(weights,
    identity, colour, motion)``: ``weights`` [instances, tokens] float32, each row the share of
    every merged token's pixels the object covers, normalised to sum 1 (the pooling an
    object-level head reads); ``identity`` / ``colour`` [instances] int64, ``IDENTITIES`` /
    ``COLOURS`` indices (colour ``IGNORE`` where it changes within the patch); ``motion``
    [instances] int64, 0 still or ``1 + MOTIONS.index`` the way it moves between the group's
    first and last frame (``IGNORE`` if it is not in all), which the tower sees when the frames
    are one patch (one frame a token: always 0)."""
    T, H, W, track = _tracked(sample, frames_per_token)
    steps, rows, cols = T // frames_per_token, H // CELL, W // CELL
    weights, ident, colour, motion = [], [], [], []
    for k, o in enumerate(sample.scene.objects):
        cells = token_cover(sample, k, track, frames_per_token)
        for t in range(steps):
            if cells[t].sum() < min_cover:
                continue
            w = np.zeros((steps, rows, cols), np.float32)
            w[t] = cells[t] / cells[t].sum()
            weights.append(w.reshape(-1))
            ident.append(IDENTITIES.index(o.label))
            frames = slice(t * frames_per_token, (t + 1) * frames_per_token)
            c = track["colour"][frames, k]
            colour.append(int(c[0]) if (c == c[0]).all() else IGNORE)
            motion.append(_motion(track, k, frames))
    n = steps * rows * cols
    return (np.stack(weights) if weights else np.zeros((0, n), np.float32),
            np.array(ident, np.int64), np.array(colour, np.int64), np.array(motion, np.int64))


class ObjectHeads(nn.Module):
    """Linear identity and colour classifiers on an object's pooled tokens (``object_instances``):
    what a question about the object needs, rather than what one token (a piece of it) shows.
    ``motion``: a third head, still or which way the object moves within the temporal patch
    (what a direction question needs at short lengths, where two frames of a patch are ~7-17 px
    apart)."""

    def __init__(self, hidden: int, motion: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.identity = nn.Linear(hidden, len(IDENTITIES))
        self.colour = nn.Linear(hidden, len(COLOURS))
        self.motion = nn.Linear(hidden, 1 + len(MOTIONS)) if motion else None
        # ~88% of the instances hold still (16-64-frame clips): unweighted, the head learns
        # "still" and gives the tower no reason to see motion (measured: 0% on moving ones)
        self.register_buffer("motion_weights", torch.tensor([STILL_WEIGHT] + [1.0] * len(MOTIONS)), persistent=False)

    def forward(self, tokens: torch.Tensor, instances: tuple[np.ndarray, ...]) -> dict[str, torch.Tensor]:
        """Cross-entropies summed; accuracies (``motion_acc``: on the moving instances only,
        nan without any)."""
        weights, ident, colour, motion = (torch.as_tensor(x, device=tokens.device) for x in instances)
        if tokens.shape[0] != weights.shape[1]:
            raise ValueError(f"{tokens.shape[0]} visual tokens, {weights.shape[1]} in the instances: labels of another "
                             "family's layout (frames_per_token)?")
        nan = torch.tensor(float("nan"))
        if not len(ident):  # nothing to classify; a zero tied to the heads and the tokens, so
            # backward() works on any clip whether or not the tower is trained
            zero = (tokens.sum() + sum(p.sum() for p in self.parameters())) * 0.0
            return {"loss": zero, "identity_acc": nan, "colour_acc": nan, **({"motion_acc": nan} if self.motion is not None else {})}
        pooled = weights.to(tokens.dtype) @ self.norm(tokens)
        li, lc = self.identity(pooled), self.colour(pooled)
        out = {
            "loss": nn.functional.cross_entropy(li, ident) + _masked_ce(lc, colour),
            "identity_acc": (li.argmax(-1) == ident).float().mean().detach(),
            "colour_acc": (lc.argmax(-1) == colour)[colour >= 0].float().mean().detach(),
        }
        if self.motion is not None:
            lm = self.motion(pooled)
            out["loss"] = out["loss"] + _masked_ce(lm, motion, self.motion_weights.to(lm.dtype))
            moving = motion > 0
            out["motion_acc"] = (lm.argmax(-1) == motion)[moving].float().mean().detach() if moving.any() else nan
        return out


def _masked_ce(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None):
    """Cross-entropy over the labels that are not IGNORE (0.0 if none are)."""
    if not (labels >= 0).any():
        return 0.0
    return nn.functional.cross_entropy(logits, labels, weight=weight, ignore_index=IGNORE)


class PerceptionHeads(nn.Module):
    """Linear identity and colour classifiers on the tower's merged tokens (layer-normed: the
    merger's outputs are sized for the LM's embeddings, not for a classifier)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.identity = nn.Linear(hidden, 1 + len(IDENTITIES))
        self.colour = nn.Linear(hidden, 1 + len(COLOURS))

    def forward(self, tokens: torch.Tensor, labels: tuple[np.ndarray, np.ndarray]) -> dict[str, torch.Tensor]:
        """Cross-entropies and accuracies on the object tokens (background included in the loss)."""
        ident, colour = (torch.as_tensor(x, device=tokens.device) for x in labels)
        if tokens.shape[0] != ident.shape[0]:
            raise ValueError(f"{tokens.shape[0]} visual tokens, {ident.shape[0]} labels: labels of another family's "
                             "layout (frames_per_token)?")
        tokens = self.norm(tokens)
        li, lc = self.identity(tokens), self.colour(tokens)
        obj = ident > 0
        return {
            "loss": nn.functional.cross_entropy(li, ident, ignore_index=IGNORE)
            + nn.functional.cross_entropy(lc, colour, ignore_index=IGNORE),
            "identity_acc": (li.argmax(-1)[obj] == ident[obj]).float().mean().detach(),
            "colour_acc": (lc.argmax(-1)[obj] == colour[obj]).float().mean().detach(),
        }


def tower_tokens(output) -> torch.Tensor:
    """The merged tokens from whatever the vision tower returns (a tensor or a model output)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@contextlib.contextmanager
def _weights(module: nn.Module, state: dict[str, torch.Tensor]):
    """``module`` with the parameters of ``state`` while the block runs (the same tensors after)."""
    params = dict(module.named_parameters())
    live = {n: p.data for n, p in params.items()}
    try:
        for n, p in params.items():
            p.data = state[n]
        yield module
    finally:
        for n, p in params.items():
            p.data = live[n]


def warm_up_heads(model, adapter, processor, heads: PerceptionHeads, steps: int, batch: int, lr: float,
                  sample_at, labels_of=token_labels, tower_lr: float = 0.0, tower_hold: float = 0.0) -> list[dict]:
    """Fit the heads on tower-only forwards (no LM: 100 steps of 16 clips took ~1.5 min with the
    tower frozen, against ~9 s a step of 4 clips in the LM stage), so the joint stage starts
    with heads whose gradient means something. ``tower_lr`` > 0 trains the tower with them
    (cosine schedule): a perception stage, which the frozen LM cannot read afterwards (its answer
    loss 0.5 -> 4.3 after 30 steps of the per-token loss, measured), so the LM stage that follows
    must re-learn the tower's interface. ``tower_hold`` > 0 adds this times the tokens' squared
    distance from what the tower made of the same clip before the stage, over their squared norm
    (``hold`` in the records): the heads pull what the tokens say about objects while the
    interface the LM reads moves less, its norms included. ``sample_at(step, i)`` gives the clips,
    ``labels_of(sample)`` the heads' labels (``token_labels`` or ``object_instances``). Returns
    log records (every 50 steps)."""
    from tqdm import tqdm

    from sparrow_vllm.target.train_vision import cosine_with_warmup

    visual = adapter.vision_module(model)
    groups = [{"params": list(heads.parameters()), "lr": lr}]
    tower = [p for p in visual.parameters() if p.requires_grad] if tower_lr else []
    if tower:
        groups.append({"params": tower, "lr": tower_lr})
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    sched = cosine_with_warmup(opt, steps, warmup=max(1, steps // 16))
    start = {n: p.detach().clone() for n, p in visual.named_parameters()} if tower and tower_hold else None
    records, window = [], []
    for step in tqdm(range(steps), desc="perception stage" if tower else "perception heads warm-up"):
        opt.zero_grad(set_to_none=True)
        for i in range(batch):
            sample = sample_at(step, i)
            inputs = adapter.hf_inputs(processor, sample.frames(), sample.question)
            if start is not None:
                with torch.no_grad(), _weights(visual, start):
                    before = adapter.video_tokens(model, inputs)
            with torch.set_grad_enabled(bool(tower)):
                tokens = adapter.video_tokens(model, inputs)
            out = heads(tokens, labels_of(sample))
            loss = out["loss"]
            if start is not None:
                out["hold"] = (tokens - before).pow(2).sum(-1).mean() / before.pow(2).sum(-1).mean().clamp_min(1e-12)
                loss = loss + tower_hold * out["hold"]
            (loss / batch).backward()
            window.append({k: float(v.detach()) for k, v in out.items()})
        if tower:
            torch.nn.utils.clip_grad_norm_(tower, 1.0)
        opt.step()
        sched.step()
        if (step + 1) % 50 == 0 or step + 1 == steps:
            rec = {"heads_step": step + 1, **{k: float(np.nanmean([w[k] for w in window])) for k in window[0]}}
            records.append(rec)
            tqdm.write(str(rec))
            window = []
    return records
