"""``python -m clipft_utils``: run the course, count parameters, prefetch, build the offline world."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from ..config import PROFILES
from .sections import method_names


def error_line(exc: BaseException, prefix: str = "clipft") -> str:
    """How the CLI shows a ClipftError: its message (the problem and the fix) on one line, without a traceback."""
    return f"[{prefix}] {type(exc).__name__}: {' '.join(str(exc).split())}"


def _split_option(text: str | None) -> list | None:
    """``--split 3,1`` -> [3, 1, 'rest'] (checked; the same value a notebook's ``data_split`` takes)."""
    from ..datasets.base import SplitSpec
    return None if text is None else list(SplitSpec.parse(text).sizes.values())


def _run(args: argparse.Namespace) -> int:
    from ..errors import ClipftError, ConfigError
    from .runner import run_all
    profile = "smoke" if args.smoke else "rehearse" if args.rehearse else args.profile
    if not (args.all or args.only or args.compare):
        print("Nothing to do: pass --all, --only METHOD [METHOD ...], or --compare.", file=sys.stderr)
        return 2
    try:
        extra = _params(args.param)
        if args.split is not None:
            if "data_split" in extra:
                raise ConfigError("The split is given twice (--split and -p data_split). Fix: pass it once.")
            extra["data_split"] = _split_option(args.split)
        report = run_all(profile, only=args.only or None, force=args.force, device=args.device, seeds=args.seeds,
                         extra=extra, shots=args.shots, devices=args.devices, shard=args.shard,
                         data=args.data, quick=args.quick, compare_only=args.compare, dry_run=args.dry_run)
    except ClipftError as exc:  # a bad request: one clear message, nothing has run
        print(error_line(exc, "run_all"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside a notebook (planning, the summary): every file is written atomically
        print("[run_all] interrupted while no notebook ran; nothing half-written; re-run to resume")
        return 130
    if report.interrupted:
        return 130
    if profile == "smoke":
        print("[run_all] smoke profile: ToyCLIP on stand-in data checks the plumbing; its numbers are not CLIP's.")
    return 0 if report.ok else 1


def _shots(value: str) -> int | None:
    """``4`` -> 4; ``all`` -> None (every training image)."""
    if value.lower() in ("all", "none"):
        return None
    try:
        k = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"shots must be whole numbers >= 1 or 'all', got {value!r}") from None
    if k < 1:
        raise argparse.ArgumentTypeError(f"shots must be >= 1, got {k}")
    return k


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
    from ..datasets.flowers102 import prefetch
    from ..models import load_clip
    if not args.data_only:
        loaded = load_clip(args.model, args.pretrained)
        print(f"weights ready: {loaded.name} / {loaded.pretrained}")
        print(f"tokenizer ready: {type(loaded.tokenizer).__name__}")  # SigLIP's comes from the Hugging Face hub
    if not args.weights_only:
        print(f"Flowers102 ready in {prefetch(args.data_root)}")
    print("This machine (or a copy of its data/ folder and ~/.cache/huggingface) can now run offline.")
    return 0


def _data_check(args: argparse.Namespace) -> int:
    """``data check PATH`` (a folder of images, or a dataset's files with ``--dataset``) or ``data check NAME`` (a
    registered dataset, as ``run --data NAME`` takes it)."""
    from pathlib import Path
    from ..data import report
    from ..datasets import available
    dataset, root = args.dataset, args.path
    if dataset == "imagefolder" and root in available() and not Path(root).expanduser().is_dir():
        dataset, root = root, None  # a registered name, e.g. `data check synthflowers`
    options = {"seed": args.split_seed, "strict": args.strict} if dataset == "imagefolder" else {}
    print(report(dataset, root, split=_split_option(args.split), **options))
    return 0


SPLIT_HELP = ("how a folder of images is split, per class: counts, fractions or 'rest' for train,val[,test], e.g. "
              "3,1 (test the rest) or 0.5,0.25,0.25 (default: rest,0.2,0.2); the same as -p data_split=[3,1]")

DELEGATED = {
    "params": ("clipft_utils.methods.params", "trainable vs total parameters of every method (no download)"),
    "toyclip": ("clipft_utils.standin.toyclip", "build or evaluate the offline ToyCLIP checkpoint"),
    "synth": ("clipft_utils.standin.folders", "SynthFlowers: sample grid, full-size Flowers102-shaped stand-in folder"),
    "bench": ("clipft_utils.course.bench", "throughput and peak memory per method (real architecture, random weights)"),
    "train": ("clipft_utils.course.train", "train one method's main run outside the notebooks (what torchrun launches)"),
    "predict": ("clipft_utils.predict", "classify image files with a trained run's model folder"),
    "export": ("clipft_utils.export", "export a model folder: one open_clip state dict + head, or ONNX"),
}
"""Sub-commands that own their own argument parsing."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the package CLI: a ClipftError of any sub-command is one clean line (problem and fix), rc 2."""
    from ..errors import ClipftError
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _main(argv)
    except ClipftError as exc:  # a bad request or bad data: the message says what to do; a traceback adds nothing
        print(error_line(exc, argv[0] if argv else "clipft"), file=sys.stderr)
        return 2


def _main(argv: list[str]) -> int:
    if argv and argv[0] in DELEGATED:
        module = importlib.import_module(DELEGATED[argv[0]][0])
        return int(module.main(argv[1:]) or 0)
    parser = argparse.ArgumentParser(prog="python -m clipft_utils", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute the notebooks (what run_all.sh does)")
    run.add_argument("--all", action="store_true", help="run every notebook, 01-07")
    run.add_argument("--only", nargs="+", choices=method_names(), metavar="METHOD", help=f"subset of {method_names()}")
    run.add_argument("--compare", action="store_true", help="only 07_comparison (e.g. after every shard finished)")
    run.add_argument("--profile", default="full", choices=list(PROFILES))
    run.add_argument("--smoke", action="store_true", help="shorthand for --profile smoke (offline stand-in)")
    run.add_argument("--rehearse", action="store_true",
                     help="shorthand for --profile rehearse: the real code and shapes, random weights, generated data")
    run.add_argument("--data", default=None, metavar="PATH",
                     help="a folder of your own images (ROOT/<class>/<images>), or a dataset name")
    run.add_argument("--split", default=None, metavar="TRAIN,VAL[,TEST]", help=SPLIT_HELP)
    run.add_argument("--force", action="store_true", help="recompute even what is up to date")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    run.add_argument("--devices", nargs="+", default=None, metavar="DEVICE",
                     help="run independent notebooks at once, one kernel per device (e.g. cuda:0 cuda:1)")
    run.add_argument("--seeds", nargs="+", type=int, default=[0])
    run.add_argument("--shots", nargs="+", type=_shots, default=None, metavar="K",
                     help="training images per class, a grid with --seeds (e.g. 1 2 4 8 all)")
    run.add_argument("--shard", default=None, metavar="I/N", help="run only shard I of N of the grid (cluster arrays)")
    run.add_argument("--quick", action="store_true", help="every training 1 epoch, 5 test images per class, "
                                                          "smallest sweeps")
    run.add_argument("--dry-run", action="store_true",
                     help="check everything and print the plan: what would run (and why), what is up to date; run nothing")
    run.add_argument("-p", "--param", action="append", metavar="NAME=VALUE",
                     help="notebook parameter (repeatable), e.g. -p epochs=1 -p test_per_class=5; a METHOD. prefix "
                          "scopes it to that method's notebook and also reaches its config: -p lora.ranks=[1,2] "
                          "-p lora.rank=4 -p lora.lr=1e-3")
    run.set_defaults(func=_run)

    pre = sub.add_parser("prefetch", help="download weights and Flowers102 once, for offline classrooms")
    pre.add_argument("--model", default="ViT-B-32")
    pre.add_argument("--pretrained", default="openai")
    pre.add_argument("--data-root", default=None)
    pre.add_argument("--weights-only", action="store_true")
    pre.add_argument("--data-only", action="store_true")
    pre.set_defaults(func=_prefetch)

    data = sub.add_parser("data", help="what the course sees of a dataset (before any work)")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    check = data_sub.add_parser("check", help="classes, images per class and split, skipped files, prompts")
    check.add_argument("path", help="a folder of images (ROOT with one sub-folder per class), a registered dataset's "
                                    "name (e.g. synthflowers), or with --dataset the folder of that dataset's files")
    check.add_argument("--dataset", default="imagefolder", help="dataset name (default: imagefolder)")
    check.add_argument("--split", default=None, metavar="TRAIN,VAL[,TEST]", help=SPLIT_HELP)
    check.add_argument("--split-seed", type=int, default=0, help="seed of the train/val/test split (imagefolder)")
    check.add_argument("--strict", action="store_true", help="fail on unreadable files instead of skipping them")
    check.set_defaults(func=_data_check)

    for name, (_, text) in DELEGATED.items():
        sub.add_parser(name, help=text, add_help=False)

    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
