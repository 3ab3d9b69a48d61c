"""Classify images with this folder's model: ``python classify.py IMAGE_OR_FOLDER... [--top 5] [--json]``.

``python -m clipft_utils export MODEL --format open_clip`` writes this file as ``classify.py`` beside the model, with
``pixels.py``; it needs open_clip, torch, safetensors and Pillow, not clipft. It classifies as
``python -m clipft_utils predict`` does: EXIF orientation applied (open_clip's transform does not), 16-bit, 32-bit
and float images scaled to 8 bits (``pixels.to_8bit``; PIL's ``convert("RGB")`` would turn them white), then
open_clip's own preprocessing and image tower from ``open_clip_config.json``, and the head in
``classifier.safetensors``: ``logits = weight @ normalize(encode_image(x)) + bias``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

try:
    from .pixels import to_8bit          # inside the clipft_utils package
except ImportError:
    from pixels import to_8bit           # beside an export: pixels.py is the file next to this one

HERE = Path(__file__).resolve().parent


def load(folder: str | Path = HERE, device: str = "cpu") -> tuple[Any, Any, dict[str, Any], dict[str, Any]]:
    """(open_clip model, its preprocess transform, the head {weight, bias}, the config) of an export folder."""
    import open_clip
    from safetensors.torch import load_file
    folder = Path(folder)
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}", device=device)
    config = json.loads((folder / "open_clip_config.json").read_text(encoding="utf-8"))
    head = load_file(str(folder / config["classifier"]["file"]), device=device)
    return model.eval(), preprocess, head, config


def image_input(path: str | Path, preprocess: Any) -> Any:
    """One image file as the model's input [3, S, S]: EXIF orientation, 8 bits, then open_clip's preprocess."""
    from PIL import Image, ImageOps
    with Image.open(path) as im:
        im.load()
        return preprocess(to_8bit(ImageOps.exif_transpose(im)))


def logits(model: Any, images: Any, head: dict[str, Any]) -> Any:
    """Logits [B, C] of preprocessed images [B, 3, S, S]: ``weight @ normalize(encode_image(x)) + bias``."""
    import torch
    with torch.inference_mode():
        features = torch.nn.functional.normalize(model.encode_image(images).float(), dim=-1)
        return features @ head["weight"].float().T + head["bias"].float()


def image_files(inputs: Sequence[str]) -> list[Path]:
    """Files as given; folders walked (sorted) for every extension PIL opens, hidden entries left out."""
    from PIL import Image
    exts = tuple(Image.registered_extensions())
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in exts
                            and not any(part.startswith(".") for part in p.relative_to(item).parts))
        else:
            files.append(item)
    return files


def main(argv: Sequence[str] | None = None) -> int:
    import torch
    p = argparse.ArgumentParser(prog="python classify.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--top", type=int, default=5, help="classes shown per image (default 5)")
    p.add_argument("--json", action="store_true", help='one line per image: {"image", "top": [{"class", "prob"}]}')
    p.add_argument("--model", default=str(HERE), help="the export folder (default: the one holding this file)")
    args = p.parse_args(argv)
    model, preprocess, head, config = load(args.model)
    classes = config["classes"]
    for path in image_files(args.images):
        out = logits(model, torch.stack([image_input(path, preprocess)]), head)[0]
        prob, index = out.softmax(-1).topk(min(max(args.top, 1), len(classes)))
        top = [{"class": classes[i], "prob": round(float(q), 6)} for q, i in zip(prob, index.tolist())]
        if args.json:
            print(json.dumps({"image": str(path), "top": top}))
        else:
            print(str(path), *(f"  {t['class']}: {100 * t['prob']:.2f} %" for t in top), sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
