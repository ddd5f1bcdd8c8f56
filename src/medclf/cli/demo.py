"""`medclf demo`: train on the embedded demo data, predict three invented notes."""

from __future__ import annotations

from typing import Annotated

import typer

from medclf.cli._common import app, guard, progress
from medclf.config import TrainConfig

DEMO_TEXTS = [
    "68-year-old man with crushing chest pain radiating to the jaw; ECG shows ST elevation in V2-V4.",
    "Itchy silvery plaques on both elbows and knees for a year; start topical steroid.",
    "Sudden slurred speech and right facial droop this morning; MRI shows an acute infarct.",
]


@app.command()
def demo(
    output: Annotated[str, typer.Option("--output", "-o", help="Run directory to create.")] = "runs/demo",
    overwrite: Annotated[bool, typer.Option("--overwrite/--no-overwrite", help="Replace an earlier demo run.")] = True,
) -> None:
    """Train on the embedded demo data (invented snippets), predict three new texts, print the test metrics."""

    def run() -> None:
        from medclf.core.metrics import format_table
        from medclf.inference.classifier import TextClassifier
        from medclf.training.pipeline import train as train_fn

        result = train_fn(TrainConfig(output=output, overwrite=overwrite), progress=progress())
        clf = TextClassifier.load(result.run_dir)
        typer.echo("Predictions for three new invented notes:")
        for i, (label, probs) in enumerate(zip(clf.predict(DEMO_TEXTS), clf.predict_proba(DEMO_TEXTS)), 1):
            typer.echo(f"  note {i}: {label} (p={probs.max():.2f})")
        typer.echo("Test metrics:")
        typer.echo(format_table(result.test_metrics))
        typer.echo(f"Run written to {result.run_dir}")

    guard(run, writes=output)
