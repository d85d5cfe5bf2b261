"""`flywheel` console script: one subcommand per job module (`flywheel loop ...` = `python -m jobs.loop ...`)."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "loop": ("jobs.loop", "one iteration: ingest → select → label → train → evaluate → decide → serve"),
    "select": ("jobs.select", "bring-your-own-scores selection (probabilities, embeddings, losses)"),
    "label": ("jobs.label", "agreement metrics, Label Studio import/export"),
    "merge": ("jobs.merge", "merge models from a mergekit-style YAML"),
    "tune": ("jobs.tune", "studies on Ray Tune, search-space sampling and scheduler budget plans"),
    "serve": ("jobs.serve", "Ray Serve ensembles: up (deploy / update / --redeploy), status, online, down"),
    "flywheel": ("jobs.flywheel", "the long-lived controller: start, status, trigger, stop"),
    "lineage": ("jobs.lineage", "a model's chain back to its data, or the models built on a data version"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: flywheel {" + ",".join(COMMANDS) + "} [args...]\n")
        for name, (_, help_) in COMMANDS.items():
            print(f"  {name:8s} {help_}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    sys.argv = [f"flywheel {argv[0]}", *argv[1:]]
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
