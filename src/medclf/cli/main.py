"""The `medclf` command line: a thin typer layer over the library functions.

Each group of commands is a module of this package (train, pretrain, predict, drift, runs, export, serve, demo) that
registers its commands on the one app of `_common`; importing them here builds the whole command line.
"""

from __future__ import annotations

from medclf.cli._common import app

# The order of these imports is the order in which `medclf --help` lists the commands.
# isort: off
from medclf.cli import train
from medclf.cli import pretrain
from medclf.cli import predict
from medclf.cli import drift
from medclf.cli import runs
from medclf.cli import export
from medclf.cli import serve
from medclf.cli import demo
# isort: on

COMMAND_MODULES = (train, pretrain, predict, drift, runs, export, serve, demo)

__all__ = ["COMMAND_MODULES", "app", "main"]


def main() -> None:
    app(prog_name="medclf")


if __name__ == "__main__":
    main()
