"""Why a draft loses acceptance on longer videos than it was trained on: the anchor states or
the answers (``sparrow_vllm/draft/STUDY.md``).

SparrowWorld asks the same question about the same scene at every video length (a sample's
story and question depend only on its split and index; a longer video plays it slower), so two
datasets of the same test indices at two lengths (``sparrow data --split test --n N
--visual-tokens V``) hold the same prompt text twice. Per pair of samples:

* ``same_answer``: the target answered both with the same tokens. Then the draft sees the same
  text twice and only the anchor states differ (the target read more video): on these pairs,
  tau(short states) - tau(long states) is what the **states' drift** costs;
* on the other pairs the target **answers differently** on the long video; their tau at both
  lengths says what that costs on top;
* drift: cosine similarity and norm ratio of the anchor states at the same text rows, apart for
  the rows before the video (which see none of it: 1.0 by causality, a check), the prompt rows
  after it, and the answer rows (same-answer pairs).

The draft's RoPE positions are text indices (training, ``eval-draft`` and the serving proposer
alike), identical at both lengths by construction: position is not a cause here.

    python benchmarks/length_study.py --draft runs/study/sp-short --short runs/study/data/test1k \
        --long runs/study/data/test4k --label sp-short --out benchmarks/results/length_study.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from common import hardware  # noqa: E402
from sparrow_vllm.draft.data import load_samples  # noqa: E402
from sparrow_vllm.draft.evaluate import load_for_eval, simulate_sample, summarize, visual_tokens_of  # noqa: E402
from sparrow_vllm.families import family_of  # noqa: E402


def scene_of(sample_id: str) -> str:
    """``test-0000003-128f-112x112`` -> ``test-0000003``: the sample at any video length."""
    return sample_id.rsplit("-", 2)[0]


SEGMENTS = ("before_video", "prompt_after_video", "answer")


def text_rows(sample: dict) -> dict:
    """The sample's text rows only (data extracted with ``--all-positions`` keeps visual ones)."""
    keep = sample["text_index"] >= 0
    out = {k: v[keep] if torch.is_tensor(v) and v.dim() and len(v) == len(keep) else v for k, v in sample.items()}
    out["response_start"] = int(keep[: int(sample["response_start"])].sum())
    return out


def segments(sample: dict) -> dict[str, torch.Tensor]:
    """Row masks of a text-rows sample: before the video, the prompt after it, the answer."""
    gap = torch.nonzero(sample["seq_pos"][1:] - sample["seq_pos"][:-1] > 1).flatten()
    first_after = int(gap[0]) + 1 if len(gap) else 0  # the first row after the visual block
    rows = torch.arange(len(sample["ids"]))
    rs = int(sample["response_start"])
    # the last row's states do not exist (the final token is never fed back): zeros in the data
    return {"before_video": rows < first_after, "prompt_after_video": (rows >= first_after) & (rows < rs),
            "answer": (rows >= rs) & (rows < len(rows) - 1)}


def drift(a: dict, b: dict, segs: tuple[str, ...], layers: list[int]) -> dict:
    """Per segment and stored anchor layer: mean cosine similarity and norm ratio (long /
    short) of the states at the same text rows of two text-rows samples."""
    out, ra, rb = {}, segments(a), segments(b)
    for name in segs:
        if not ra[name].any():
            continue
        x, y = a["hidden"][ra[name]].float(), b["hidden"][rb[name]].float()  # [rows, A, H]
        cos = torch.nn.functional.cosine_similarity(x, y, dim=-1).mean(0)
        ratio = (y.norm(dim=-1) / x.norm(dim=-1).clamp_min(1e-6)).mean(0)
        out[name] = {"rows": int(ra[name].sum()),
                     "layers": {str(l): {"cosine": float(c), "norm_ratio": float(r)}
                                for l, c, r in zip(layers, cos, ratio)}}
    return out


def mean_drift(per_pair: list[dict]) -> dict:
    """Row-weighted means over the pairs of :func:`drift`."""
    out = {}
    for seg in SEGMENTS:
        vals = [p[seg] for p in per_pair if seg in p]
        if not vals:
            continue
        n = sum(v["rows"] for v in vals)
        out[seg] = {"rows": n, "layers": {l: {k: sum(v["layers"][l][k] * v["rows"] for v in vals) / n
                                              for k in ("cosine", "norm_ratio")} for l in vals[0]["layers"]}}
    return out


def study(target, draft, short_dir, long_dir, ks: list[int]) -> dict:
    model, man_s, short, target_config = load_for_eval(target, draft, short_dir)
    _, man_l, long_, _ = load_for_eval(target, draft, long_dir)
    family = family_of(target_config)
    # the drift is measured on every stored layer, the draft reads its anchors only
    (man_all, short_all), long_all = load_samples(short_dir), load_samples(long_dir)[1]
    every_short = {scene_of(s["id"]): s for s in short_all}
    every_long = {scene_of(s["id"]): s for s in long_all}
    by_id = {scene_of(s["id"]): s for s in short}
    pairs = [(by_id[scene_of(s["id"])], s) for s in long_ if scene_of(s["id"]) in by_id]
    if not pairs:
        raise SystemExit(f"no sample of {long_dir} is in {short_dir}: extract the same --split/--start/--n at both lengths")
    same, other, drifts = [], [], []
    for a, b in pairs:
        ta, tb = text_rows(a), text_rows(b)
        if not torch.equal(ta["ids"][:ta["response_start"]], tb["ids"][:tb["response_start"]]):
            raise SystemExit(f"sample {a['id']}: the prompt text differs between the two lengths")
        same_answer = torch.equal(ta["ids"], tb["ids"])
        (same if same_answer else other).append((a, b))
        drifts.append(drift(text_rows(every_short[scene_of(a["id"])]), text_rows(every_long[scene_of(b["id"])]),
                            SEGMENTS if same_answer else SEGMENTS[:2], man_all["layers"]))

    def tau(samples):
        return summarize([simulate_sample(model, s, ks) for s in samples], ks) if samples else None

    return {"draft": str(draft), "short": str(short_dir), "long": str(long_dir),
            "short_visual_tokens": visual_tokens_of(man_s, short, family),
            "long_visual_tokens": visual_tokens_of(man_l, long_, family),
            # sparrow data --simulate-visual-tokens: the length the target attended as (0: real)
            "short_simulated": man_s["settings"].get("simulate_visual_tokens", 0),
            "long_simulated": man_l["settings"].get("simulate_visual_tokens", 0),
            "pairs": len(pairs), "same_answer": len(same),
            "tau": {"all": {"short": tau([a for a, _ in pairs]), "long": tau([b for _, b in pairs])},
                    "same_answer": {"short": tau([a for a, _ in same]), "long": tau([b for _, b in same])},
                    "other_answer": {"short": tau([a for a, _ in other]), "long": tau([b for _, b in other])}},
            "drift": mean_drift(drifts)}


def command(draft, label, short, long_, ks) -> str:
    """The command line of a row (the target is the embedded one unless ``--target`` is given)."""
    return (f"python benchmarks/length_study.py --draft {draft} --label {label} --short {short} --long {long_}"
            + (f" --k {' '.join(map(str, ks))}" if ks != [5] else ""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default=None, help="default: the embedded Qwen2.5-VL target")
    ap.add_argument("--draft", required=True)
    ap.add_argument("--short", required=True, type=Path)
    ap.add_argument("--long", required=True, type=Path)
    ap.add_argument("--label", required=True, help="the draft's name in the results")
    ap.add_argument("--k", type=int, nargs="+", default=[5])
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "length_study.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.target is None:
        from sparrow_vllm.target.build import build_target

        args.target = str(build_target())
    row = {"label": args.label, **study(args.target, args.draft, args.short, args.long, args.k),
           "command": command(args.draft, args.label, args.short, args.long, args.k)}
    data = json.loads(args.out.read_text()) if args.out.exists() else {"rows": []}
    data["hardware"] = hardware()
    data["rows"] = [r for r in data["rows"] if (r["label"], r["short"], r["long"]) != (args.label, row["short"], row["long"])]
    data["rows"].append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    k = str(max(args.k))
    for name in ("all", "same_answer", "other_answer"):
        t = row["tau"][name]
        if t["short"]:
            print(f"{name:>13}: tau k={k} short {t['short'][k]['tau']:.2f}  long {t['long'][k]['tau']:.2f}")
    print(json.dumps(row["drift"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
