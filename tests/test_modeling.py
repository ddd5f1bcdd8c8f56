import json

import pytest
import torch

from medclf import MedclfError
from medclf.model import modeling
from medclf.model.modeling import choose_precision, resolve_model


def test_default_model_resolves_to_the_installed_package():
    path = resolve_model("default")
    assert path.endswith("model")
    assert (modeling.default_model_dir() / "config.json").is_file()


def test_model_paths_that_are_not_models_are_explained(tmp_path):
    with pytest.raises(MedclfError, match="does not exist"):
        resolve_model(str(tmp_path / "missing" / "model"))
    with pytest.raises(MedclfError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_hub_id_without_network_fails_in_one_sentence(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    with pytest.raises(MedclfError, match="not in the local Hugging Face cache.*--model DIR"):
        modeling.from_pretrained(AutoTokenizer, "some-org/not-cached-model-xyz")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [({"avx2"}, "fp32"), ({"avx2", "avx512_bf16"}, "bf16"), ({"amx_bf16"}, "bf16")],
)
def test_auto_precision_uses_bf16_only_on_cpus_that_run_it_fast(monkeypatch, flags, expected):
    monkeypatch.setattr(modeling, "cpu_flags", lambda: flags)
    choice = choose_precision("auto", torch.device("cpu"))
    assert choice.name == expected
    assert choice.reason


def test_hidden_cpu_flags_are_not_seen_by_the_precision_choice(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n\n")
    monkeypatch.delenv(modeling.HIDE_CPU_FLAGS_ENV, raising=False)
    assert {"avx2", "avx512_bf16", "amx_bf16"} <= modeling.cpu_flags(str(cpuinfo))
    monkeypatch.setenv(modeling.HIDE_CPU_FLAGS_ENV, "avx512*, amx*")
    assert modeling.cpu_flags(str(cpuinfo)) == {"fpu", "sse", "avx2"}
    assert modeling.cpu_flags(str(tmp_path / "missing")) == set()
    real = modeling.cpu_flags
    monkeypatch.setattr(modeling, "cpu_flags", lambda: real(str(cpuinfo)))
    assert choose_precision("auto", torch.device("cpu")).name == "fp32"


@pytest.mark.parametrize(("flags", "expected"), [({"avx2"}, "fp32"), ({"avx2", "avx512_bf16"}, "bf16")])
def test_training_with_auto_precision_follows_the_cpu(monkeypatch, tmp_path, tiny_model, small_csv, flags, expected):
    """Whatever this machine is, a run trained with --precision auto says which precision it used and why."""
    from medclf import TrainConfig, train

    monkeypatch.setattr(modeling, "cpu_flags", lambda: flags)
    result = train(TrainConfig(data=str(small_csv), model=tiny_model, output=str(tmp_path / "r"), max_steps=2,
                               max_length=32), progress=False)
    run = json.loads((result.run_dir / "train_config.json").read_text())["run"]
    assert run["precision"] == expected and run["precision_reason"] == choose_precision("auto", torch.device("cpu")).reason
    assert f"precision {expected}" in (result.run_dir / "train.log").read_text()


def test_explicit_precision_is_honoured_or_refused(monkeypatch):
    monkeypatch.setattr(modeling, "cpu_flags", lambda: {"avx2"})
    assert choose_precision("fp32", torch.device("cpu")).name == "fp32"
    slow = choose_precision("bf16", torch.device("cpu"))
    assert slow.name == "bf16" and "slower" in slow.reason
    with pytest.raises(MedclfError, match="fp16 training is for CUDA"):
        choose_precision("fp16", torch.device("cpu"))


def test_hub_id_with_the_hub_unreachable_fails_fast_in_one_sentence(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(modeling, "hub_reachable", lambda timeout=3.0: False)
    from transformers import AutoTokenizer

    with pytest.raises(MedclfError, match="cannot be reached \\(no network\\).*hf download some-org/x.*--model DIR"):
        modeling.from_pretrained(AutoTokenizer, "some-org/x")


def test_release_memory_uses_glibc_malloc_trim_where_there_is_one():
    import platform

    from medclf.model.modeling import _malloc_trim, release_memory

    release_memory()  # never raises, whatever the platform
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert _malloc_trim() is not None
