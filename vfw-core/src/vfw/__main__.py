"""The ``vfw`` console script.

``vfw run ...`` and ``vfw --version`` go straight to their code: importing click costs ~30 ms
here, more than QEMU's whole ``-machine help``, and ``run`` takes QEMU's own option syntax,
which vfw's parser reads anyway. Everything else (including ``vfw run --help``) goes through
the click command group in ``vfw.cli``.
"""

from __future__ import annotations

import sys

_HELP = ("--help", "-h", "-help")


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except BrokenPipeError:
        # The reader went away (``vfw run -d help | head``): stop quietly, as a C program
        # killed by SIGPIPE would, instead of printing a traceback.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _main(args: list[str]) -> int:
    if args == ["--version"]:
        from . import __version__

        print(f"vfw {__version__}")
        return 0
    if args and args[0] == "run" and not any(a in _HELP for a in args[1:]):
        from .vl import run_cli

        return run_cli(args[1:])
    from .cli import cli

    return int(cli.main(args=args, prog_name="vfw", standalone_mode=True) or 0)


if __name__ == "__main__":
    sys.exit(main())
