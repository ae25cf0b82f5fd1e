"""vfw's own firmware ROM, the pc board's default BIOS.

``vfw-bios.bin`` is built from ``plugins/vfw-board-pc/firmware`` by its ``build.py`` (reproducibly;
``build.py --check`` verifies the shipped copy). It is a 64 KiB image for the top of 4 GiB whose
last 128 KiB (here: all of it) the board also maps below 1 MiB.
"""

from __future__ import annotations

from importlib import resources

BIOS_NAME = "vfw-bios.bin"


def bios_image() -> bytes:
    """The bytes of the shipped firmware ROM."""
    return resources.files(__name__).joinpath(BIOS_NAME).read_bytes()
