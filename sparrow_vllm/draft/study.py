"""Collect ``eval-draft`` reports into the study JSON and a markdown table.

``python -m sparrow_vllm.draft.study REPORT.json ... --out benchmarks/results/draft_study.json``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sparrow_vllm.draft.config import WINDOW_SIZE


def row_of(report: dict, path: str) -> dict:
    draft = Path(report["draft"])
    cfg = json.loads((draft / "config.json").read_text())["sparrow"] if (draft / "config.json").exists() else {}
    man = Path(report["data"]) / "manifest.json"
    target = json.loads(man.read_text())["target"] if man.exists() else {}
    return {
        "target_fingerprint": target.get("fingerprint"),
        "report": path, "draft": draft.name, "data": Path(report["data"]).name, "recipe": report["recipe"],
        "anchor_layers": report["anchor_layers"], "train_window": cfg.get("window_size"),
        "eval_window": report["window_size"] if report["attention"] == "text_window" else None,
        "mtp_depth": cfg.get("mtp_depth"), "visual_tokens": report["visual_tokens"],
        "samples": report["samples"],
        "tau": {k: v["tau"] for k, v in report["results"].items()},
        "tau_oracle": {k: v.get("tau_oracle") for k, v in report["results"].items()},
        "acceptance_per_position": {k: v["acceptance_per_position"] for k, v in report["results"].items()},
        "rounds": {k: v["rounds"] for k, v in report["results"].items()},
        **text_past_window(report),
        **tau_by_text_place(report),
    }


def text_past_window(report: dict) -> dict:
    """Where the window cuts: mean text rows before an answer (chat history included) and the
    share of answer tokens at a text index >= W, whose draft query does not see the start of
    the text. Empty for reports without ``text_before`` or for a draft without a window."""
    per = report.get("per_sample", [])
    if not per or "text_before" not in per[0]:
        return {}
    out = {"text_before_mean": sum(p["text_before"] for p in per) / len(per)}
    if report["attention"] == "text_window":
        w = report["window_size"]
        cut = sum(max(0, p["text_before"] + p["to_generate"] - max(w, p["text_before"])) for p in per)
        out["text_past_window"] = cut / max(1, sum(p["to_generate"] for p in per))
    return out


def tau_by_text_place(report: dict, at: int = WINDOW_SIZE) -> dict:
    """tau at the largest k on the answers that end inside the first ``at`` text tokens and on
    those that start past them (answers across the line count in neither): the same split for
    every draft, window or not, so a gap that is the window's shows only past it."""
    per = report.get("per_sample", [])
    if not per or "text_before" not in per[0]:
        return {}
    k = max(report["results"], key=int)
    out = {"at": at, "k": int(k)}
    for place, keep in (("inside", lambda p: p["text_before"] + p["to_generate"] <= at),
                        ("past", lambda p: p["text_before"] >= at)):
        acc = [a for p in per if keep(p) for a in p["accepted"][k]]
        out[place] = {"tau": 1 + sum(acc) / len(acc) if acc else None, "rounds": len(acc)}
    return {"tau_by_text_place": out}


def markdown(rows: list[dict]) -> str:
    ks = sorted({k for r in rows for k in r["tau"]}, key=int)
    cut = any("text_before_mean" in r for r in rows)  # studies with long text: where W cuts
    out = ["| data | visual tokens | draft | recipe | anchors | W train/eval | samples | rounds k=5 | "
           + ("text before answer | answer past W | " if cut else "")
           + " | ".join(f"tau k={k}" for k in ks) + " | " + " | ".join(f"ceiling k={k}" for k in ks) + " |",
           "|" + "---|" * (8 + 2 * cut + 2 * len(ks))]
    for r in rows:
        w = "full" if r["eval_window"] is None else f"{r['train_window']}/{r['eval_window']}"
        taus = " | ".join(f"{r['tau'][k]:.2f}" if k in r["tau"] else "" for k in ks)
        ceil = " | ".join(f"{r['tau_oracle'][k]:.2f}" if k in r["tau_oracle"] else "" for k in ks)
        past = r.get("text_past_window")
        extra = (f"{r.get('text_before_mean', 0):.0f} | {'-' if past is None else f'{past:.0%}'} | " if cut else "")
        out.append(f"| {r['data']} | {r['visual_tokens']} | {r['draft']} | {r['recipe']} | "
                   f"{','.join(map(str, r['anchor_layers']))} | {w} | {r['samples']} | {r['rounds'].get('5', '')} | "
                   f"{extra}{taus} | {ceil} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("reports", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--extra", help="JSON file merged into the study (e.g. bytes per sample)")
    a = ap.parse_args(argv)
    rows = [row_of(json.loads(Path(p).read_text()), p) for p in a.reports]
    rows.sort(key=lambda r: (r["visual_tokens"], r["data"], r["recipe"] != "sparrow", r["draft"], r["eval_window"] or 0))
    study = {"rows": rows}
    if a.extra:
        study.update(json.loads(Path(a.extra).read_text()))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(study, indent=1) + "\n")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
