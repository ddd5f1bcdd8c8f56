"""What every job that writes a folder (train, pretrain, cv, audit) settles before it starts work.

`open_job` names the output (the config's --output, or runs/<prefix><timestamp>), refuses a name it may not write
(a file, a folder that is not medclf's, an earlier run without --overwrite), checks that MLflow imports when
--track mlflow asks for it (before minutes of training, not after), and under several processes insists on an
explicit --output so that every process names the same folder. The job then builds its folder in a
`run.artifacts.StagedRun` at `job.output`, renamed into place only when complete.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from medclf.config import PretrainConfig, TrainConfig
from medclf.errors import MedclfError
from medclf.run.artifacts import check_output_dir
from medclf.run.tracking import require_mlflow
from medclf.training.distributed import SINGLE, Dist, distributed_state


@dataclass(frozen=True)
class Job:
    output: Path
    """The folder the job writes (through a StagedRun)."""
    dist: Dist
    """The process group (one process unless started under torchrun)."""
    started: float = field(default_factory=time.perf_counter)


def open_job(config: TrainConfig | PretrainConfig, *, prefix: str = "", distributed: bool = True) -> Job:
    """The job's output name, checked, with MLflow and the process group settled (see the module's doc);
    `distributed`: the job may run on several processes (cross-validation and the audit run theirs per fold)."""
    dist = distributed_state() if distributed else SINGLE
    if dist.active and config.output is None:
        raise MedclfError("With several processes pass --output, so that every process names the same run directory.")
    output = Path(config.output or Path("runs") / datetime.now().strftime(f"{prefix}%Y%m%d-%H%M%S"))
    check_output_dir(output, overwrite=config.overwrite)
    if config.track == "mlflow":
        require_mlflow()
    return Job(output=output, dist=dist)
