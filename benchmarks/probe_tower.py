"""What the embedded target's vision tower tells the LM: probes on its visual tokens.

Each visual token of SparrowWorld clips gets the labels of ``target/perception.py``
(the identity — 3 shapes, 10 digits — and colour of the object covering it, or background).
Probes fitted on 80% of the tokens, scored on the other 20% (object tokens only):

- ``tower``: a linear probe on the tower's output tokens (what a frozen LM could read off),
- ``tower_objects``: a linear probe on each object's tokens pooled (``object_instances``: one
  instance per object and token's frames), split by clip (what a question about an object needs);
  also which way a moving object moves within its token's frames (scored on the moving instances;
  Qwen2.5-VL only: a LLaVA-OV token shows one frame),
- the norms of the visual tokens against the text embeddings' (what the LM's residual stream
  starts from at each),
- ``pixels``: a linear probe and a 1-hidden-layer MLP on the object tokens' raw pixels (28x28 px
  x the token's frames, standardised): how hard the question is from one token.

    python benchmarks/probe_tower.py [--arch qwen2.5-vl] [--vision-parts PATH] [--n 400] [--name NAME]

Writes ``benchmarks/results/probe_tower.json`` (one row per ``--name``; default: the parts' sha256).
Tower-only forwards and small probes: ~3 min on 2 cores for 400 clips.
"""

from __future__ import annotations

import argparse
import collections
import os
import json
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results" / "probe_tower.json"


def _fit(x: torch.Tensor, y: torch.Tensor, n_train: int, classes: int, hidden: int = 0, iters: int = 300) -> float:
    torch.manual_seed(0)
    net = (torch.nn.Linear(x.shape[1], classes) if not hidden else
           torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.GELU(), torch.nn.Linear(hidden, classes)))
    opt = torch.optim.Adam(net.parameters(), 1e-2 if not hidden else 1e-3, weight_decay=1e-4)
    for _ in range(iters):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x[:n_train]), y[:n_train]).backward()
        opt.step()
    with torch.no_grad():
        pred, truth = net(x[n_train:]).argmax(-1), y[n_train:]
    obj = truth > 0
    return round(float((pred[obj] == truth[obj]).float().mean()), 3)


def probe(vision_parts: Path | None, n: int, frames: int = 16, split_index: int = 700_000,
          arch: str = "qwen2.5-vl") -> dict:
    from safetensors.torch import load_file

    from sparrow_vllm.families import get_family
    from sparrow_vllm.target.build import file_sha256
    from sparrow_vllm.target.lora import without_lora
    from sparrow_vllm.target.perception import (COLOURS, IDENTITIES, MOTIONS, object_instances, token_cells,
                                                token_labels)
    from sparrow_vllm.world import make_sample

    adapter = get_family(arch)
    per_token = adapter.frames_per_token
    vision_parts = Path(vision_parts or adapter.vision_parts_path())
    parts = {k: v.float() for k, v in load_file(str(vision_parts)).items()}
    model, _, processor = adapter.build_model(without_lora(parts))
    t0 = time.time()
    tower, pixels, ident, colour, pooled, pooled_ident, pooled_motion = [], [], [], [], [], [], []
    with torch.no_grad():
        for i in range(n):
            s = make_sample("train", split_index + i, frames)
            video = s.frames()
            inputs = adapter.hf_inputs(processor, video, s.question)
            tower.append(adapter.video_tokens(model, inputs))
            weights, obj_ident, _, obj_motion = object_instances(s, frames_per_token=per_token)
            pooled.append(torch.as_tensor(weights) @ tower[-1])
            pooled_ident.append(torch.as_tensor(obj_ident))
            pooled_motion.append(torch.as_tensor(obj_motion))
            pixels.append(torch.as_tensor(token_cells(video, per_token).reshape(len(tower[-1]), -1),
                                          dtype=torch.float32))
            a, b = token_labels(s, frames_per_token=per_token)
            ident.append(torch.as_tensor(a))
            colour.append(torch.as_tensor(b))
    ident, colour = torch.cat(ident), torch.cat(colour)
    keep = ident >= 0  # drop slivers (IGNORE)
    tower = torch.cat(tower)
    # what the LM's residual stream starts from at a visual position, against a text token's
    visual_norms, text_norms = tower.norm(dim=-1), model.get_input_embeddings().weight.detach().norm(dim=-1)
    scale = {"visual_token_norm_median": round(float(visual_norms.median()), 2),
             "visual_token_norm_max": round(float(visual_norms.max()), 2),
             "text_embedding_norm_median": round(float(text_norms.median()), 2)}
    norm = lambda x: (x - x.mean(0)) / (x.std(0) + 1e-5)  # noqa: E731
    tower, pixels = norm(tower[keep]), norm(torch.cat(pixels)[keep])
    ident, colour = ident[keep], colour[keep]
    n_train = int(0.8 * len(ident))
    n_train_objects = sum(len(x) for x in pooled_ident[:int(0.8 * n)])  # the first 80% of the clips
    pooled, pooled_ident, pooled_motion = norm(torch.cat(pooled)), torch.cat(pooled_ident), torch.cat(pooled_motion)
    known = pooled_motion >= 0  # in both frames of the patch
    n_train_known = int(known[:n_train_objects].sum())
    obj = ident > 0
    n_obj = int(obj[:n_train].sum())  # the same clips as the tower probes train on
    counts = collections.Counter(ident[ident > 0].tolist())
    out = {
        "arch": arch, "vision_parts": os.path.relpath(vision_parts), "vision_parts_sha256": file_sha256(vision_parts),
        "clips": n, "frames": frames, "object_tokens": int((ident > 0).sum()), **scale,
        "identity_majority": round(max(counts.values()) / sum(counts.values()), 3),
        "tower_linear": {"identity": _fit(tower, ident, n_train, 1 + len(IDENTITIES)),
                         "colour": _fit(tower, colour, n_train, 1 + len(COLOURS))},
        # every instance is an object: score them all (shift the labels so 0 is not "background")
        # motion: scored on the moving instances (still is label 0, like background above)
        "tower_objects_linear": {"identity": _fit(pooled, pooled_ident + 1, n_train_objects, 1 + len(IDENTITIES)),
                                 "motion_of_moving": _fit(pooled[known], pooled_motion[known], n_train_known,
                                                          1 + len(MOTIONS)) if per_token > 1 else None,
                                 "moving": int((pooled_motion > 0).sum()),
                                 "instances": len(pooled_ident),
                                 "majority": round(max(collections.Counter(pooled_ident.tolist()).values())
                                                   / len(pooled_ident), 3)},
        # on object tokens only (telling an object from the background is not the question)
        "pixels_linear": {"identity": _fit(pixels[obj], ident[obj], n_obj, 1 + len(IDENTITIES))},
        "pixels_mlp256": {"identity": _fit(pixels[obj], ident[obj], n_obj, 1 + len(IDENTITIES), hidden=256)},
    }
    out["seconds"] = round(time.time() - t0, 1)
    return out


def main() -> None:
    from sparrow_vllm.families import FAMILY_NAMES

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="qwen2.5-vl", choices=FAMILY_NAMES, help="family of the embedded target")
    ap.add_argument("--vision-parts", type=Path, default=None, help="default: the family's committed parts")
    ap.add_argument("--n", type=int, default=400, help="clips (16 frames each)")
    ap.add_argument("--name", default=None, help="row name (default: sha256 prefix of the parts)")
    a = ap.parse_args()
    torch.set_flush_denormal(True)
    r = probe(a.vision_parts, a.n, arch=a.arch)
    name = a.name or r["vision_parts_sha256"][:12]
    rows = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    rows[name] = r
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=1))
    print(json.dumps({name: r}))


if __name__ == "__main__":
    main()
