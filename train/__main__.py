"""``python -m train {classifier,calibrate,agent}``: the paper's training pipeline.

Bad input (unknown class, missing data or checkpoint) prints one error line and exits 2.
"""

from __future__ import annotations

import sys

from cutbg_env.cli import subcommand_main


def main(argv: list[str] | None = None) -> int:
    from train.agent import AgentArgs, train_agent
    from train.calibrate import CalibrateArgs, calibrate
    from train.classifier import ClassifierArgs, train_classifier

    stages = {
        "classifier": (ClassifierArgs, train_classifier),
        "calibrate": (CalibrateArgs, calibrate),
        "agent": (AgentArgs, train_agent),
    }
    return subcommand_main("python -m train", __doc__, stages, argv)


if __name__ == "__main__":
    sys.exit(main())
