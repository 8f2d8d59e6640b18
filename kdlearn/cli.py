"""The ``kdlearn`` command: one entry point for the course's tools.

Each subcommand hands the rest of the command line to the module that implements it, so its
options and its ``--help`` are that module's own.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name: (module whose main(argv, prog) runs it, arguments put before the user's, one line of help)
COMMANDS = {
    "check": ("kdlearn.grading", [],
              "grade learners' notebooks: pass, fail with the hint, or not attempted, per exercise"),
    "build": ("kdlearn.course", ["build"],
              "run the reference lessons in solutions/ and write the learner versions in lessons/"),
    "hinton": ("kdlearn.experiments.hinton", [],
               "Hinton et al. 2015 reproduced: teacher, student from scratch, student distilled"),
    "families": ("kdlearn.experiments.families", [],
                 "lesson 06: response, feature and relation distillation of one student, all labels and few"),
    "schemes": ("kdlearn.experiments.schemes", [],
                "lesson 07: born-again, be your own teacher, mutual learning, several teachers, an assistant chain"),
    "train-teachers": ("kdlearn.experiments.train_teachers", [],
                       "train the language-model teachers that ship with kdlearn (kdlearn.teachers)"),
    "divergences": ("kdlearn.experiments.divergences", [],
                    "lesson 08: forward KL, reverse KL and JSD(beta) students of a shipped teacher, precision and recall"),
    "sequence-kd": ("kdlearn.experiments.sequence_kd", [],
                    "lesson 09: hard labels, word-level, sequence-level KD and filtered samples on one student"),
    "on-policy": ("kdlearn.experiments.on_policy", [],
                  "lesson 10: off-policy, on-policy and mixed (GKD) distillation at equal updates and wall time"),
    "bench": ("kdlearn.bench", [],
              "time and measure the memory of kdlearn's fused losses against plain PyTorch"),
    "site": ("kdlearn.site", [],
             "render the reference lessons, outputs and plots included, to static HTML pages"),
    "handout": ("kdlearn.handout", [],
                "make what a graded class gets: the learner notebooks and kdlearn's wheel, no solutions"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kdlearn",
        description="Learn and do knowledge distillation: the course's tools.",
        epilog="`kdlearn COMMAND --help` describes a command's options. "
               "Example: kdlearn check submissions/ --csv grades.csv")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, _, summary) in COMMANDS.items():
        # No options here: every argument after the command, --help included, is the module's.
        commands.add_parser(name, help=summary, add_help=False)
    args, rest = parser.parse_known_args(argv)

    module, leading, _ = COMMANDS[args.command]
    # The module's usage lines name the command as typed: "kdlearn check", and "kdlearn build" for
    # course's own build subcommand.
    prog = "kdlearn" if leading else f"kdlearn {args.command}"
    # Imported only when asked for: each brings its own dependencies (nbval, the datasets, ...).
    return importlib.import_module(module).main([*leading, *rest], prog=prog)


if __name__ == "__main__":
    sys.exit(main())
