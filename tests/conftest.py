"""Shared fixtures: a tiny random-init BERT built offline in a temp dir, and small invented tables."""

from __future__ import annotations

import csv
import os
import random
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CPU_MODE = os.environ.get("MEDCLF_TEST_CPU", "native")
"""`MEDCLF_TEST_CPU=avx2 python3 -m pytest` runs the suite as an AVX2-only machine would: the precision choice
does not see AVX-512/AMX (so `--precision auto` picks fp32), and PyTorch and oneDNN run their AVX2 kernels (other
rounding than AVX-512's). Set here, before anything imports torch; subprocesses (the CLI, servers) inherit it.
.ci/run runs the suite once natively and once in this mode where the CPU has AVX-512. `MEDCLF_TEST_CPU=amx` makes
the choices of an AMX Xeon on any CPU (bf16 autocast for training and inference by default; emulated where the CPU
lacks bf16 units, so slower), to check that the suite holds on that kind without one."""
if CPU_MODE == "avx2":
    os.environ["MEDCLF_HIDE_CPU_FLAGS"] = "avx512*,amx*"
    os.environ["ATEN_CPU_CAPABILITY"] = "avx2"
    os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"
elif CPU_MODE == "amx":
    os.environ["MEDCLF_ADD_CPU_FLAGS"] = "amx_bf16,amx_int8,amx_tile,avx512_bf16"
elif CPU_MODE != "native":
    raise pytest.UsageError(f"MEDCLF_TEST_CPU must be 'native', 'avx2' or 'amx', not {CPU_MODE!r}.")


def pytest_report_header(config: pytest.Config) -> str:
    import torch

    from medclf.model.modeling import choose_precision

    auto = choose_precision("auto", torch.device("cpu"))
    return (f"medclf CPU mode: {CPU_MODE} (torch kernels {torch.backends.cpu.get_cpu_capability()}); "
            f"--precision auto here picks {auto.name}")

SECRET = "ZEBRA-PATIENT-7731"
"""A marker planted in test texts: it must never appear in any message, log or artifact."""

WORDS = {
    "cardio": ["chest", "pain", "troponin", "ecg", "murmur", "palpitations", "heart", "arrhythmia"],
    "derm": ["rash", "itchy", "plaques", "mole", "skin", "eczema", "lesion", "biopsy"],
    "neuro": ["seizure", "headache", "stroke", "numbness", "tremor", "weakness", "mri", "speech"],
}


def make_rows(n_per_class: int, seed: int = 0, labels: tuple[str, ...] = ("cardio", "derm", "neuro")) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for label in labels:
        for i in range(n_per_class):
            words = rng.sample(WORDS[label], 4) + rng.sample([w for k in WORDS for w in WORDS[k]], 1)
            rows.append({"note_id": f"{label}-{i}", "text": f"patient {SECRET} " + " ".join(words), "label": label})
    rng.shuffle(rows)
    return rows


def write_csv(path: Path, rows: list[dict[str, str]], *, delimiter: str = ",") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def build_tiny_bert(path: Path, *, max_positions: int = 512, width: int = 32) -> str:
    """A 2-layer BERT (32 wide unless asked) with random weights and the packaged MiniLM's tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from medclf.model.modeling import default_model_dir

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=width, num_hidden_layers=2, num_attention_heads=width // 16,
        intermediate_size=2 * width, max_position_embeddings=max_positions,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """512 positions: also for recipes that pad every text to 512 (the tutorial's)."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_model_64(tmp_path_factory: pytest.TempPathFactory) -> str:
    """64 wide: for end-to-end learning tests that the 32-wide model passes only on some seeds and CPU kinds
    (chunk mode over long documents: 32 wide reached 1.0 on 1 of 6 seeded sets, 64 wide on 16 of 16, AVX2 and AVX-512)."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert-64"), width=64)


@pytest.fixture(scope="session")
def small_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 rows, 3 classes, with an extra id column."""
    return write_csv(tmp_path_factory.mktemp("data") / "notes.csv", make_rows(20))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: str, small_csv: Path) -> Path:
    """One run of the tiny model on small_csv, shared by the read-only tests."""
    from medclf import TrainConfig, train

    out = tmp_path_factory.mktemp("runs") / "run"
    train(TrainConfig(data=str(small_csv), model=tiny_model, output=str(out), epochs=8, lr=3e-3, batch_size=8,
                      precision="fp32", few_shot="off"), progress=False)
    return out


@pytest.fixture(scope="session")
def embedding_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: str, small_csv: Path) -> Path:
    """A `--method embeddings` run of the tiny model, trained through the CLI."""
    from typer.testing import CliRunner

    from medclf.cli.main import app

    out = tmp_path_factory.mktemp("emb") / "run"
    # fp32 pinned: its tests compare it with the formula head.json states, in fp32, on every CPU kind
    result = CliRunner().invoke(app, ["train", "--method", "embeddings", "--data", str(small_csv), "--model", tiny_model,
                                      "--output", str(out), "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    assert "accuracy" in result.stdout
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 60, path: str = "/readyz") -> None:
    """Poll `path` (/readyz of a `medclf serve` subprocess) until it answers 200."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(base + path, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become ready")


FAMILIES = ("bert", "roberta", "xlm-roberta", "distilbert", "electra", "deberta-v2", "modernbert", "bigbird", "longformer")
"""Encoder families a medical user may pick (BioBERT/PubMedBERT are BERT; RoBERTa-base-PM, XLM-R, Clinical-Longformer,
BioM-ELECTRA, DeBERTa-v3, ModernBERT/Clinical ModernBERT, BigBird): each built tiny, with random weights."""


def _byte_level_tokenizer(path: Path) -> Any:
    """A RoBERTa-style byte-level BPE tokenizer (<s> </s> <pad>=1 <mask>) trained on the invented notes: the
    tokenizer kind RoBERTa, XLM-R (its sentencepiece differs, its specials do not) and Longformer come with."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import PreTrainedTokenizerFast

    corpus = [row["text"] for row in make_rows(20)] + [" ".join(words) for words in WORDS.values()]
    bpe = ByteLevelBPETokenizer(add_prefix_space=True)
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe._tokenizer.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=True)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                   cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                   model_max_length=512)


def build_tiny_family(family: str, path: Path) -> str:
    """A 2-layer, 32-wide model of `family` with random weights, saved with a tokenizer, as a user's local model dir."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from medclf.model.modeling import default_model_dir

    byte_level = family in ("roberta", "xlm-roberta", "longformer")
    tok = _byte_level_tokenizer(path) if byte_level else AutoTokenizer.from_pretrained(default_model_dir())
    ids = {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id}
    common = {**ids, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    if family == "bert":
        from transformers import BertConfig as C
        config = C(**common, max_position_embeddings=512)
    elif family in ("roberta", "xlm-roberta"):
        from transformers import RobertaConfig, XLMRobertaConfig
        C = RobertaConfig if family == "roberta" else XLMRobertaConfig
        config = C(**common, max_position_embeddings=514, type_vocab_size=1, bos_token_id=tok.bos_token_id,
                   eos_token_id=tok.eos_token_id)
    elif family == "longformer":
        from transformers import LongformerConfig
        config = LongformerConfig(**common, max_position_embeddings=514, type_vocab_size=1, attention_window=8,
                                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, sep_token_id=tok.sep_token_id)
    elif family == "distilbert":
        from transformers import DistilBertConfig
        config = DistilBertConfig(**ids, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=512)
    elif family == "electra":
        from transformers import ElectraConfig
        config = ElectraConfig(**common, embedding_size=16, max_position_embeddings=512)
    elif family == "deberta-v2":
        from transformers import DebertaV2Config
        config = DebertaV2Config(**common, max_position_embeddings=512, relative_attention=True, position_buckets=32,
                                 pos_att_type=["p2c", "c2p"], position_biased_input=False)
    elif family == "modernbert":
        from transformers import ModernBertConfig
        config = ModernBertConfig(**common, max_position_embeddings=512, global_attn_every_n_layers=2, local_attention=16,
                                  cls_token_id=tok.cls_token_id, sep_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id,
                                  eos_token_id=tok.sep_token_id)
    elif family == "bigbird":
        from transformers import BigBirdConfig
        config = BigBirdConfig(**common, max_position_embeddings=512, block_size=4, num_random_blocks=1,
                               sep_token_id=tok.sep_token_id)
    else:
        raise ValueError(family)
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def tracked_metrics(run: Path, store: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, float], Path]:
    """Log a finished run to a fresh local MLflow store in `store` (`track_train`, as --track mlflow does) and
    return the metrics MLflow holds for it, with the store's database file (to look for text in it)."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from medclf.run.tracking import track_train

    monkeypatch.chdir(store)
    uri = f"sqlite:///{store / 'store.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return MlflowClient(tracking_uri=uri).get_run(track_train(run)).data.metrics, store / "store.db"
