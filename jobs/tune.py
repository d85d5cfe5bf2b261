"""Tuner command line.

    python -m jobs.tune sample --space jobs/configs/tune_space_example.yaml --n 5 --seed 0
    python -m jobs.tune plan --scheduler hyperband --max-t 81 --eta 3
    python -m jobs.tune plan --scheduler asha --max-t 81 --grace-period 1 --eta 3
    python -m jobs.tune plan --scheduler sha --max-t 9 --eta 3
    python -m jobs.tune run --config jobs/configs/tune_demo.yaml --out result.json [--resume STUDY]

`sample` prints one resolved config per line as JSON (same seed, same lines); `plan` prints the budget plan
of a scheduler as one JSON object; `run` runs a study on Ray Tune and prints its result JSON (see
jobs/tune_run.py). Bad input gives a one-line error on stderr and exit code 2.
Subcommands are entries of SUBCOMMANDS (name -> (add_arguments, handler)), so a new one is one more entry.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

import numpy as np

from app.tune.budget import PlanError, asha_plan, hyperband_plan, sha_plan
from app.tune.sampling import sample
from app.tune.space import SpaceError, load_space
from app.tune.study import StudyError


class UsageError(ValueError):
    """A flag combination the parser cannot reject by itself."""


def _number(text: str) -> int | float:
    """'81' -> 81, '1.5' -> 1.5 (ints stay ints so Hyperband can insist on them)."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def add_sample_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", required=True, help="search-space YAML file")
    p.add_argument("--n", type=_non_negative_int, default=1, help="how many configs to print")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="seed of numpy's PCG64 generator")


def cmd_sample(args: argparse.Namespace) -> None:
    """Print N resolved configs of a search space, one JSON object per line."""
    space = load_space(args.space)
    rng = np.random.Generator(np.random.PCG64(args.seed))
    for _ in range(args.n):
        print(json.dumps(sample(space, rng), allow_nan=False))


def add_plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheduler", required=True, choices=["hyperband", "asha", "sha"])
    p.add_argument("--max-t", type=_number, required=True, help="R: most iterations of one trial")
    p.add_argument("--eta", type=_number, default=None, help="reduction factor (default 3 hyperband and sha, 4 asha)")
    p.add_argument("--grace-period", type=_number, default=None, help="asha only: first rung (default 1)")
    p.add_argument("--num-samples", type=int, default=None,
                   help="asha only: trials started, for the rung counts and total (default eta^(rungs-1))")
    p.add_argument("--counting", choices=["full", "incremental"], default=None,
                   help="hyperband only: count n_i*r_i (full, default) or n_i*(r_i - r_(i-1)) (incremental)")


def cmd_plan(args: argparse.Namespace) -> None:
    """Print the budget plan (brackets / rungs) of a Hyperband, ASHA or successive-halving scheduler as JSON."""
    if args.scheduler == "hyperband":
        if args.grace_period is not None or args.num_samples is not None:
            raise UsageError("--grace-period and --num-samples apply to --scheduler asha only")
        eta = 3 if args.eta is None else args.eta
        plan = hyperband_plan(args.max_t, eta, args.counting or "full")
    elif args.scheduler == "sha":
        if args.grace_period is not None or args.counting is not None or args.num_samples is not None:
            raise UsageError("--grace-period, --counting and --num-samples do not apply to --scheduler sha")
        plan = sha_plan(args.max_t, 3 if args.eta is None else args.eta)
    else:
        if args.counting is not None:
            raise UsageError("--counting applies to --scheduler hyperband only")
        eta = 4 if args.eta is None else args.eta
        plan = asha_plan(args.max_t, 1 if args.grace_period is None else args.grace_period, eta, args.num_samples)
    print(json.dumps(plan))


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="study YAML (see jobs/configs/tune_demo.yaml)")
    p.add_argument("--out", default=None, help="also write the result JSON to this file")
    p.add_argument("--resume", default=None, metavar="STUDY", help="continue the interrupted study STUDY")
    p.add_argument("--address", default=None, help="join this Ray cluster (default: $RAY_ADDRESS, else a "
                   "fresh local one)")
    p.add_argument("--num-cpus", type=_non_negative_int, default=2, help="CPUs of a fresh local cluster")
    p.add_argument("--ray-temp-dir", default=None, help="session directory of a fresh local cluster "
                   "(its own, so parallel runs do not share /tmp/ray)")


def cmd_run(args: argparse.Namespace) -> None:
    """Run a study (scheduler + search over the real trainer) and print its result JSON."""
    import os

    from app.tune.study import load_study

    cfg, space = load_study(args.config)  # validated before Ray starts
    import ray

    from jobs.tune_run import run_study

    started = False
    if not ray.is_initialized():
        address = args.address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, namespace="flywheel")
        else:  # an isolated cluster: never join someone else's by accident (FINDINGS, several drivers)
            ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, namespace="flywheel",
                     _temp_dir=args.ray_temp_dir)
        started = True
    import contextlib

    try:
        # stdout carries the result JSON only; libraries imported on the way print banners to stdout
        with contextlib.redirect_stdout(sys.stderr):
            result = run_study(cfg, space, resume=args.resume)
    finally:
        if started:
            ray.shutdown()
    text = json.dumps(result, indent=1)
    if args.out:
        from pathlib import Path

        Path(args.out).write_text(text)
    print(text)


# Errors that mean "bad input": one line on stderr and exit code 2, never a traceback.
EXPECTED_ERRORS: tuple[type[Exception], ...] = (SpaceError, PlanError, UsageError, StudyError)

AddArgs = Callable[[argparse.ArgumentParser], None]
Handler = Callable[[argparse.Namespace], None]
SUBCOMMANDS: dict[str, tuple[AddArgs, Handler]] = {
    "sample": (add_sample_args, cmd_sample),
    "plan": (add_plan_args, cmd_plan),
    "run": (add_run_args, cmd_run),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.tune", description="Flywheel tuner")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_args, handler) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=(handler.__doc__ or "").strip().split("\n")[0] or None)
        add_args(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _, handler = SUBCOMMANDS[args.command]
    try:
        handler(args)
    except EXPECTED_ERRORS as e:
        message = " | ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"tune {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
