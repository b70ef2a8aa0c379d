"""What every benchmark records: the machine it was measured on (``sparrow tune`` records it too),
and paths as results may name them."""

import json
import re
from pathlib import Path

from sparrow_vllm.harness.hardware import hardware  # noqa: F401

REPO = Path(__file__).resolve().parent.parent


def portable_path(path) -> str | None:
    """``path`` as a result may say it: relative to the repository inside it, ``~/...`` under
    home, else as given (results name no build machine)."""
    if path is None:
        return None
    p = Path(str(path)).resolve()
    for base, label in ((REPO, ""), (Path.home(), "~/")):
        if p.is_relative_to(base):
            return label + str(p.relative_to(base))
    return str(path)


def dumps(data) -> str:
    """JSON with one key a line and each list of numbers (token ids, acceptance) on one line."""
    return re.sub(r"\[\s*([-+\d.eE,\s]+?)\s*\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", json.dumps(data, indent=1))
