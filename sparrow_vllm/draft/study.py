"""Collect ``eval-draft`` reports into the study JSON and a markdown table.

``python -m sparrow_vllm.draft.study REPORT.json ... --out benchmarks/results/draft_study.json``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


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
    }


def markdown(rows: list[dict]) -> str:
    ks = sorted({k for r in rows for k in r["tau"]}, key=int)
    out = ["| data | visual tokens | draft | recipe | anchors | W train/eval | samples | rounds k=5 | "
           + " | ".join(f"tau k={k}" for k in ks) + " | " + " | ".join(f"ceiling k={k}" for k in ks) + " |",
           "|" + "---|" * (8 + 2 * len(ks))]
    for r in rows:
        w = "full" if r["eval_window"] is None else f"{r['train_window']}/{r['eval_window']}"
        taus = " | ".join(f"{r['tau'][k]:.2f}" if k in r["tau"] else "" for k in ks)
        ceil = " | ".join(f"{r['tau_oracle'][k]:.2f}" if k in r["tau_oracle"] else "" for k in ks)
        out.append(f"| {r['data']} | {r['visual_tokens']} | {r['draft']} | {r['recipe']} | "
                   f"{','.join(map(str, r['anchor_layers']))} | {w} | {r['samples']} | {r['rounds'].get('5', '')} | "
                   f"{taus} | {ceil} |")
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
