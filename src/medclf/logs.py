"""Logging setup for the command line and the server's worker processes: messages only, to stderr, never text."""

from __future__ import annotations

import logging
import sys


def configure_logging(*, quiet: bool = False, verbose: bool = False) -> None:
    """medclf's loggers to stderr as plain messages: warnings only with quiet, debug with verbose, else info."""
    logger = logging.getLogger("medclf")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
