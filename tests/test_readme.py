"""The README's commands work as written: its serve block, run verbatim with
no ``VLLM_*`` variable set, gives a server that answers a video chat request."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """Every command of the README's ```bash blocks (continuation lines joined, comments dropped)."""
    text = (ROOT / "README.md").read_text()
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for cmd in re.sub(r"\\\n\s*", "", block).splitlines():
            cmd = cmd.split(" #")[0].strip()
            if cmd and not cmd.startswith("#"):
                cmds.append(cmd)
    return cmds


def test_readme_commands_parse():
    cmds = readme_commands()
    assert any(c.startswith(".venv/bin/vllm serve ") for c in cmds)
    assert "make demo" in cmds and "make test" in cmds


def readme_report_tables() -> list[tuple[str, list[str], str, str]]:
    """``(name, args, table, text from the table on)`` for every README table whose last non-blank
    line before it names ``benchmarks/report.py NAME [ARCH]``."""
    lines = (ROOT / "README.md").read_text().splitlines()
    found = []
    for i, line in enumerate(lines):
        if not line.startswith("|") or (i and lines[i - 1].startswith("|")):
            continue  # not the first line of a table
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        m = re.search(r"benchmarks/report\.py ([a-z_]+)((?: [\w.-]+)*)`", before)
        if not m:
            continue
        end = i
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        found.append((m.group(1), m.group(2).split(), "\n".join(lines[i:end]), "\n".join(lines[i:])))
    return found


def test_readme_tables_come_from_report(monkeypatch):
    import sys

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("report", None)
    import report

    # the table functions that also draw a plot must not rewrite the committed PNGs here
    for plot in ("_plot_target", "_plot_study", "_plot_long", "_plot_adaptive", "_plot_length_study"):
        monkeypatch.setattr(report, plot, lambda *a, **k: None)
    tables = readme_report_tables()
    assert {name for name, *_ in tables} >= {"summary"}
    assert ["llava-onevision"] in [args for name, args, *_ in tables if name == "summary"]
    for name, args, table, rest in tables:
        out = getattr(report, name)(*args).strip()
        head = "\n".join(line for line in out.splitlines() if line.startswith("|"))
        assert table == head, f"README table of `report.py {name} {' '.join(args)}` differs from its output:\n{out}"
        assert rest.startswith(out), f"README text after the table of `report.py {name}` differs from its notes"


@pytest.mark.vllm
def test_readme_serve_command_verbatim_answers_a_video_chat(target_dir):
    from sparrow_vllm.harness.server import chat_body, write_mp4
    from sparrow_vllm.world import make_sample

    cmds = readme_commands()
    serve = next(c for c in cmds if c.startswith(".venv/bin/vllm serve "))
    if not Path(os.path.expanduser(serve.split()[2])).is_dir():
        pytest.skip("the README's target path is not where this run builds the target (SPARROW_CACHE set)")
    with socket.socket() as s:  # the README's command takes vLLM's default port
        if s.connect_ex(("127.0.0.1", 8000)) == 0:
            pytest.fail("port 8000 is in use: the README's serve command needs it")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    media = Path(ROOT / ".readme-test-media")
    media.mkdir(exist_ok=True)
    log = open(media / "serve.log", "w")
    proc = subprocess.Popen(["bash", "-c", serve], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.time() + 900
        while True:
            assert proc.poll() is None, (media / "serve.log").read_text()[-3000:]
            assert time.time() < deadline, "the README's vllm serve did not become healthy in 900 s"
            try:
                urllib.request.urlopen("http://127.0.0.1:8000/health", timeout=2)
                break
            except OSError:
                time.sleep(3)
        sample = make_sample("test", 5, 32)
        path = write_mp4(sample.frames(), media / "clip.mp4")
        model = json.loads(urllib.request.urlopen("http://127.0.0.1:8000/v1/models").read())["data"][0]["id"]
        req = urllib.request.Request("http://127.0.0.1:8000/v1/chat/completions",
                                     data=json.dumps(chat_body(model, sample.question, f"file://{path}")).encode(),
                                     headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(req, timeout=600).read())
        assert answer["choices"][0]["message"]["content"].strip()
        metrics = urllib.request.urlopen("http://127.0.0.1:8000/metrics").read().decode()
        assert "vllm:spec_decode_num_drafts_total" in metrics  # Sparrow is on
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(media, ignore_errors=True)


# --- every other README command: run (at small sizes where the README's are a user's scale) -----
# What a README command names that a test machine does not have: the user's target (DIR), shared
# storage, a user's numbers of samples and workers, a training run's length.
SMALL = {"--n": "2", "--num-workers": "2"}
NOT_HERE = {  # commands that need what this machine lacks: checked, not run
    "pip install 'sparrow-vllm[gpu]'": "CUDA vLLM from the package registry (the gpu extra is checked)",
    "vllm serve Qwen/": "a GPU and the 7B model (the command line is parsed by vLLM's parser, plugin on)",
}


def _user_inputs(work: Path) -> None:
    """The files the README's `sparrow data --from` commands read, as a user would have them."""
    from sparrow_vllm.harness.own_videos import write_llava, write_openai, write_videos

    videos = write_videos(work / "videos", 2)
    write_llava(work / "llava_video.json", videos, work / "videos")
    write_openai(work / "requests.jsonl", videos)
    (work / "prompts.txt").write_text("Describe the video.\n")


def _small(cmd: str, target: Path, work: Path) -> list[str]:
    import shlex
    import sys

    argv = shlex.split(cmd.replace("/shared/", f"{work}/shared/"))
    out = [sys.executable, "-m", "sparrow_vllm.cli"]
    for i, a in enumerate(argv[1:], 1):
        prev = argv[i - 1]
        out.append(str(target) if a == "DIR" else SMALL.get(prev, a))
    if argv[1] == "train":
        out += ["--steps", "2"]
    if argv[1] == "tune":  # a short video, batches of 1 and 2, k up to 2: three engines
        out += ["--visual-tokens", "128", "--batch", "1", "2", "--k-max", "2", "--requests", "2"]
    return out


def _check_not_here(cmd: str) -> None:
    if cmd.startswith("pip install"):
        from importlib.metadata import metadata

        from sparrow_vllm import SUPPORTED_VLLM_VERSION

        requires = metadata("sparrow-vllm").get_all("Requires-Dist") or []
        assert any(r.replace(" ", "").startswith(f"vllm=={SUPPORTED_VLLM_VERSION};") and "gpu" in r for r in requires), requires
        return
    import shlex

    import sparrow_vllm
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    sparrow_vllm.register()
    argv = shlex.split(cmd)
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv[2:])
    assert args.model_tag == argv[2] and args.speculative_config["method"] == "sparrow"


@pytest.mark.vllm
def test_every_readme_command_runs(target_dir, tmp_path):
    """Each fenced README command, in the README's order: run as written, or at small sizes
    (``SMALL``, a 2-step training) where it is a user's job on their own target, or, where it
    needs a GPU, checked as far as this machine can (``NOT_HERE``). A new README command falls
    into one of these or this test fails."""
    work = tmp_path / "work"
    work.mkdir()
    _user_inputs(work)
    ran, checked = [], []
    for cmd in readme_commands():
        if cmd == "make test" or cmd.startswith(".venv/bin/vllm serve "):
            continue  # CI runs `make test`; test_readme_serve_command_verbatim_answers_a_video_chat
        reason = next((why for prefix, why in NOT_HERE.items() if cmd.startswith(prefix)), None)
        if reason:
            _check_not_here(cmd)
            checked.append(cmd)
            continue
        if cmd in ("make demo", ".venv/bin/sparrow build-target"):
            argv, cwd = ["bash", "-c", cmd], ROOT
        elif cmd.startswith("sparrow "):
            argv, cwd = _small(cmd, target_dir, work), work
        else:
            pytest.fail(f"README command with no test: {cmd!r} (run it here, or say in NOT_HERE why not)")
        out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, f"{cmd!r} failed:\n{(out.stdout + out.stderr)[-3000:]}"
        if cmd == "make demo":
            assert "identical greedy output: True" in out.stdout, out.stdout[-2000:]
        ran.append(cmd)
    assert (work / "my-draft" / "config.json").is_file() and (work / "shared" / "my-draft").is_dir()
    from sparrow_vllm.serving.adaptive import KTable

    assert KTable.read(work / "my-draft" / "k_table.json").k_max == 2  # sparrow tune's
    assert sum(c.startswith("sparrow data") for c in ran) >= 6 and len(checked) >= 3, (ran, checked)
