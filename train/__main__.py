"""``python -m train {classifier,calibrate,agent,refinement}``: the paper's training pipeline.

Bad input (unknown class, missing data or checkpoint) prints one error line and exits 2.
"""

from __future__ import annotations

import argparse
import sys

from cutbg_env.config import add_arguments, from_namespace, run_cli


def main(argv: list[str] | None = None) -> int:
    from train.agent import AgentArgs, RefinementArgs, rechoose_refinement, train_agent
    from train.calibrate import CalibrateArgs, calibrate
    from train.classifier import ClassifierArgs, train_classifier

    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__)
    sub = parser.add_subparsers(dest="stage", required=True)
    stages = {
        "classifier": (ClassifierArgs, train_classifier, "stage 1: the multi-label classifier"),
        "calibrate": (CalibrateArgs, calibrate, "stage 2: per-class δ and heat-map threshold"),
        "agent": (AgentArgs, train_agent, "stage 3: the SB3 DQN agent of one class"),
        "refinement": (
            RefinementArgs,
            rechoose_refinement,
            "re-choose a trained agent's heat-map setting (refinement.json)",
        ),
    }
    for name, (cls, _, help_text) in stages.items():
        add_arguments(sub.add_parser(name, help=help_text, description=cls.__doc__), cls)
    ns = parser.parse_args(argv)
    cls, fn, _ = stages[ns.stage]
    return run_cli(lambda: fn(from_namespace(cls, ns)))


if __name__ == "__main__":
    sys.exit(main())
