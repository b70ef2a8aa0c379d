"""``sparrow train``: the draft with VATA masks identical to inference and the MTP unroll.

Loss: cross-entropy on the target's greedy next tokens (self-distillation data), summed
over MTP steps with weights ``step_decay ** (s - 1)``; only origins whose label is a token
the target generated count. Deterministic for a ``--seed`` (data order is a pure function of
seed and epoch), checkpointed every ``--ckpt-every`` steps, resumable with ``--resume``.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sparrow_vllm.draft.config import WINDOW_SIZE, SparrowDraftConfig
from sparrow_vllm.draft.data import check_draft_compatible, load_samples
from sparrow_vllm.draft.export import save_draft
from sparrow_vllm.draft.model import SparrowDraftModel, mtp_unroll, shift


# ---- samples -> draft sequences ------------------------------------------------------------
def draft_sequence(sample: dict, cfg: SparrowDraftConfig) -> dict:
    """The rows a draft of ``cfg`` sees: text rows (Sparrow) or all rows (baseline), with its
    RoPE positions (text index / mRoPE t) and the first response row."""
    if cfg.text_only:
        keep = sample["text_index"] >= 0
        rs = int(keep[: sample["response_start"]].sum())
        pos = torch.arange(int(keep.sum()))
    else:
        keep = torch.ones(len(sample["ids"]), dtype=torch.bool)
        rs = sample["response_start"]
        pos = sample["t_pos"].long()
    h = sample["hidden"][keep]
    return {"ids": sample["ids"][keep].long(), "greedy": sample["greedy"][keep].long(),
            "positions": pos, "hidden": h.reshape(h.shape[0], -1), "response_start": rs,
            "source": sample.get("source", 0)}


def collate(seqs: list[dict], depth: int, num_layers: int):
    """Batch with a common ``query_from``: each sample's context (rows that only give K/V) is
    left-padded to the same length C and its origin rows right-padded, so relative indices
    between real rows are unchanged. Returns dict of tensors and C."""
    q0 = [max(0, s["response_start"] - 1 - depth) if num_layers == 1 else 0 for s in seqs]
    C = max(q0)
    M = max(len(s["ids"]) - q for s, q in zip(seqs, q0))
    B, H = len(seqs), seqs[0]["hidden"].shape[1]
    n = C + M
    ids = torch.zeros(B, n, dtype=torch.long)
    greedy = torch.full((B, n), -1, dtype=torch.long)
    pos = torch.zeros(B, n, dtype=torch.long)
    hid = torch.zeros(B, n, H)
    valid = torch.zeros(B, n, dtype=torch.bool)
    for b, (s, q) in enumerate(zip(seqs, q0)):
        L = len(s["ids"])
        a = C - q  # left pad
        ids[b, a:a + L] = s["ids"]
        greedy[b, a:a + L] = s["greedy"]
        pos[b, a:a + L] = s["positions"]
        hid[b, a:a + L] = s["hidden"].float()
        valid[b, a:a + L] = True
        if a:  # pads take positions that keep RoPE finite; they are never read
            pos[b, :a] = 0
    return {"ids": ids, "greedy": greedy, "positions": pos, "hidden": hid, "valid": valid}, C


def build_vocab(samples: list[dict], size: int, eos_ids: list[int], target_vocab: int) -> torch.Tensor:
    """Draft vocabulary (ascending target ids): EOS ids, then the most frequent tokens the
    target generated, then the most frequent other stored text tokens, up to ``size``."""
    if size >= target_vocab:
        return torch.arange(target_vocab)
    resp, other = Counter(), Counter()
    for s in samples:
        g = s["greedy"][s["greedy"] >= 0].tolist()
        resp.update(g)
        other.update(s["ids"][s["text_index"] >= 0].tolist())
    chosen = list(dict.fromkeys([e for e in eos_ids if 0 <= e < target_vocab]))
    for tok, _ in resp.most_common() + other.most_common():
        if len(chosen) >= size:
            break
        if tok not in chosen:
            chosen.append(tok)
    i = 0
    while len(chosen) < size:  # tiny datasets: pad with low ids
        if i not in chosen:
            chosen.append(i)
        i += 1
    return torch.tensor(sorted(chosen))


# ---- loss / metrics ----------------------------------------------------------------------------
def _labels(batch: dict, C: int, s: int, t2d_table: torch.Tensor):
    """``(has, label_d)`` of MTP step ``s``: origins with a target label, its draft id (-1: OOV)."""
    label_t = shift(batch["greedy"], s, fill=-1)[:, C:]       # target id at origin+s
    has = label_t >= 0
    return has, torch.where(has, t2d_table[label_t.clamp_min(0)], -1)


def label_counts(batch: dict, C: int, depth: int, t2d_table: torch.Tensor) -> torch.Tensor:
    """``[depth]`` float: origins whose step-s label is in the draft vocab (the CE terms)."""
    return torch.tensor([float((_labels(batch, C, s, t2d_table)[1] >= 0).sum()) for s in range(1, depth + 1)])


def mtp_loss(model: SparrowDraftModel, batch: dict, C: int, depth: int, step_decay: float,
             t2d_table: torch.Tensor, denominators: torch.Tensor | None = None):
    """Returns ``(loss, correct[s], count[s])`` (per-step top-1 on labelled origins).

    ``denominators [depth]``: divide step s's CE sum by this instead of taking its mean
    (data-parallel ranks pass the global count / world size, so that the mean of their
    losses is the loss of the whole batch)."""
    g = model.combine_hidden_states(batch["hidden"])
    outs = mtp_unroll(model, batch["ids"], g, batch["positions"], batch["valid"], depth, query_from=C)
    loss = 0.0
    correct, count = [], []
    for s, prenorm in enumerate(outs, start=1):
        has, label_d = _labels(batch, C, s, t2d_table)
        logits = model.logits(prenorm)
        lg = logits[has]
        ld = label_d[has]
        if lg.shape[0]:
            ce = F.cross_entropy(lg, ld.clamp_min(0), reduction="none")
            ce = ce[ld >= 0]
            if ce.numel():
                mean = ce.mean() if denominators is None else ce.sum() / denominators[s - 1]
                loss = loss + step_decay ** (s - 1) * mean
            correct.append(int(((lg.argmax(-1) == ld) & (ld >= 0)).sum()))
        else:
            correct.append(0)
        count.append(int(has.sum()))
    return loss, correct, count


class MTPLoss(torch.nn.Module):
    """:func:`mtp_loss` as ``forward``: DDP arms its gradient all-reduce only in ``forward``."""

    def __init__(self, model: SparrowDraftModel):
        super().__init__()
        self.model = model

    def forward(self, batch, C, depth, step_decay, t2d_table, denominators=None):
        return mtp_loss(self.model, batch, C, depth, step_decay, t2d_table, denominators)


@torch.no_grad()
def evaluate_acc(model, seqs, depth, t2d_table, batch_size=16) -> dict:
    model.eval()
    tot_c = np.zeros(depth)
    tot_n = np.zeros(depth)
    tot_loss, nb = 0.0, 0
    device = t2d_table.device
    for i in range(0, len(seqs), batch_size):
        batch, C = collate(seqs[i:i + batch_size], depth, model.config.num_layers)
        batch = {k: v.to(device) for k, v in batch.items()}
        loss, c, n = mtp_loss(model, batch, C, depth, 1.0, t2d_table)
        tot_c += c
        tot_n += n
        tot_loss += float(loss)
        nb += 1
    model.train()
    return {"val_loss": tot_loss / max(nb, 1),
            **{f"acc@{s + 1}": float(tot_c[s] / max(tot_n[s], 1)) for s in range(depth)}}


# ---- training loop ---------------------------------------------------------------------------
def epoch_batches(sources: list[int], batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The sample indices of each batch of an epoch, a pure function of ``seed`` and ``epoch``.

    Every batch holds samples of one dataset (``sources[i]`` is sample i's ``--data`` index),
    so mixing short and long videos never pads a short sample to a long one's length (the
    EAGLE-3 baseline keeps every visual row: a 25k-token sample in a batch of 16-frame clips
    would make the whole batch 25k rows). The batches of all datasets are shuffled together;
    a dataset smaller than a batch gives one smaller batch. One dataset: consecutive chunks of
    one permutation."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(sources))
    src = np.asarray(sources)[order]
    batches = []
    for d in np.unique(src):
        idx = order[src == d]
        batches += [idx[k * batch_size:(k + 1) * batch_size] for k in range(max(1, len(idx) // batch_size))]
    if len(batches) > 1 and len(np.unique(src)) > 1:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


@dataclass
class TrainArgs:
    data: str | list[str]  # one dataset dir, or several of the same target (e.g. mixed video lengths)
    out: str
    recipe: str = "sparrow"
    anchor_layers: list[int] | None = None
    window: int = WINDOW_SIZE
    mtp_depth: int = 3
    num_layers: int = 1
    intermediate_size: int = 1536
    draft_vocab: int = 2048
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-3
    warmup: int = 50
    step_decay: float = 0.8
    seed: int = 0
    val_data: str | None = None
    val_limit: int = 64
    eval_every: int = 200
    ckpt_every: int = 200
    resume: bool = False
    target: str | None = None
    num_speculative_tokens: int = 5
    storage_mb: float | None = None  # train on the samples whose anchor states fit this many MB
    progress: bool = True
    stop_after: int | None = None  # stop (checkpointed, not exported) after this many steps: tests


def _target_parts(target_dir, cfg: SparrowDraftConfig):
    """The target's embedding (frozen input), final norm and its lm_head rows (initialisation)."""
    from safetensors import safe_open

    from sparrow_vllm.draft.export import load_target_embedding

    embed = load_target_embedding(target_dir)
    norm = None
    for f in sorted(Path(target_dir).glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                if k.endswith("model.norm.weight") or k.endswith("language_model.norm.weight"):
                    norm = st.get_tensor(k).float()
    return embed, norm


@dataclass
class TrainRun:
    """What the loop trains, built identically (seeded) on every data-parallel rank."""
    cfg: SparrowDraftConfig
    model: SparrowDraftModel
    seqs: list[dict]
    val_seqs: list[dict]
    t2d_table: torch.Tensor
    target: dict  # the data manifest's target identity


def data_dirs(data: str | list[str] | None) -> list[str]:
    return [] if data is None else [data] if isinstance(data, (str, Path)) else list(data)


def load_training_samples(dirs: list[str], cfg: SparrowDraftConfig, identity: dict,
                          limit: int | None = None) -> list[dict]:
    """Samples of one or several datasets, each checked to come from the target ``identity``
    and to hold ``cfg``'s anchor layers; ``hidden`` holds exactly those layers."""
    from sparrow_vllm.draft.data import check_target, load_manifest

    out = []
    for i, d in enumerate(dirs):
        manifest = load_manifest(d)
        check_target(manifest, identity, d)
        check_draft_compatible(manifest, cfg)
        samples = load_samples(d, layers=cfg.anchor_layers, limit=limit)[1]
        for sample in samples:
            sample["source"] = i
        out += samples
    return out


def state_bytes(seq: dict) -> int:
    """Bytes of the anchor states a draft sequence reads, stored in fp16: what a recipe must
    keep on disk per sample (token ids and labels add 8 B a row, under 1%)."""
    return seq["hidden"].numel() * 2


def data_size(seqs: list[dict]) -> tuple[int, int]:
    """Rows and anchor-state bytes of draft sequences: what ``sparrow train`` logs and records."""
    return sum(len(s["ids"]) for s in seqs), sum(map(state_bytes, seqs))


def within_budget(seqs: list[dict], budget_bytes: float) -> list[int]:
    """Indices of the samples a storage budget affords, the mix of datasets kept: each next
    sample comes from the dataset with the smallest share of its bytes already taken, in the
    dataset's own order, until the next one would not fit."""
    by_source: dict[int, list[int]] = {}
    for i, s in enumerate(seqs):
        by_source.setdefault(s["source"], []).append(i)
    total = {k: sum(state_bytes(seqs[i]) for i in v) for k, v in by_source.items()}
    used, taken, spent, out = dict.fromkeys(by_source, 0), dict.fromkeys(by_source, 0), 0, []
    while open_ := [k for k in by_source if taken[k] < len(by_source[k])]:
        k = min(open_, key=lambda k: (used[k] / total[k], k))
        i = by_source[k][taken[k]]
        b = state_bytes(seqs[i])
        if spent + b > budget_bytes:
            break
        out.append(i)
        taken[k] += 1
        used[k] += b
        spent += b
    return sorted(out)


def prepare_run(a: TrainArgs, log=print) -> TrainRun:
    """Seed, load the data, build the draft config, vocabulary and initial model."""
    torch.manual_seed(a.seed)
    from sparrow_vllm.draft.data import data_target, load_manifest, target_identity

    dirs = data_dirs(a.data)
    manifest = load_manifest(dirs[0])
    t = manifest["target"]
    target_dir = a.target or data_target(manifest)
    from transformers import AutoConfig

    tcfg = AutoConfig.from_pretrained(target_dir)
    overrides = dict(window_size=a.window, mtp_depth=a.mtp_depth, num_layers=a.num_layers,
                     intermediate_size=a.intermediate_size, num_speculative_tokens=a.num_speculative_tokens,
                     verifier_name_or_path=t["name"])
    if a.anchor_layers:
        overrides["anchor_layers"] = sorted(a.anchor_layers)
    cfg = SparrowDraftConfig.for_target(tcfg, recipe=a.recipe, **overrides)
    identity = target_identity(target_dir, tcfg)
    samples = load_training_samples(dirs, cfg, identity)
    seqs = [draft_sequence(s, cfg) for s in samples]

    def size(seqs):
        rows, nbytes = data_size(seqs)
        return f"{rows:,} rows, {nbytes / 1e6:,.1f} MB"

    n_layers = len(cfg.anchor_layers)
    log(f"data: {len(seqs)} samples, {size(seqs)} of anchor states ({n_layers} layer{'s' * (n_layers > 1)}, "
        f"fp16, {'text rows' if cfg.text_only else 'every row'})")
    if a.storage_mb is not None:
        keep = within_budget(seqs, a.storage_mb * 1e6)
        if not keep:
            raise ValueError(f"--storage-mb {a.storage_mb:g}: not one sample of this data fits")
        samples, seqs = [samples[i] for i in keep], [seqs[i] for i in keep]
        kept = Counter(s["source"] for s in seqs)
        log(f"storage budget {a.storage_mb:g} MB: {len(seqs)} samples ("
            + ", ".join(f"{kept[i]} of {d}" for i, d in enumerate(dirs)) + f"), {size(seqs)}")
    tok_eos = [tcfg.text_config.eos_token_id] if isinstance(tcfg.text_config.eos_token_id, int) else list(
        tcfg.text_config.eos_token_id or [])
    try:
        from transformers import AutoTokenizer

        tok_eos.append(AutoTokenizer.from_pretrained(target_dir).convert_tokens_to_ids("<|im_end|>"))
    except Exception:  # noqa: BLE001 - a tokenizer-less target still has eos in its config
        pass
    vocab = build_vocab(samples, a.draft_vocab, tok_eos, cfg.target_vocab_size)
    cfg = cfg.replace(draft_vocab_size=len(vocab))
    embed, norm = _target_parts(target_dir, cfg)
    model = SparrowDraftModel(cfg, embed)
    model.set_vocab(vocab)
    with torch.no_grad():  # start from the target's own readout
        model.lm_head.weight.copy_(embed[vocab])
        if norm is not None:
            model.norm.weight.copy_(norm)
    t2d_table = model.target_to_draft(torch.arange(cfg.target_vocab_size))
    val = load_training_samples(data_dirs(a.val_data), cfg, identity, limit=a.val_limit)
    val_seqs = [draft_sequence(s, cfg) for s in val]
    return TrainRun(cfg, model, seqs, val_seqs, t2d_table, t)


class FileCheckpoint:
    """The single-process checkpoint: one ``checkpoint.pt``, replaced atomically."""

    def __init__(self, path: Path, resume: bool):
        self.path, self.resume = Path(path), resume

    def load(self) -> dict | None:
        return torch.load(self.path, weights_only=False) if self.resume and self.path.exists() else None

    def save(self, state: dict, metrics: dict) -> None:
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.path)

    def __str__(self) -> str:
        return str(self.path)


def train_loop(a: TrainArgs, run: TrainRun, ckpt, log=print, rank: int = 0, world_size: int = 1,
               loss_module: torch.nn.Module | None = None) -> tuple[int, dict, bool]:
    """The training loop of every ``sparrow train`` (single process or a data-parallel rank).

    ``ckpt``: ``load() -> state | None`` and ``save(state, metrics)``, called on every rank at
    the same steps. With ``world_size > 1``, ``loss_module`` is ``MTPLoss(run.model)``
    wrapped in DDP; each rank takes every ``world_size``-th sample of the global batch, and
    the CE is normalised by the global label counts, so the step is the single-process one.
    Rank 0 logs and evaluates. Returns ``(step, last metrics, finished)``.
    """
    model, cfg, seqs, t2d_table = run.model, run.cfg, run.seqs, run.t2d_table
    if world_size > 1:
        import torch.distributed as dist

        if min(a.batch_size, len(seqs)) < world_size:
            raise ValueError(f"each batch ({min(a.batch_size, len(seqs))} samples) is split over {world_size} "
                             f"workers: use --batch-size and a dataset of at least --num-workers samples")
    loss_module = loss_module if loss_module is not None else MTPLoss(model)
    device = next(model.parameters()).device
    t2d_table = t2d_table.to(device)
    out = Path(a.out)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.95), weight_decay=0.0)

    def lr_at(step):
        if step < a.warmup:
            return a.lr * (step + 1) / a.warmup
        return a.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - a.warmup) / max(1, a.steps - a.warmup))))

    step, metrics = 0, {}
    st = ckpt.load()
    if st is not None:
        if st["config"] != cfg.to_speculators_dict():
            raise ValueError(f"{ckpt} was trained with another config; use another --out or the same args")
        model.load_state_dict(st["model"], strict=False)
        opt.load_state_dict(st["opt"])
        step = st["step"]
        torch.set_rng_state(st["rng"])
        metrics = st.get("metrics", {})  # the last validation: a finished run re-exports it
        log(f"resumed from {ckpt} at step {step}")
    sources = [s["source"] for s in seqs]
    sizes = [len(b) for b in epoch_batches(sources, a.batch_size, a.seed, 0)]  # the same every epoch
    per_epoch = len(sizes)
    if world_size > 1 and min(sizes) < world_size:
        raise ValueError(f"a dataset of --data gives a batch of {min(sizes)} samples, fewer than the "
                         f"{world_size} workers that split each batch: give it at least {world_size} samples")

    def batch_at(step):
        epoch, k = divmod(step, per_epoch)
        return [seqs[i] for i in epoch_batches(sources, a.batch_size, a.seed, epoch)[k]][rank::world_size]

    from tqdm import tqdm

    log_path = out / "train_log.jsonl"
    bar = tqdm(total=a.steps, initial=step, desc=f"train {a.recipe}", disable=not a.progress or rank != 0)
    model.train()
    t0, run_loss = time.time(), []
    while step < a.steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        batch, C = collate(batch_at(step), a.mtp_depth, cfg.num_layers)
        batch = {k: v.to(device) for k, v in batch.items()}
        denominators = None
        if world_size > 1:
            counts = label_counts(batch, C, a.mtp_depth, t2d_table).to(device)
            dist.all_reduce(counts)
            denominators = (counts / world_size).clamp_min(1e-9)
        loss, c, n = loss_module(batch, C, a.mtp_depth, a.step_decay, t2d_table, denominators)
        if world_size > 1 and not torch.is_tensor(loss) and float(counts.sum()):
            # this rank has no labels but others do: still join DDP's all-reduce, with zeros
            loss = sum(p.sum() for p in params) * 0.0
        opt.zero_grad(set_to_none=True)
        if torch.is_tensor(loss):
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        step += 1
        value = loss.detach() if torch.is_tensor(loss) else torch.tensor(float(loss))
        if world_size > 1:  # the global batch's loss: the mean of the ranks'
            value = value.to(device)
            dist.all_reduce(value)
            value = value / world_size
        run_loss.append(float(value))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(run_loss[-20:]):.3f}", acc1=f"{c[0] / max(n[0], 1):.2f}")
        last = step == a.steps
        if rank == 0 and run.val_seqs and (step % a.eval_every == 0 or last):
            metrics = evaluate_acc(model, run.val_seqs, a.mtp_depth, t2d_table)
        if rank == 0 and (step % a.eval_every == 0 or last):
            rec = {"step": step, "loss": float(np.mean(run_loss[-a.eval_every:])), "lr": lr_at(step - 1),
                   "elapsed_s": round(time.time() - t0, 1), **metrics}
            with open(log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            bar.write(json.dumps(rec))
        if step % a.ckpt_every == 0 or last or step == a.stop_after:
            ckpt.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                       "rng": torch.get_rng_state(), "config": cfg.to_speculators_dict(), "metrics": metrics},
                      {"step": step, "loss": run_loss[-1]})
        if a.stop_after is not None and step >= a.stop_after and not last:
            bar.close()
            return step, metrics, False
    bar.close()
    if rank == 0 and run.val_seqs and not metrics:  # a finished run's checkpoint from before metrics were kept
        metrics = evaluate_acc(model, run.val_seqs, a.mtp_depth, t2d_table)
    return step, metrics, True


def export(a: TrainArgs, run: TrainRun, step: int, metrics: dict, log=print) -> Path:
    """Write the trained draft (``config.json`` + ``model.safetensors``) to ``a.out``."""
    rows, nbytes = data_size(run.seqs)
    extra = {"args": {k: v for k, v in vars(a).items()}, "final": metrics, "steps": step,
             "train_samples": len(run.seqs), "train_rows": rows, "train_state_bytes": nbytes,
             "data": a.data, "target": run.target}
    save_draft(run.model, a.out, extra=extra)
    log(f"exported draft to {a.out}")
    return Path(a.out)


def train(a: TrainArgs, log=print) -> Path:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    run = prepare_run(a, log)
    step, metrics, finished = train_loop(a, run, FileCheckpoint(out / "checkpoint.pt", a.resume), log)
    if finished:
        export(a, run, step, metrics, log)
    return out
