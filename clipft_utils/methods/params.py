"""Trainable vs total parameters of every method on the real architecture (random weights, no download).

``python -m clipft_utils.methods.params --model ViT-B-32 [--json] [--variants]``
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from typing import Any, Sequence

import torch
from torch import nn

from ..models import CLIPClassifier
from .. import towers
from . import apply_method, get, make_config, registry, trainable_parameters
from .base import reason_not_applicable

def variants() -> list[tuple[str, dict[str, Any], str]]:
    """Non-default configs shown with ``variants=True``: (method, overrides, description), from each method's
    ``variants`` shown in the parameter table."""
    return [(m.name, dict(v.config), v.note) for m in registry() for v in m.variants.values()
            if "params" in v.shown_in]


def build_clip(model_name: str = "ViT-B-32") -> nn.Module:
    """The open_clip architecture with random weights (any name ``load_clip`` takes; no tokenizer, no download)."""
    from ..models import load_clip
    return load_clip(model_name, "random").model


def _classifier(clip: nn.Module, num_classes: int, method: str) -> nn.Module:
    """A fresh classifier for ``method`` over a copy of the tower(s): a ``CLIPClassifier``, or for a text-side method a
    text-side classifier without prompts (what it adds is counted; no tokenizer needed)."""
    if get(method).text_apply is not None:
        from ..textside import counting_classifier
        return counting_classifier(clip, num_classes)
    head = torch.nn.functional.normalize(torch.randn(num_classes, towers.facts(clip.visual).output_dim), dim=-1)
    return CLIPClassifier(copy.deepcopy(clip.visual), head)


def _row(clip: nn.Module, num_classes: int, method: str, overrides: dict[str, Any], note: str,
         arch: Any = None) -> dict[str, Any]:
    """Apply ``method`` to a fresh classifier over a copy of the tower and count its parameters; a method that does
    not apply to the architecture is a row saying why."""
    spec, cfg = get(method), make_config(method, **overrides)
    arch = arch or towers.architecture(clip)
    reason = reason_not_applicable(spec, arch, cfg)
    if reason:
        return {"method": method, "type": spec.kind, "config": note or spec.summary(cfg), "applicable": False,
                "reason": reason}
    if spec.apply is None and spec.trains and spec.text_apply is None:  # a cache of the training images (Tip-Adapter)
        return {"method": method, "type": spec.kind, "config": note or spec.summary(cfg), "applicable": True,
                "side": "image", "trainable": None, "counted": "per run: a cache of C·k keys (k shots per class)"}
    # A text-side method is counted without touching the caller's random state, so that a notebook's later random
    # draws do not depend on this table.
    with torch.random.fork_rng(devices=[], enabled=spec.text_apply is not None):
        clf = _classifier(clip, num_classes, method)
        before = sum(p.numel() for p in clf.parameters())
        groups = spec.text_apply(clf, cfg) if spec.text_apply is not None else apply_method(method, clf, cfg)
    trainable = sum(p.numel() for p in trainable_parameters(groups))
    backbone = sum(p.numel() for g in groups if g["name"] != "head" for p in g["params"])
    total = sum(p.numel() for p in clf.parameters())
    clip_total = sum(p.numel() for p in clip.parameters())
    summary = spec.tower_note(arch, cfg) if spec.tower_note is not None and not note else spec.summary(cfg)
    return {"method": method, "type": spec.kind, "config": note or summary, "applicable": True,
            "side": "text" if spec.text_apply is not None else "image", "trainable": trainable, "trainable_without_head": backbone, "total": total,
            "fraction_pct": 100 * trainable / total, "fraction_without_head_pct": 100 * backbone / total,
            "added": total - before, "clip_total": clip_total, "fraction_of_clip_pct": 100 * trainable / clip_total,
            **deployed_counts(clf, method, clip_total, towers.facts(clip.visual).output_dim)}


def deployed_counts(clf: nn.Module, method: str, clip_total: int, width: int) -> dict[str, Any]:
    """What a model folder of the applied method stores (folded, head included), and its share of the whole CLIP:
    prefix-tuning trains an MLP but deploys only the vectors it makes. ``width``: the image embedding's."""
    from ..costs import deployed_params
    if get(method).text_apply is not None:  # its folder: a head of the class features (C·D + C) + what trains in the
        trained = clf.visual.parameters()    # image tower (CLIP-LoRA's image-side LoRA; nothing for CoOp)
        deployed = clf.num_classes * (width + 1) + sum(p.numel() for p in trained if p.requires_grad)
    else:
        deployed = deployed_params(clf, method, head_only=get(method).trains is False)
    return {"deployed": deployed, "deployed_of_clip_pct": 100 * deployed / clip_total}


def parameter_table(model_name: str = "ViT-B-32", num_classes: int = 102, clip: nn.Module | None = None,
                    variants: bool = False, every: bool = False) -> list[dict[str, Any]]:
    """One row per method (default configs): trainable, total (image tower + head + added) and fractions. ``every``:
    also a row for each method counted elsewhere (per run: Tip-Adapter's cache) or not applicable here (its reason)."""
    clip = build_clip(model_name) if clip is None else clip
    arch = towers.architecture(clip, model_name)
    rows = [_row(clip, num_classes, m.name, {}, "", arch) for m in registry()]
    if variants:
        rows += [_row(clip, num_classes, m, o, note, arch) for m, o, note in globals()["variants"]()]
    return rows if every else [r for r in rows if r.get("trainable") is not None]


def format_table(rows: list[dict[str, Any]]) -> str:
    """Fixed-width text table of ``parameter_table`` rows."""
    head = (f"{'method':<14} {'config':<28} {'trainable':>11} {'w/o head':>11} {'total':>11} {'%':>8} "
            f"{'added':>10} {'% of CLIP':>9} {'deployed':>10}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if not r.get("applicable", True) or r.get("trainable") is None:
            lines.append(f"{r['method']:<14} {r['config'][:28]:<28} " + (f"not applicable: {r['reason']}" if
                         not r.get("applicable", True) else f"counted {r['counted']}"))
            continue
        lines.append(f"{r['method']:<14} {r['config'][:28]:<28} {r['trainable']:>11,} "
                     f"{r['trainable_without_head']:>11,} {r['total']:>11,} {r['fraction_pct']:>8.4f} "
                     f"{r['added']:>10,} {r['fraction_of_clip_pct']:>9.4f} {r['deployed']:>10,}")
    lines.append("trainable includes the head (and prefix-tuning's MLP); total = image tower + head + what the method "
                 "adds; % = trainable / total;")
    counted = [r for r in rows if r.get("trainable") is not None]
    lines.append(f"% of CLIP = trainable / {counted[0]['clip_total']:,} (the whole CLIP, text tower included: the "
                 "denominator of the course's trainable_percent); text-side methods count both towers in total; "
                 "deployed = what a model folder stores (folded, head included)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: print the parameter table (``--json`` for machine-readable rows)."""
    parser = argparse.ArgumentParser(prog="clipft_utils params", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32", help="open_clip architecture name (random weights)")
    parser.add_argument("--num-classes", type=int, default=102)
    parser.add_argument("--variants", action="store_true", help="also show deep prefix and wider LoRA targets")
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    args = parser.parse_args(argv)
    rows = parameter_table(args.model, args.num_classes, variants=args.variants, every=True)
    print(json.dumps(rows, indent=2) if args.json else f"{args.model} (random weights)\n{format_table(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
