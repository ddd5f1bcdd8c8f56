"""`medclf card` and `medclf runs`: a run's model card, and the table of runs."""

from __future__ import annotations

from typing import Annotated

import typer

from medclf.cli._common import RunDirArg, app, guard, log
from medclf.errors import MedclfError


@app.command()
def card(
    run_dir: RunDirArg,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Write the card here instead of RUN/model/README.md.")] = None,
) -> None:
    """(Re)write a run's model card, RUN/model/README.md (Hugging Face format), from the run's files."""

    def run() -> None:
        from pathlib import Path

        from medclf.reporting.card import model_card, write_card
        from medclf.run.artifacts import METRICS_FILE, atomic_write_text, is_run_dir, read_json
        from medclf.run.runspec import RunSpec

        if not is_run_dir(run_dir):
            raise MedclfError(f"{run_dir} is not a medclf run directory; pass the --output of a `medclf train` run.")
        if output is None:
            log.info("Model card written to %s", write_card(run_dir))
        else:
            atomic_write_text(Path(output), model_card(RunSpec.read(run_dir), read_json(Path(run_dir) / METRICS_FILE),
                                                       name=Path(run_dir).resolve().name))
            log.info("Model card written to %s", output)

    guard(run, writes=output or run_dir)


@app.command()
def runs(
    folder: Annotated[str, typer.Argument(help="The folder that holds the runs (searched at any depth).")] = "runs",
    sort: Annotated[str, typer.Option("--sort", help="Column to sort by: created | macro_f1 | accuracy | train_seconds | run | encoder | method | data.")] = "created",
    descending: Annotated[bool, typer.Option("--descending", help="Largest (or newest) first.")] = False,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Also write the table as CSV.")] = None,
) -> None:
    """Compare runs: one row per run and cross-validation under FOLDER (data hash, encoder, method, options, test
    macro-F1 with its interval, training time)."""

    def run() -> None:
        from pathlib import Path

        from medclf.reporting.runs import COLUMNS, find_runs, format_runs
        from medclf.run.artifacts import atomic_write_text

        if sort not in COLUMNS:
            raise MedclfError(f"--sort {sort!r} is not a column; use one of {', '.join(COLUMNS)}.")
        frame = find_runs(folder)
        if frame.empty:
            raise MedclfError(f"No medclf runs under {folder}; pass the folder your --output runs are in.")
        frame = frame.sort_values(sort, ascending=not descending, kind="stable", na_position="last")
        typer.echo(format_runs(frame), nl=False)
        if output:
            atomic_write_text(Path(output), frame.to_csv(index=False, float_format="%.6f"))
            log.info("Wrote %d runs to %s", len(frame), output)

    guard(run, writes=output)
