"""Does the LM rewrite its residual stream at visual positions? (docs/target.md E.3)

For a target's vision parts, on the first test clips (16 frames): the median norm of the
residual at visual and text positions after layers 0 (the embeddings / merger output), 1, 2, 4,
8, 15 and 29, and the median cosine between a position's input and its state before the last
layer (1.0 would mean the layers leave it as it came in).

    python benchmarks/visual_residual.py [--vision-parts PATH] [--clips 4]

Prints JSON (a few forwards of the full target: ~1 min on 2 cores).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

LAYERS = (0, 1, 2, 4, 8, 15, 29)


def measure(vision_parts: Path | None, clips: int) -> dict:
    from sparrow_vllm.families import get_family
    from sparrow_vllm.target.build import ASSETS_DIR, VISION_PARTS, load_vision_parts
    from sparrow_vllm.world import make_sample

    adapter = get_family("qwen2.5-vl")
    vision_parts = Path(vision_parts or ASSETS_DIR / VISION_PARTS)
    model, _, processor = adapter.build_model(load_vision_parts(vision_parts))  # LoRA merged, if any
    visual_ids = torch.tensor(adapter.visual_token_ids(model.config))
    norms = {layer: {"visual": [], "text": []} for layer in LAYERS}
    cosine = {"visual": [], "text": []}
    for i in range(clips):
        s = make_sample("test", i, 16)
        inputs = adapter.hf_inputs(processor, s.frames(), s.question)
        with torch.no_grad():
            hidden = model(**inputs, output_hidden_states=True).hidden_states
        where = {"visual": torch.isin(inputs["input_ids"][0], visual_ids)}
        where["text"] = ~where["visual"]
        for kind, mask in where.items():
            for layer in LAYERS:
                norms[layer][kind].append(hidden[layer][0][mask].norm(dim=-1))
            cosine[kind].append(torch.nn.functional.cosine_similarity(hidden[0][0][mask], hidden[-2][0][mask], dim=-1))
    median = lambda xs: round(float(torch.cat(xs).median()), 3)  # noqa: E731
    return {"vision_parts": str(vision_parts), "clips": clips,
            "norm_after_layer": {str(layer): {k: median(v) for k, v in d.items()} for layer, d in norms.items()},
            "cosine_input_to_last_layer_input": {k: median(v) for k, v in cosine.items()}}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vision-parts", type=Path, default=None, help="default: the committed parts")
    ap.add_argument("--clips", type=int, default=4)
    a = ap.parse_args()
    print(json.dumps(measure(a.vision_parts, a.clips), indent=1))
