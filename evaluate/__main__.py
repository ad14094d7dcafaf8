"""``python -m evaluate``: see :mod:`evaluate.run`."""

from __future__ import annotations

import argparse
import sys

from cutbg_env.config import add_arguments, from_namespace, run_cli


def main(argv: list[str] | None = None) -> int:
    from evaluate.run import EvalArgs, run

    parser = argparse.ArgumentParser(prog="python -m evaluate", description=EvalArgs.__doc__)
    add_arguments(parser, EvalArgs)
    args = parser.parse_args(argv)
    return run_cli(lambda: run(from_namespace(EvalArgs, args)))


if __name__ == "__main__":
    sys.exit(main())
