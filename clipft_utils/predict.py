"""``python -m clipft_utils predict MODEL IMAGE_OR_FOLDER... [--top K] [--json] [--device ...]``: classify image files
with a trained run's model folder, outside the notebooks.

MODEL is a model folder (``<results folder>/models/<run>``) or a run name inside a results folder. The base weights
load through the course's ``load_clip`` (offline, a missing download is the usual clear error), the folder's tensors
go on top (``modelfolder``), and every image is preprocessed exactly as the course decodes its test images: EXIF
orientation, 16-bit / 32-bit / float images scaled to 8 bits (``pixels.to_8bit``), the shorter side resized to the
model's size (bicubic), a centre crop, RGB, ``/255`` and the model's normalisation. An unreadable file, and an input
that holds no image (a missing path, an empty folder), is named on stderr and skipped; the others go on. Exit status:
0 when at least one image was classified, 1 when images were found but none could be read, 2 when no input holds an
image (refused before the model loads, each input named with why).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .errors import ConfigError, DatasetError


def find_images(inputs: Sequence[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """The image files named by ``inputs`` (files as given; folders walked, sorted, for every extension PIL opens),
    and (input, why) for each input that holds no image (a missing path, a folder without images)."""
    from .datasets.base import image_extensions
    exts = image_extensions()
    files: list[Path] = []
    empty: list[tuple[str, str]] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(exts)
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            files += found
            if not found:
                empty.append((str(path), f"the folder holds no images (looked for {', '.join(exts[:8])}, ... in it "
                                         "and its sub-folders)"))
        else:
            empty.append((str(path), "it does not exist"))
    return files, empty


def list_images(inputs: Sequence[str | Path], echo=None) -> list[Path]:
    """The image files named by ``inputs`` (``find_images``). An input without images is named through ``echo``
    (default: stderr) and skipped; when no input holds an image, a DatasetError names each input and why, before any
    work."""
    if not inputs:
        raise ConfigError("No images given. Fix: pass at least one image file or folder of images.")
    files, empty = find_images(inputs)
    if not files:
        why = "; ".join(f"'{item}': {reason}" for item, reason in empty)
        raise DatasetError(f"Nothing to classify: {why}. Fix: pass image files, or folders that hold images.")
    for item, reason in empty:
        (echo or _stderr)(f"[predict] skipped the input '{item}': {reason}")
    return files


def _stderr(text: str) -> None:
    print(text, file=sys.stderr)


def read_image(path: Path, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: the course's decoding (``datasets.base``: EXIF, 8 bits, bicubic resize, centre crop,
    RGB)."""
    from .datasets.base import eval_geometry, open_image
    return eval_geometry(size)(open_image(path))


@dataclass
class Prediction:
    """One image's top-k classes and probabilities (softmax of the logits), and its logits."""

    image: str
    top: list[tuple[str, float]]
    logits: np.ndarray = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image, "top": [{"class": c, "prob": round(p, 6)} for c, p in self.top]}


class Predictor:
    """A model folder ready to classify files: ``Predictor.load(model)(paths)``."""

    def __init__(self, clf: torch.nn.Module, saved: Any, device: torch.device, precision: str = "auto"):
        from .evaluate import resolve_precision
        self.clf, self.saved, self.device = clf, saved, device
        self.precision = resolve_precision(precision, device)
        m = saved.manifest
        self.size, self.mean, self.std = int(m["image_size"]), tuple(m["mean"]), tuple(m["std"])
        self.classes = saved.classes
        self.failed: list[tuple[str, str]] = []
        self.forward_seconds = 0.0

    @classmethod
    def load(cls, model: str | Path, device: str = "auto", results: str | Path | None = None,
             precision: str = "auto") -> "Predictor":
        from .modelfolder import load_model, plain
        from .models import resolve_device
        dev = resolve_device(device)
        clf, saved, _ = load_model(model, device=dev, results=results)
        return cls(plain(clf, saved.structure), saved, dev, precision)  # LoRA merged: the stock open_clip forward, no extra matmuls

    def logits(self, pixels: np.ndarray) -> torch.Tensor:
        """Logits [B, C] of uint8 images [B, S, S, 3], normalised on the device as the course's loader does."""
        from .evaluate import autocast_context
        from .loader import normalise
        if not pixels.flags.writeable:  # a read-only view of a cache (07's test image): torch wants its own copy
            pixels = pixels.copy()
        x = normalise(torch.from_numpy(pixels).permute(0, 3, 1, 2).to(self.device), self.mean, self.std)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode(), autocast_context(self.precision, self.device):
            out = self.clf(x).float()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.forward_seconds += time.perf_counter() - start
        return out.cpu()

    def predict_pixels(self, pixels: np.ndarray, top: int, names: Sequence[str]) -> list[Prediction]:
        """Top-``top`` predictions of uint8 images [B, S, S, 3] (already decoded and at the model's size)."""
        logits = self.logits(pixels)
        p, i = logits.softmax(dim=1).topk(min(top, len(self.classes)), dim=1)
        return [Prediction(name, [(self.classes[c], float(q)) for c, q in zip(ri, rp)], rl)
                for name, rp, ri, rl in zip(names, p.tolist(), i.tolist(), logits.numpy())]

    def __call__(self, files: Iterable[Path], top: int = 5, batch_size: int = 64) -> Iterable[Prediction]:
        """Predictions, in order, one batch at a time; an unreadable file is noted in ``failed`` and skipped."""
        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise ConfigError(f"--top must be a whole number >= 1, got {top!r}. Fix: e.g. --top 5 (at most "
                              f"{len(self.classes)}, the number of classes).")
        k = min(top, len(self.classes))
        batch: list[tuple[Path, np.ndarray]] = []

        def flush() -> Iterable[Prediction]:
            yield from self.predict_pixels(np.stack([px for _, px in batch]), k, [str(path) for path, _ in batch])
            batch.clear()

        for path in files:
            try:
                batch.append((path, read_image(path, self.size)))
            except Exception as exc:  # noqa: BLE001 - any unreadable file is named and skipped
                self.failed.append((str(path), f"{type(exc).__name__}: {exc}"))
                print(f"[predict] skipped '{path}': cannot read it as an image ({type(exc).__name__}: {exc})",
                      file=sys.stderr)
                continue
            if len(batch) == batch_size:
                yield from flush()
        if batch:
            yield from flush()


# ----------------------------------------------------------------------------- every method on one image (07)
def course_models(course: Any) -> dict[str, Path]:
    """Run name -> model folder of each registered method's main run at this course's point (its shots and seed),
    in course order; methods without a folder there (not run, or none saved: see the result's ``no_model_folder``)
    are left out. Zero-shot is also found under its name without shots (it trains nothing)."""
    from .methods import registry
    from .modelfolder import MANIFEST, model_path
    from .results import run_name
    found: dict[str, Path] = {}
    for spec in registry():
        for name in dict.fromkeys((course.run_name(spec.name), run_name(spec.name, course.seed))):
            folder = model_path(course.results_dir, name)
            if (folder / MANIFEST).exists():
                found[name] = folder
                break
    return found


class ModelSet:
    """Several model folders (a course's runs) that classify the same images side by side. Each base model loads
    once; each folder's tensors go on a copy of its image tower only while that model classifies, so memory holds one
    trained tower at a time whatever the number of folders."""

    def __init__(self, folders: Iterable[str | Path], device: str = "auto"):
        from .modelfolder import load_base, read_model
        from .models import resolve_device
        self.device = resolve_device(device)
        self.saved = [read_model(f) for f in folders]           # damaged folders fail here, before any work
        self.keys = [json.dumps(s.manifest["base"], sort_keys=True) for s in self.saved]
        self.bases: dict[str, Any] = {}
        for key, saved in zip(self.keys, self.saved):
            if key not in self.bases:
                self.bases[key] = load_base(saved)

    @property
    def runs(self) -> list[str]:
        return [s.manifest.get("run") or s.folder.name for s in self.saved]

    def __len__(self) -> int:
        return len(self.saved)

    def predictors(self) -> Iterable[tuple[str, Predictor]]:
        """(run, Predictor), one at a time (the previous one's tower is freed)."""
        import copy
        from types import SimpleNamespace

        from .modelfolder import build_classifier, plain
        for run, saved, key in zip(self.runs, self.saved, self.keys):
            base = self.bases[key]
            tower = SimpleNamespace(model=SimpleNamespace(visual=copy.deepcopy(base.model.visual)))
            clf = build_classifier(saved, tower).to(self.device)   # edits its copy of the tower, never the base
            yield run, Predictor(plain(clf, saved.structure), saved, self.device)

    def top_lists(self, images: Sequence[str | Path | np.ndarray], top: int = 5) -> list[dict[str, list]]:
        """Per image, each model's top-``top`` classes: ``{run: [(class name, probability), ...]}``. An image is a
        file (decoded as the course decodes its test images) or a uint8 [S, S, 3] array already at the models' input
        size (a course's cached test image)."""
        columns: list[dict[str, list]] = [{} for _ in images]
        for run, pred in self.predictors():
            for i, image in enumerate(images):
                if isinstance(image, np.ndarray):
                    if image.shape != (pred.size, pred.size, 3):
                        raise ConfigError(f"The image array has shape {image.shape}; {run} takes "
                                          f"({pred.size}, {pred.size}, 3). Fix: pass the image file instead.")
                    (result,) = pred.predict_pixels(image[None], top, ["(array)"])
                else:
                    result = next(iter(pred([Path(image)], top=top)), None)
                    if result is None:
                        raise DatasetError(f"Cannot read '{image}' as an image ({pred.failed[-1][1]}). Fix: pass a "
                                           "JPEG, PNG or another format PIL opens.")
                columns[i][run] = [(name, float(prob)) for name, prob in result.top]
        return columns

    def side_by_side(self, images: Sequence[str | Path | np.ndarray], top: int = 5) -> list:
        """Per image, a table of each model's top-``top`` classes (:meth:`top_lists`): a column per run, a row per
        rank, cells "class (p %)"."""
        import pandas as pd
        return [pd.DataFrame({run: [f"{name} ({100 * prob:.1f} %)" for name, prob in ranked]
                              for run, ranked in c.items()},
                             index=pd.RangeIndex(1, len(next(iter(c.values()), [])) + 1, name="rank"))
                for c in self.top_lists(images, top)]


def format_prediction(pred: Prediction, width: int = 32) -> str:
    """A readable block: the image, then one line per rank with the class and its probability."""
    lines = [pred.image]
    for rank, (name, prob) in enumerate(pred.top, 1):
        shown = name if len(name) <= width else name[:width - 1] + "…"
        lines.append(f"  {rank:>2}. {shown:<{width}} {100 * prob:6.2f} %")
    return "\n".join(lines)


def _top(value: str) -> int:
    try:
        k = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--top takes a whole number >= 1, got {value!r} (e.g. --top 5)") from None
    if k < 1:
        raise argparse.ArgumentTypeError(f"--top must be >= 1, got {k}: it is how many classes to show per image "
                                         "(e.g. --top 5)")
    return k


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clipft_utils predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a model folder (<results folder>/models/<run>) or a run name, e.g. lora_seed0")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and/or folders of images")
    p.add_argument("--top", type=_top, default=5, help="classes shown per image (default 5)")
    p.add_argument("--json", action="store_true", help='one JSON object per image per line: {"image": PATH, '
                                                        '"top": [{"class": NAME, "prob": P}, ...]}')
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--results", default=None, metavar="FOLDER",
                   help="the results folder a run name is looked up in (default: every folder of results/)")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}. Fix: e.g. --batch-size 64.")
    empty: list[str] = []
    files = list_images(args.images, echo=empty.append)   # if no input holds an image, it fails here, before the model
    for line in empty:
        print(line, file=sys.stderr)
    predictor = Predictor.load(args.model, args.device, args.results)
    label = predictor.saved.label
    print(f"[predict] {predictor.saved.manifest['run']} ({predictor.saved.method}) · {label}", file=sys.stderr)
    n = 0
    for pred in predictor(files, top=args.top, batch_size=args.batch_size):
        n += 1
        print(json.dumps(pred.to_json()) if args.json else format_prediction(pred), flush=args.json)
    skipped = len(predictor.failed)
    print(f"[predict] {n} image(s) classified" + (f", {skipped} unreadable skipped" if skipped else "")
          + (f", {len(empty)} input(s) without images skipped" if empty else "") + f" on {predictor.device}",
          file=sys.stderr)
    return 0 if n else 1


if __name__ == "__main__":
    sys.exit(main())
