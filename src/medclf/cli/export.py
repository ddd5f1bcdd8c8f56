"""`medclf export`: a run to ONNX, checked against PyTorch."""

from __future__ import annotations

from typing import Annotated

import typer

from medclf.cli._common import RunDirArg, TextColOpt, app, guard
from medclf.errors import MedclfError


@app.command()
def export(
    run_dir: RunDirArg,
    format: Annotated[str, typer.Option("--format", help="Export format; onnx is the one there is.")] = "onnx",
    quantize: Annotated[str, typer.Option("--quantize", help="none | int8: also write model.int8.onnx (int8 weights), checked for top-label agreement.")] = "int8",
    output: Annotated[str | None, typer.Option("--output", "-o", help="Folder to write. Default: RUN_DIR/onnx (where --backend auto finds it).")] = None,
    data: Annotated[str | None, typer.Option("--data", help="Texts to check the export on (any table `predict --input` reads; a sample of 256). Default: the run's own test part, read again from its training table (else the packaged demo notes); backend auto takes the int8 model only where it was checked on the test part.")] = None,
    text_column: TextColOpt = None,
    int8_recipe: Annotated[str, typer.Option("--int8-recipe", help="auto (fastest recipe that passes the 99% check) | dynamic (fastest) | blockwise-128 | blockwise-32 (most accurate, slowest).")] = "auto",
) -> None:
    """Export a run to ONNX for fast CPU inference; the export is checked against PyTorch before it is written."""

    def run() -> None:
        if format != "onnx":
            raise MedclfError(f"--format must be onnx, not {format!r}.")
        from medclf.export.onnx import PARITY_TOLERANCE, export_onnx

        result = export_onnx(run_dir, quantize=quantize, output=output, data=data, text_columns=text_column,
                             int8_recipe=int8_recipe)
        typer.echo(f"fp32: {result.fp32_file}, max |probability difference| vs PyTorch {result.fp32_max_abs_diff:.1e} "
                   f"on {result.n_check_texts} texts (limit {PARITY_TOLERANCE:.0e})")
        for tried in result.int8_tried:
            if "error" in tried:
                typer.echo(f"int8 ({tried['recipe']}): does not run on this model in ONNX Runtime, skipped")
                continue
            kept = "kept" if tried["recipe"] == result.int8_recipe else "rejected"
            typer.echo(f"int8 ({tried['recipe']}): same prediction as PyTorch on {100 * tried['agreement']:.1f}% of "
                       f"{result.n_check_texts} texts, {kept}")
        if result.int8_skipped:
            typer.echo(f"int8: {result.int8_skipped}; model.int8.onnx was not written", err=True)
        typer.echo(f"Export written to {result.output_dir}")

    guard(run, writes=output or run_dir)
