"""The committed drafts of the embedded targets (one embedded target per model family).

The Sparrow drafts ship with the package (``assets/drafts``, the defaults ``--speculative-config
sparrow`` serves); the EAGLE-3 baselines they are measured against are benchmark artifacts and
live in the repository's ``benchmarks/drafts`` (a clone or an editable install), not in the
installed package."""

from __future__ import annotations

from pathlib import Path

DRAFTS_DIR = Path(__file__).resolve().parents[1] / "assets" / "drafts"
BASELINES_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "drafts"
# embedded target name -> {method: committed draft directory name}
EMBEDDED_DRAFTS = {
    "sparrow-qwen25vl-smollm2": {"sparrow": "sparrow-default", "eagle3": "eagle3-baseline"},
    "sparrow-llavaov-smollm2": {"sparrow": "sparrow-llavaov", "eagle3": "eagle3-llavaov"},
}


def default_drafts(target_name: str = "sparrow-qwen25vl-smollm2", methods=("sparrow", "eagle3")) -> dict[str, Path]:
    """``{method: dir}`` for an embedded target; raises if one is not committed."""
    if target_name not in EMBEDDED_DRAFTS:
        raise KeyError(f"no committed drafts for {target_name!r}; embedded targets: {list(EMBEDDED_DRAFTS)}")
    out = {m: (DRAFTS_DIR if m == "sparrow" else BASELINES_DIR) / EMBEDDED_DRAFTS[target_name][m] for m in methods}
    for name, d in out.items():
        if name != "sparrow" and not BASELINES_DIR.is_dir():
            raise FileNotFoundError(f"the {name} baseline of {target_name} is a benchmark artifact: it lives in the "
                                    "repository's benchmarks/drafts (run from a clone), not in the installed package")
        if not (d / "config.json").exists():
            raise FileNotFoundError(f"the {name} draft of {target_name} is missing at {d}; "
                                    "rebuild it with the commands in docs/draft-study.md")
    return out
