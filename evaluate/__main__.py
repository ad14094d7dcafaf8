"""``python -m evaluate``: see :mod:`evaluate.run`."""

from __future__ import annotations

import argparse
import sys

from cutbg_env.config import add_arguments, from_namespace
from cutbg_env.errors import CutbgError


def main(argv: list[str] | None = None) -> int:
    from evaluate.run import EvalArgs, run

    parser = argparse.ArgumentParser(prog="python -m evaluate", description=EvalArgs.__doc__)
    add_arguments(parser, EvalArgs)
    try:
        run(from_namespace(EvalArgs, parser.parse_args(argv)))
    except CutbgError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
