"""``python -m clipft_utils train METHOD``: one method's main run, outside the notebooks — what ``torchrun`` launches.

    python -m clipft_utils train lora --smoke --epochs 5                       # one process
    torchrun --nproc_per_node 4 -m clipft_utils train full_finetune --device cuda   # 4 GPUs, one machine
    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --rdzv_backend c10d \\
             --rdzv_endpoint HOST:29500 -m clipft_utils train full_finetune --device cuda   # 2 machines

It builds the same course as the notebooks (``setup``), applies the method, and trains with the one engine:
under torchrun every rank trains its part of each global batch (``--batch-size`` is the global batch), the
gradients are averaged by DistributedDataParallel, and rank 0 evaluates and writes the result, the predictions,
the head and the checkpoints into the results folder, exactly where the method's notebook would.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..config import PROFILES
from ..methods import registry


def _fields(pairs: Sequence[str] | None) -> dict:
    """``NAME=VALUE`` config fields (YAML values)."""
    import yaml
    out = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"-p expects FIELD=VALUE, got {pair!r} (e.g. -p lr=1e-3 -p rank=4).")
        out[name] = yaml.safe_load(value)
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m clipft_utils train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("method", choices=[m.name for m in registry() if m.image_batches and m.apply is not None])
    p.add_argument("--profile", default=None, choices=list(PROFILES), help="default: $CLIPFT_PROFILE or full")
    p.add_argument("--smoke", action="store_true", help="the offline stand-in")
    p.add_argument("--data", default=None, help="a dataset name or a folder of images")
    p.add_argument("--data-root", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shots", type=int, default=None, help="training images per class")
    p.add_argument("--val-shots", type=int, default=None)
    p.add_argument("--test-per-class", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="the GLOBAL batch (split over the ranks)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (each rank takes its LOCAL_RANK's GPU)")
    p.add_argument("--results-dir", default=None)
    p.add_argument("--variant", default=None, help="name the run <method>-<variant> (default: the main row)")
    p.add_argument("-p", "--param", action="append", metavar="FIELD=VALUE", help="a field of the method's config")
    p.add_argument("--resume", default="auto", choices=["auto", "yes", "no"],
                   help="auto: resume a matching checkpoint, start over (and say so) if it belongs to another run")
    p.add_argument("--stop-after-epochs", type=int, default=None, help="pause after this many epochs (checkpointed)")
    p.add_argument("--save-trainable", default=None, metavar="PATH",
                   help="also write the trained parameters (rank 0) to PATH, e.g. to compare runs")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Train one method (on every rank under torchrun); rank 0 prints and writes."""
    import torch
    from .. import distributed
    from ..methods import make_config
    from .core import setup, train_method
    from ..errors import ClipftError
    from ..methods import apply_method, get
    args = parser().parse_args(argv)
    try:
        device = distributed.init(args.device)
        profile = "smoke" if args.smoke else args.profile
        course = setup(profile, dataset=args.data, data_root=args.data_root, seed=args.seed, device=str(device),
                       batch_size=args.batch_size, shots=args.shots, val_shots=args.val_shots,
                       results_dir=args.results_dir, test_per_class=args.test_per_class)
        fields = _fields(args.param)
        unknown = sorted(set(fields) - get(args.method).config_fields())
        if unknown:
            raise SystemExit(f"{args.method} has no config field(s) {unknown}.")
        cfg = make_config(args.method, course.profile, epochs=args.epochs, batch_size=args.batch_size, **fields)
        clf = course.classifier()
        groups = apply_method(args.method, clf, cfg)
        resume = {"auto": "auto", "yes": True, "no": False}[args.resume]
        out = train_method(course, args.method, cfg, clf, groups, variant=args.variant, progress=False,
                           resume=resume, stop_after_epochs=args.stop_after_epochs)
    except ClipftError as exc:
        print(f"[train] {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if distributed.is_writer():
        world = distributed.world()
        if not out.train.completed:
            print(f"[train] paused after epoch {out.train.epochs_run} of {cfg.epochs} ({world} process(es)); "
                  "run the same command again to resume")
        else:
            print(f"[train] {args.method}: test top-1 {out.test.top1:.4f}, val top-1 {out.train.best_val_acc:.4f}, "
                  f"best epoch {out.train.best_epoch} of {out.train.epochs_run}, {world} process(es), "
                  f"{out.train.images_per_second:.0f} images/s, wrote {out.path}")
        if args.save_trainable:
            torch.save({n: p.detach().cpu() for n, p in clf.named_parameters() if p.requires_grad}, args.save_trainable)
    distributed.barrier()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
