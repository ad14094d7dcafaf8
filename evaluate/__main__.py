"""``python -m evaluate``: see :mod:`evaluate.run`."""

from __future__ import annotations

import sys

from cutbg_env.cli import command_main


def main(argv: list[str] | None = None) -> int:
    from evaluate.run import EvalArgs, run

    return command_main("python -m evaluate", EvalArgs.__doc__, EvalArgs, run, argv)


if __name__ == "__main__":
    sys.exit(main())
