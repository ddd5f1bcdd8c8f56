"""`RunSpec`: the one typed description of a run on disk (`RUN/train_config.json`).

Training writes it; every reader (TextClassifier, evaluate, explain, export, predict files, serve, Spark, reports)
reads it through `RunSpec.read` and asks its fields and properties, so every default sits here once. The file is
versioned: a run written by a newer medclf, whose layout this one does not know, is refused with the fix (upgrade),
and runs written before the version field existed (medclf 0.1.0) are read as version 1.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from medclf.config import TrainConfig
from medclf.core.figures import DeferralRule
from medclf.errors import MedclfError
from medclf.run.artifacts import CONFIG_FILE, atomic_write_json, read_json

RUN_SPEC_VERSION = 1
"""Layout version of train_config.json. Raise it when a field changes meaning; add a reader for the old one."""
LEGACY_OPTIONS = {"long_text": "truncate", "drift_reference": False}
"""Options missing from runs written before they existed, as those runs were trained (before --long-text, texts were
truncated; today's default for new runs is head-tail; before the drift reference, runs kept none)."""


@dataclass(kw_only=True)
class RunSpec:
    """The training options of a run and what training found (labels, calibration, thresholds, provenance)."""

    config: TrainConfig
    """Every option the run was trained with, validated as when it was given."""
    labels: list[str]
    task: str = "single-label"
    temperature: float = 1.0
    """Applied by inference: logits / temperature (1.0 where the fitted temperature was folded into the head)."""
    calibration_temperature: float = 1.0
    """The temperature fitted on the validation part (folded or not)."""
    thresholds: dict[str, float] | None = None
    """multi-label: the decision threshold per label, tuned on the validation part."""
    deferral: DeferralRule | None = None
    """--target-precision: the threshold on the top probability below which a text goes to a person (multi-label: one
    per label, on the probability of each label's decision, in `per_label`), and how it was chosen (on the
    calibration part, with PyTorch at `evaluation_precision`); threshold None: the target was not shown."""
    text_columns: list[str] = field(default_factory=lambda: ["text"])
    label_column: str | list[str] = "label"
    model_source: str = ""
    device: str = "cpu"
    method: str = "finetune"
    precision: str = "fp32"
    precision_reason: str = ""
    evaluation_precision: str = "fp32"
    """The precision its validation and test figures were measured at (inference's choice on the training machine;
    runs written before the field were measured in fp32)."""
    data_file: str = ""
    data_sha256: dict[str, str | None] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    split: str = ""
    processes: dict[str, int | str] = field(default_factory=dict)
    """How many processes trained it, and the batch each took."""
    medclf_version: str = ""
    created: str = ""
    version: int = RUN_SPEC_VERSION

    # ------------------------------------------------------------ what inference asks

    @property
    def multi_label(self) -> bool:
        return self.config.multi_label

    @property
    def long_text(self) -> str:
        return self.config.long_text

    @property
    def max_length(self) -> int:
        return self.config.max_length

    @property
    def pool(self) -> str:
        return self.config.pool

    @property
    def stride(self) -> int | None:
        return self.config.stride

    @property
    def max_chunks(self) -> int:
        return self.config.max_chunks

    @property
    def label_sep(self) -> str:
        return self.config.label_sep

    def threshold_list(self, labels: list[str]) -> list[float] | None:
        """The thresholds in the order of `labels` (the model's), or None for a single-label run."""
        if self.thresholds is None:
            return None
        missing = [lab for lab in labels if lab not in self.thresholds]
        if missing:
            raise MedclfError(f"The run's thresholds name no value for label(s) {', '.join(missing)}; train the run again.")
        return [float(self.thresholds[lab]) for lab in labels]

    # ------------------------------------------------------------ reading and writing

    def to_dict(self) -> dict[str, object]:
        run = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("config", "version")}
        return {"version": self.version, "config": self.config.to_dict(), "run": run}

    @classmethod
    def from_dict(cls, values: dict[str, object], *, source: str = CONFIG_FILE) -> RunSpec:
        version = values.get("version", 1)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise MedclfError(f"{source} has no valid layout version ({version!r}); train the run again.")
        if version > RUN_SPEC_VERSION:
            raise MedclfError(
                f"{source} was written by a newer medclf (run layout version {version}; this medclf reads up to "
                f"{RUN_SPEC_VERSION}); upgrade medclf (`pip install -U medclf`) to read it."
            )
        options, run = values.get("config"), values.get("run")
        if not isinstance(options, dict) or not isinstance(run, dict):
            raise MedclfError(f"{source} lacks its 'config' or 'run' part; it is not a complete medclf run, train it again.")
        known = {f.name for f in dataclasses.fields(cls)} - {"config", "version"}
        kept = {k: v for k, v in run.items() if k in known}  # fields a later version 1 writer added are passed over
        if "labels" not in kept:
            raise MedclfError(f"{source} names no labels; it is not a complete medclf run, train it again.")
        options = {**{k: v for k, v in LEGACY_OPTIONS.items() if k not in options}, **options}
        return cls(config=TrainConfig.from_dict(options), version=version, **kept)

    @classmethod
    def read(cls, run_dir: str | Path) -> RunSpec:
        path = Path(run_dir) / CONFIG_FILE
        if not path.is_file():
            raise MedclfError(f"{run_dir} is not a medclf run directory (no {CONFIG_FILE}); pass the --output of `medclf train`.")
        try:
            values = read_json(path)
        except ValueError:
            raise MedclfError(f"{path} is not valid JSON; the run is damaged, train it again.") from None
        if not isinstance(values, dict):
            raise MedclfError(f"{path} does not hold a run description; the run is damaged, train it again.")
        return cls.from_dict(values, source=str(path))

    def write(self, run_dir: str | Path) -> Path:
        """Write RUN/train_config.json atomically (temporary file, then rename)."""
        path = Path(run_dir) / CONFIG_FILE
        atomic_write_json(path, self.to_dict())
        return path
