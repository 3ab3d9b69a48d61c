"""``python -m clipft_utils``: run the course, count parameters, prefetch, build the offline world."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from .config import METHODS, PROFILES


def _run(args: argparse.Namespace) -> int:
    from .runner import run_all
    profile = "smoke" if args.smoke else args.profile
    if not args.all and not args.only:
        print("Nothing to do: pass --all, or --only METHOD [METHOD ...].", file=sys.stderr)
        return 2
    report = run_all(profile, only=args.only or None, force=args.force, device=args.device, seeds=args.seeds,
                     extra=_params(args.param))
    return 0 if report.ok else 1


def _params(pairs: Sequence[str] | None) -> dict:
    """``NAME=VALUE`` pairs (YAML values) as notebook parameters; ``lora.ranks=[1,2]`` scopes to one method."""
    import yaml
    extra: dict = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"--param expects NAME=VALUE, got {pair!r} (e.g. -p epochs=1 -p lora.ranks=[1,2]).")
        scope, _, key = name.rpartition(".")
        (extra.setdefault(scope, {}) if scope else extra)[key] = yaml.safe_load(value)
    return extra


def _prefetch(args: argparse.Namespace) -> int:
    from .data import prefetch_flowers
    from .models import load_clip
    if not args.data_only:
        loaded = load_clip(args.model, args.pretrained)
        print(f"weights ready: {loaded.name} / {loaded.pretrained}")
    if not args.weights_only:
        print(f"Flowers102 ready in {prefetch_flowers(args.data_root)}")
    print("This machine (or a copy of its data/ folder and ~/.cache/huggingface) can now run offline.")
    return 0


DELEGATED = {
    "params": ("clipft_utils.methods.params", "trainable vs total parameters of every method (no download)"),
    "toyclip": ("clipft_utils.toyclip", "build or evaluate the offline ToyCLIP checkpoint"),
    "synth": ("clipft_utils.synth", "SynthFlowers: sample grid, full-size Flowers102-shaped stand-in folder"),
    "bench": ("clipft_utils.bench", "throughput and peak memory per method (real architecture, random weights)"),
}
"""Sub-commands that own their own argument parsing."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the package CLI."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        module = importlib.import_module(DELEGATED[argv[0]][0])
        return int(module.main(argv[1:]) or 0)
    parser = argparse.ArgumentParser(prog="python -m clipft_utils", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute the notebooks (what run_all.sh does)")
    run.add_argument("--all", action="store_true", help="run every notebook, 01-07")
    run.add_argument("--only", nargs="+", choices=METHODS, metavar="METHOD", help=f"subset of {METHODS}")
    run.add_argument("--profile", default="full", choices=list(PROFILES))
    run.add_argument("--smoke", action="store_true", help="shorthand for --profile smoke (offline stand-in)")
    run.add_argument("--force", action="store_true", help="recompute finished methods")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    run.add_argument("--seeds", nargs="+", type=int, default=[0])
    run.add_argument("-p", "--param", action="append", metavar="NAME=VALUE",
                     help="extra notebook parameter (repeatable), e.g. -p epochs=1 -p test_per_class=5 "
                          "-p lora.ranks=[1,2] (a METHOD. prefix scopes it to that method's notebook)")
    run.set_defaults(func=_run)

    pre = sub.add_parser("prefetch", help="download weights and Flowers102 once, for offline classrooms")
    pre.add_argument("--model", default="ViT-B-32")
    pre.add_argument("--pretrained", default="openai")
    pre.add_argument("--data-root", default=None)
    pre.add_argument("--weights-only", action="store_true")
    pre.add_argument("--data-only", action="store_true")
    pre.set_defaults(func=_prefetch)

    for name, (_, text) in DELEGATED.items():
        sub.add_parser(name, help=text, add_help=False)

    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
