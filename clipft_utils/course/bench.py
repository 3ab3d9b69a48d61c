"""What every method costs on a real architecture with random weights (no download needed): the measures of the
course's result rows (``clipft_utils.costs``), so that the ViT-B-32 figures sit beside the stand-in's.

    python -m clipft_utils bench --model ViT-B-32 --batch-size 8 --steps 20        # a few minutes on a CPU
    python -m clipft_utils bench --model ViT-B-32 --device cuda --batch-size 64 --steps 50
    python -m clipft_utils bench --flowers-root /tmp/standin   # also time decode + cache + feature extraction

Per method: FLOPs of one training step and of one inference image of its deployed model (counted: the same on every
machine), training memory by accounting (parameters + gradients + AdamW state + saved activations; on a GPU the
CUDA allocator's measured peak beside it), the median step time over the timed steps with its interquartile range,
and that median as a multiple of one frozen forward pass of the image tower over the same batch ("x fwd", timed right
before the row). The text-side methods (CoOp, CLIP-LoRA) run the text tower on all 102 class prompts at every step.
The training loader alone is timed against the steps: on a GPU it must be far faster than the fastest step.

Accuracy is meaningless here (random weights, random pixels); the counts are not: they depend only on the
architecture, the method and the batch (the times also on the device and its load).
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..engine.timing import step_stats
from ..methods import make_config
from ..memory import PeakMemory
from ..evaluate import autocast_context, resolve_precision
from ..models import CLIPClassifier, count_parameters, load_clip, resolve_device
from ..towers import facts

def variants() -> dict[str, tuple[str, dict[str, Any]]]:
    """Name -> (method, config overrides): every method that `bench` times, then its variants timed by bench."""
    from ..methods import get
    from .sections import sections
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for s in sections():
        m = get(s.method)
        if s.bench == "none":
            continue
        out[m.name] = (m.name, {})
        out |= {name: (m.name, dict(v.config)) for name, v in m.variants.items() if "bench" in v.shown_in}
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, steps: int, warmup: int, device: torch.device) -> tuple[list[float], float | None]:
    """(seconds of each of ``steps`` calls of ``fn`` after ``warmup`` untimed ones, the CUDA allocator's peak MB on a
    GPU, else None)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    with PeakMemory(device) as mem:
        for _ in range(steps):
            start = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - start)
    return times, mem.peak_mb if device.type == "cuda" else None


def flowers_prompts(num_classes: int) -> tuple[list[str], list[str]]:
    """(class names, [template]): Flowers102's names and CLIP's flower template, so that a text-side step runs the
    text tower on prompts of the real lengths (names repeat when ``num_classes`` > 102)."""
    from importlib import resources
    assets = resources.files("clipft_utils") / "assets"
    names = [n.strip() for n in (assets / "flowers102_classnames.txt").read_text().splitlines() if n.strip()]
    template = next(t.strip() for t in (assets / "flowers102_templates.txt").read_text().splitlines() if t.strip())
    return [names[i % len(names)] for i in range(num_classes)], [template]


def _image_size(visual) -> int:
    return visual.image_size[0] if isinstance(visual.image_size, (tuple, list)) else visual.image_size


def forward_seconds(loaded, device: torch.device, batch_size: int, steps: int, warmup: int,
                    precision: str) -> float:
    """Seconds of one frozen forward pass of the image tower over a batch: the unit every row's step is given in."""
    visual = loaded.model.visual
    size = _image_size(visual)
    images = torch.randn(batch_size, 3, size, size, device=device)
    prec = resolve_precision(precision, device)
    was = visual.training
    visual.eval()

    def step():
        with torch.inference_mode(), autocast_context(prec, device):
            visual(images)
    try:
        return statistics.median(_timed(step, steps, warmup, device)[0])
    finally:
        visual.train(was)


def bench_variant(name: str, loaded, num_classes: int, device: torch.device, batch_size: int, steps: int,
                  warmup: int, precision: str) -> dict[str, Any]:
    """Training-step throughput and peak memory of one method variant (inference only for the probe). A text-side
    method (CoOp, CLIP-LoRA) trains a ``TextSideClassifier``: its step runs the text tower on every class prompt."""
    from ..methods import apply_method, get
    from .sections import section
    method, overrides = variants()[name]
    spec = get(method)
    inference = section(method).bench == "inference"
    cfg = make_config(method, **overrides)
    visual = loaded.model.visual
    if spec.text_apply is not None:
        from ..textside import build
        clf = build(loaded, *flowers_prompts(num_classes), device)
        groups = spec.text_apply(clf, cfg)
    else:
        head = 100 * F.normalize(torch.randn(num_classes, facts(visual).output_dim), dim=-1)
        clf = CLIPClassifier(copy.deepcopy(visual), head).to(device)
        groups = apply_method(method, clf, cfg)
    trainable, total = count_parameters(clf)
    size = _image_size(visual)
    images = torch.randn(batch_size, 3, size, size, device=device)
    labels = torch.randint(0, num_classes, (batch_size,), device=device)
    prec = resolve_precision(precision, device)
    if inference:  # a feature-based method: its cost is one frozen forward per image (feature extraction)
        clf.eval()

        def step():
            with torch.inference_mode(), autocast_context(prec, device):
                clf.visual(images)
    else:
        clf.train()
        opt = torch.optim.AdamW([{"params": g["params"]} for g in groups], lr=1e-5)
        scaler = torch.amp.GradScaler(device.type, enabled=prec == "fp16")

        def step():
            with autocast_context(prec, device):
                loss = F.cross_entropy(clf(images), labels)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times, peak = _timed(step, steps, warmup, device)
    seconds = statistics.median(times)
    ckpt = checkpoint_mb(clf, opt) if not inference else None
    return {"checkpoint_mb": ckpt, "variant": name, "trainable": trainable, "total": total,
            "side": "text" if spec.text_apply is not None else "image",
            "trainable_percent": 100 * trainable / sum(p.numel() for p in loaded.model.parameters()),
            "images_per_second": batch_size / seconds, "cuda_peak_mb": peak,
            **step_stats(times, warmup=0, minimum=min(steps, 20)),
            **counted_costs(method, cfg, clf, groups, images, labels, loaded, prec, inference),
            "precision": prec, "batch_size": batch_size, "kind": "inference" if inference else "train"}


def applicable_variants(names: Sequence[str], loaded) -> tuple[list[str], dict[str, str]]:
    """(the variants that apply to the loaded model, {variant: why not} for the others). A text-side variant needs the
    tokenizer: when it cannot load (offline, SigLIP's from the hub), that is an ``OfflineError`` now, before any work."""
    from ..methods import get
    from ..methods.base import reason_not_applicable
    arch, todo, skipped = loaded.architecture, [], {}
    for name in names:
        method, overrides = variants()[name]
        reason = reason_not_applicable(get(method), arch, make_config(method, **overrides))
        if reason:
            skipped[name] = reason
        else:
            todo.append(name)
    if any(get(variants()[v][0]).text_apply is not None for v in todo):
        loaded.tokenizer  # noqa: B018 - loads it, or says how to prefetch it
    return todo, skipped


def counted_costs(method: str, cfg: Any, clf: torch.nn.Module, groups: list[dict], images: torch.Tensor,
                  labels: torch.Tensor, loaded: Any, precision: str, inference: bool) -> dict[str, Any]:
    """The counted measures of a row (``clipft_utils.costs``): FLOPs of a training step and training memory by
    accounting (a feature-based method: its frozen forward, no training memory), and the inference FLOPs per image
    and the numbers of the model its folder would deploy."""
    from .. import costs
    from ..methods import trainable_parameters
    from ..modelfolder import deployable
    visual = loaded.model.visual
    if inference:  # the linear probe's cost per image is one frozen forward (its fit on features is negligible)
        flops = costs.flops_per_image(visual, images[:2])
        return {"flops_per_step": None, "gflops_per_image": flops / 1e9, "train_memory_mb": None,
                "deployed_params": None, "memory_parts": None}
    counted = costs.training_costs(clf, trainable_parameters(groups), images, labels, precision)
    model, head_only = deployable(method, clf)
    deployed = costs.deployed_model(model, method, cfg, visual, head_only)
    return {**counted, "gflops_per_image": costs.flops_per_image(deployed, images[:2]) / 1e9,
            "deployed_params": costs.deployed_params(model, method, head_only)}


FORWARD_REPEATS = 5
"""Frozen forward passes timed before each row (their median is the row's "x fwd" unit; one more, untimed, first)."""

HEADER = (f"{'variant':<22} {'kind':<9} {'trainable %':>11} {'GFLOPs/step':>11} {'GFLOPs/img':>10} "
          f"{'memory MB':>9} {'ms/step':>8} {'IQR ms':>7} {'x fwd':>6}  checkpoint MB")


def format_row(row: dict[str, Any]) -> str:
    """One printed row of ``bench``."""
    num = lambda v, f: "—".rjust(int(f.split(".")[0] or 0)) if v is None else format(v, f)  # noqa: E731
    step = None if row.get("flops_per_step") is None else row["flops_per_step"] / 1e9
    return (f"{row['variant']:<22} {row['kind']:<9} {row['trainable_percent']:11.4f} {num(step, '11.1f')} "
            f"{num(row['gflops_per_image'], '10.3f')} {num(row.get('train_memory_mb'), '9.1f')} "
            f"{num(row.get('step_ms'), '8.1f')} {num(row.get('step_ms_spread'), '7.1f')} "
            f"{num(row.get('step_over_forward'), '6.2f')}  {num(row.get('checkpoint_mb'), '.1f')}"
            + (f"  CUDA peak {row['cuda_peak_mb']:.0f} MB" if row.get("cuda_peak_mb") else "") + f"  ({row['precision']})")


def checkpoint_mb(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> float:
    """MB of the engine's resume point after a step: the trainable parameters and AdamW's state (one rolling
    file; the best epoch's snapshot adds the trainable parameters once more while it differs from the current)."""
    import io
    buf = io.BytesIO()
    torch.save({"trainable": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
                "optimizer": optimizer.state_dict()}, buf)
    return buf.tell() / 2**20


def bench_loader(size: int, device: torch.device, batch_size: int, n: int = 512, seed: int = 0) -> dict[str, Any]:
    """Images per second of the training loader alone (gather from the uint8 cache, pin, copy, augment and normalise
    on ``device``), over ``n`` random cached images of ``size`` px."""
    import numpy as np
    from types import SimpleNamespace
    from ..loader import CachedLoader
    images = np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    split = SimpleNamespace(images=images, labels=np.arange(n) % 102, indices=None, image_size=size,
                            mean=(0.48, 0.46, 0.41), std=(0.27, 0.26, 0.28))
    loader = CachedLoader(split, batch_size, shuffle=True, augment=True, seed=seed, device=device)
    for _ in loader:  # warm-up pass
        pass
    _sync(device)
    start = time.perf_counter()
    for epoch in range(2):
        loader.set_epoch(epoch + 1)
        for batch in loader:
            batch.images.sum()  # make sure the work is done
    _sync(device)
    seconds = time.perf_counter() - start
    return {"images_per_second": 2 * n / seconds, "batch_size": batch_size, "image_size": size, "device": str(device)}


def bench_pipeline(loaded, root: str, device: torch.device, batch_size: int) -> dict[str, Any]:
    """Decode + cache + feature extraction of a Flowers102-shaped folder (the real pipeline, timed)."""
    from ..data import get_split
    from ..features import extract_features
    out: dict[str, Any] = {}
    for split in ("train", "val", "test"):
        start = time.perf_counter()
        ds = get_split("flowers102", split, loaded.image_size, loaded.mean, loaded.std, root=root, verify=False)
        out[f"decode_{split}_s"] = time.perf_counter() - start
        feats = extract_features(loaded.model.visual, ds, model_name=loaded.name, weights_id="bench-random",
                                 batch_size=batch_size, device=device, cache=False, progress=False)
        out[f"features_{split}_s"] = feats.seconds
        out[f"features_{split}_img_per_s"] = len(ds) / feats.seconds
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: print (and optionally save) a table of throughput and memory per method."""
    p = argparse.ArgumentParser(prog="python -m clipft_utils bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--precision", default="auto")
    p.add_argument("--variants", nargs="+", default=list(variants()), choices=list(variants()))
    p.add_argument("--flowers-root", default=None, help="folder containing flowers-102/ to time the data pipeline")
    p.add_argument("--json", default=None, help="write the rows to this JSON file")
    p.add_argument("--no-loader", action="store_true", help="skip timing the training loader against the steps")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    loaded = load_clip(args.model, "random", device=device)
    todo, skipped = applicable_variants(args.variants, loaded)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{args.model} (random weights) on {name}, batch {args.batch_size}, {args.steps} timed steps")
    for v, reason in skipped.items():
        print(f"{v:<22} not applicable: {reason}")
    print("x fwd: a row's step time over one frozen forward pass of the image tower on the same batch, timed just "
          "before it (the machine's load changes between rows; the ratio next to each other does not drift)")
    print(HEADER)
    rows = []
    for v in todo:
        forward = forward_seconds(loaded, device, args.batch_size, FORWARD_REPEATS, 1, args.precision)
        row = bench_variant(v, loaded, 102, device, args.batch_size, args.steps, args.warmup, args.precision)
        row["forward_ms"] = 1000 * forward
        row["step_over_forward"] = row["step_ms"] / (1000 * forward) if row["step_ms"] else None
        rows.append(row)
        print(format_row(row))
    print(f"trainable %: of the whole {args.model} ({sum(p.numel() for p in loaded.model.parameters()):,} "
          "parameters, both towers); memory: accounted (parameters + gradients + AdamW + saved activations); FLOPs "
          "counted by torch.utils.flop_counter; ms: median and interquartile range of the timed steps")
    report: dict[str, Any] = {"model": args.model, "device": name, "rows": rows, "pretrained": "random",
                              "not_applicable": skipped}
    if not args.no_loader:
        size = loaded.image_size
        report["loader"] = bench_loader(size, device, args.batch_size)
        fastest = max((r["images_per_second"] for r in rows if r["kind"] == "train"), default=float("nan"))
        report["loader"]["ratio_to_fastest_step"] = report["loader"]["images_per_second"] / fastest
        print(f"training loader alone: {report['loader']['images_per_second']:.0f} img/s at {size} px, "
              f"{report['loader']['ratio_to_fastest_step']:.1f}x the fastest training step measured above")
    if args.flowers_root:
        report["pipeline"] = bench_pipeline(loaded, args.flowers_root, device, 256)
        print(json.dumps(report["pipeline"], indent=1))
    if args.json:
        from ..paths import atomic_write_text
        atomic_write_text(args.json, json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
