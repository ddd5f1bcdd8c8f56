"""`ServeSettings`: everything `medclf serve` needs, validated on creation, JSON-serialisable (for --workers > 1)."""

import json
import os
from dataclasses import asdict, dataclass

from medclf.config import BACKENDS, DEVICES, INFER_PRECISIONS, LoadOptions
from medclf.errors import MedclfError

SETTINGS_ENV = "MEDCLF_SERVE_SETTINGS"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}



@dataclass(frozen=True)
class ServeSettings:
    """Everything `medclf serve` needs; validated on creation, JSON-serialisable (for --workers > 1)."""

    run_dir: str
    host: str = "127.0.0.1"
    port: int = 8000
    backend: str = "auto"
    max_batch: int = 64
    """Most texts in one request, and in one forward pass of the server's batcher."""
    max_chars: int = 20_000
    """Most characters in one text."""
    max_queue: int = 1024
    """Most texts waiting for the model; beyond it requests get 503 + Retry-After."""
    max_wait_ms: float = 5.0
    """How long the oldest queued request waits, from its arrival, for more requests when fewer than max_batch texts
    are queued (under load the requests queued during the last forward pass have waited that long already)."""
    api_key_env: str | None = None
    workers: int = 1
    threads: int | None = None
    """Inference threads per worker (default: the cores divided among the workers)."""
    inference_batch: int = 16
    graceful_timeout_s: float = 30.0
    long_text: str | None = None
    """truncate | head-tail | chunk at inference; None: as the run was trained."""
    precision: str = "auto"
    """Inference precision, as `medclf predict --precision` (auto: bf16 on a CUDA GPU or an AMX CPU, else fp32)."""
    device: str = "cpu"
    """Where each worker runs the model (cpu by default: workers share the machine's cores; cuda shares one GPU)."""
    metrics_labels: bool = False
    """Count the predicted labels on /metrics (medclf_predicted_labels_total by label). Off by default: /metrics is
    open and, without it, carries no result beyond counts of texts, deferrals and the confidence histogram."""

    def __post_init__(self) -> None:
        for name, allowed in (("backend", BACKENDS), ("precision", INFER_PRECISIONS), ("device", DEVICES)):
            if getattr(self, name) not in allowed:
                raise MedclfError(f"--{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}.")
        for name, low in (("port", 0), ("max_batch", 1), ("max_chars", 1), ("max_queue", 1), ("workers", 1),
                          ("inference_batch", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise MedclfError(f"--{name.replace('_', '-')} must be an integer of at least {low}, not {value!r}.")
        if self.port > 65535:
            raise MedclfError(f"--port must be at most 65535, not {self.port}.")
        if self.max_queue < self.max_batch:
            raise MedclfError(f"--max-queue ({self.max_queue}) must be at least --max-batch ({self.max_batch}).")
        if not 0 <= self.max_wait_ms <= 1000:
            raise MedclfError(f"--max-wait-ms must be between 0 and 1000, not {self.max_wait_ms}.")
        if self.threads is not None and self.threads < 1:
            raise MedclfError(f"--threads must be at least 1, not {self.threads}.")
        from medclf.config import LONG_TEXT

        if self.long_text is not None and self.long_text not in LONG_TEXT:
            raise MedclfError(f"--long-text must be one of {', '.join(LONG_TEXT)}, not {self.long_text!r}.")
        if self.api_key_env is not None and not self.api_key_env.strip():
            raise MedclfError("--api-key-env must name an environment variable.")

    def api_key(self) -> str | None:
        """The key from the named environment variable; an option that names an unset variable is an error."""
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env, "")
        if not key:
            raise MedclfError(f"--api-key-env names {self.api_key_env}, which is not set; export it or leave the option out.")
        return key

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ServeSettings":
        return cls(**json.loads(text))

    def load_options(self) -> LoadOptions:
        """How each worker loads the run: on its device and precision, with its share of the cores."""
        return LoadOptions(backend=self.backend, device=self.device, precision=self.precision,
                           batch_size=self.inference_batch, threads=self.inference_threads(), long_text=self.long_text)

    def inference_threads(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 1) // self.workers)
