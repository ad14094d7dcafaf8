"""Command line: ``python -m cutbg_env.data generate [--root DIR] [--<config field> VALUE ...]``.

Every :class:`~cutbg_env.data.generate.GeneratorConfig` field is a flag (``n_trainval`` →
``--n-trainval``), with the field's docstring as its help.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cutbg_env.cli import subcommand_main
from cutbg_env.data.generate import GeneratorConfig, _matches, generate
from cutbg_env.data.voc import ANIMALS_DIRNAME
from cutbg_env.paths import data_dir


@dataclass(frozen=True)
class GenerateArgs(GeneratorConfig):
    """Write the cluttered-animals dataset in VOC layout."""

    root: Path | None = None
    """dataset folder to write (default: data/cluttered-animals; JPEGImages/, Annotations/ and
    ImageSets/Main/ inside)"""
    force: bool = False
    """replace a dataset at --root that was generated with another config"""

    def generator_config(self) -> GeneratorConfig:
        """The :class:`GeneratorConfig` part of these arguments."""
        return GeneratorConfig(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(GeneratorConfig)}
        )


def run_generate(args: GenerateArgs) -> None:
    """Generate (or keep, when the same config already made it) the dataset at ``args.root``."""
    root = args.root if args.root is not None else data_dir() / ANIMALS_DIRNAME
    config = args.generator_config()
    if _matches(root, config):
        print(f"{root}: already generated with this config, nothing to do")
        return
    start = time.perf_counter()
    root = generate(config, root, overwrite=args.force, progress=True)
    n = config.n_trainval + config.n_test
    print(f"{root}: {n} images ({time.perf_counter() - start:.1f} s)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2 on a :class:`~cutbg_env.errors.CutbgError`)."""
    stages = {"generate": (GenerateArgs, run_generate)}
    return subcommand_main("python -m cutbg_env.data", __doc__, stages, argv)


if __name__ == "__main__":
    sys.exit(main())
