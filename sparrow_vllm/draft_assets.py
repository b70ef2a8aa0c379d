"""The committed drafts of the embedded targets (one embedded target per model family)."""

from __future__ import annotations

from pathlib import Path

DRAFTS_DIR = Path(__file__).resolve().parent / "assets" / "drafts"
# embedded target name -> {method: committed draft directory name}
EMBEDDED_DRAFTS = {
    "sparrow-qwen25vl-smollm2": {"sparrow": "sparrow-default", "eagle3": "eagle3-baseline"},
    "sparrow-llavaov-smollm2": {"sparrow": "sparrow-llavaov", "eagle3": "eagle3-llavaov"},
}


def default_drafts(target_name: str = "sparrow-qwen25vl-smollm2", methods=("sparrow", "eagle3")) -> dict[str, Path]:
    """``{method: dir}`` for an embedded target; raises if one is not committed."""
    if target_name not in EMBEDDED_DRAFTS:
        raise KeyError(f"no committed drafts for {target_name!r}; embedded targets: {list(EMBEDDED_DRAFTS)}")
    out = {m: DRAFTS_DIR / EMBEDDED_DRAFTS[target_name][m] for m in methods}
    for name, d in out.items():
        if not (d / "config.json").exists():
            raise FileNotFoundError(f"the {name} draft of {target_name} is missing at {d}; "
                                    "rebuild it with the commands in docs/draft-study.md")
    return out
