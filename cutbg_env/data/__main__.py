"""Command line: ``python -m cutbg_env.data generate [--root DIR] [--<config field> VALUE ...]``.

Every :class:`~cutbg_env.data.generate.GeneratorConfig` field is a flag (``n_trainval`` →
``--n-trainval``), with the field's docstring as its help.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from cutbg_env.config import add_arguments, from_namespace
from cutbg_env.data.generate import GeneratorConfig, _matches, generate
from cutbg_env.data.voc import ANIMALS_DIRNAME, data_dir
from cutbg_env.errors import CutbgError


def build_parser() -> argparse.ArgumentParser:
    """The CLI parser; ``generate``'s flags are built from the GeneratorConfig fields."""
    parser = argparse.ArgumentParser(prog="python -m cutbg_env.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser(
        "generate",
        help="write the cluttered-animals dataset in VOC layout",
    )
    gen.add_argument(
        "--root",
        type=Path,
        default=data_dir() / ANIMALS_DIRNAME,
        help="dataset folder to write (JPEGImages/, Annotations/, ImageSets/Main/ inside)",
    )
    gen.add_argument(
        "--force",
        action="store_true",
        help="replace a dataset at --root that was generated with another config",
    )
    add_arguments(gen, GeneratorConfig)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2 on a :class:`~cutbg_env.errors.CutbgError`)."""
    args = build_parser().parse_args(argv)
    if args.command == "generate":
        try:
            config = from_namespace(GeneratorConfig, args)
            if _matches(args.root, config):
                print(f"{args.root}: already generated with this config, nothing to do")
                return 0
            start = time.perf_counter()
            root = generate(config, args.root, overwrite=args.force, progress=True)
        except CutbgError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        n = config.n_trainval + config.n_test
        print(f"{root}: {n} images ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
