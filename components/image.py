"""The container image every component runs in."""

import os

DEFAULT_IMAGE = "ghcr.io/vitnas/vitnas:latest"


def image() -> str:
    """`VITNAS_IMAGE` (e.g. registry/vitnas:<git sha>) or the default tag."""
    return os.environ.get("VITNAS_IMAGE", DEFAULT_IMAGE)
