"""The committed drafts of the embedded target."""

from __future__ import annotations

from pathlib import Path

DRAFTS_DIR = Path(__file__).resolve().parent / "assets" / "drafts"


def default_drafts() -> dict[str, Path]:
    """``{"sparrow": dir, "eagle3": dir}``; raises if they are not committed yet."""
    out = {"sparrow": DRAFTS_DIR / "sparrow-default", "eagle3": DRAFTS_DIR / "eagle3-baseline"}
    for name, d in out.items():
        if not (d / "config.json").exists():
            raise FileNotFoundError(f"the {name} draft of the embedded target is missing at {d}; "
                                    "rebuild it with the commands in sparrow_vllm/draft/STUDY.md")
    return out
