"""``python -m clipft_utils export MODEL --format open_clip|onnx --out PATH``: a model folder as files other tools load.

- ``open_clip``: one open_clip state dict (``open_clip_model.safetensors``: LoRA merged into its weights, BitFit's
  biases and a fine-tuned tower in place, the text tower as the base had it) that
  ``open_clip.create_model_and_transforms(NAME, pretrained=PATH)`` loads, plus the head as ``classifier.safetensors``
  (``logits = weight @ normalize(encode_image(x)) + bias``) and ``export.json`` saying NAME, the classes and the
  preprocessing. Prefix-tuning cannot be merged into open_clip's weights (its tokens are extra inputs of every
  forward pass), nor Tip-Adapter's cache into a linear head: each says so and points to ``--format onnx``.
- ``onnx``: one graph, normalised image tensor [B, 3, S, S] -> logits [B, C], for every method (the folded prefix
  is part of the graph), checked at export time with onnxruntime against torch on a few images (the max abs
  difference is printed; fp32 must agree within 1e-4). Needs the optional extra: ``pip install -e .[export]``.

Both verify what they wrote before they return, and print the check.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .errors import ConfigError
from .paths import atomic_path, atomic_write_text

ONNX_TOLERANCE = 1e-4
CHECK_IMAGES = 4
OPEN_CLIP_FILE = "open_clip_model.safetensors"
HEAD_FILE = "classifier.safetensors"


def _load(model: str | Path, results: str | Path | None):
    from .modelfolder import build_classifier, find_model, load_base, read_model
    saved = read_model(find_model(model, results))
    loaded = load_base(saved)
    return saved, loaded, build_classifier(saved, loaded)


def check_images(saved: Any, n: int = CHECK_IMAGES, seed: int = 0) -> torch.Tensor:
    """``n`` normalised test inputs [n, 3, S, S]: random pixels 0..255 through the course's normalisation."""
    from .loader import normalise
    size = int(saved.manifest["image_size"])
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    return normalise(pixels, saved.manifest["mean"], saved.manifest["std"])


def open_clip_name(loaded: Any) -> str:
    """The open_clip model name whose config builds this model as loaded (OpenAI weights use QuickGELU, which a
    plain ``ViT-B-32`` built from a file does not: their name is ``ViT-B-32-quickgelu``)."""
    import open_clip
    from open_clip.transformer import QuickGELU
    quick = any(isinstance(m, QuickGELU) for m in loaded.model.modules())
    cfg = open_clip.get_model_config(loaded.name) or {}
    if quick and not cfg.get("quick_gelu", False):
        name = f"{loaded.name}-quickgelu"
        if name not in open_clip.list_models():
            raise ConfigError(f"{loaded.name} was loaded with QuickGELU activations, but open_clip has no "
                              f"'{name}' config to rebuild it from a file. Fix: export with --format onnx.")
        return name
    return loaded.name


def _head_meta(saved: Any, **extra: Any) -> dict[str, Any]:
    m = saved.manifest
    return {"run": m.get("run"), "method": m["method"], "classes": m["classes"], "image_size": m["image_size"],
            "mean": m["mean"], "std": m["std"], "preprocess": m.get("preprocess"), "base": m["base"],
            "label": m.get("label"), "warnings": m.get("warnings"), **extra}


def export_open_clip(model: str | Path, out: str | Path, results: str | Path | None = None,
                     echo=print) -> dict[str, Any]:
    """Write ``out/open_clip_model.safetensors``, ``out/classifier.safetensors`` and ``out/export.json``; load the
    state dict back with ``open_clip.create_model_and_transforms`` and report the max abs logit difference."""
    import open_clip
    from safetensors.torch import save_file
    from .heads import head_logits, save_head
    from .methods import get
    from .modelfolder import plain
    saved, loaded, clf = _load(model, results)
    if not get(saved.structure).tower_weights:
        raise ConfigError(f"'{saved.folder}' is a {saved.method} model: what it learned is not a change of open_clip's "
                          "weights (prefix-tuning's tokens are extra inputs of every forward pass), so no open_clip "
                          "state dict can hold it. "
                          "Fix: export it with --format onnx (the prefix is part of that graph), or use "
                          "`python -m clipft_utils predict` on it.")
    if type(clf.head) is not nn.Linear:
        raise ConfigError(f"'{saved.folder}' is a {saved.method} model: its head ({type(clf.head).__name__}) is not "
                          "the linear head that classifier.safetensors holds beside an open_clip state dict. Fix: "
                          "export it with --format onnx (the whole head is part of that graph), or use "
                          "`python -m clipft_utils predict` on it.")
    plain(clf, saved.structure)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in loaded.model.state_dict().items()}
    weights = out / OPEN_CLIP_FILE
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"format": "open_clip state dict", "exported_by": "clipft"})
    name = open_clip_name(loaded)
    head = save_head(out / HEAD_FILE, clf.head.weight, clf.head.bias, **_head_meta(saved, open_clip_name=name))
    x = check_images(saved)
    with torch.inference_mode():
        want = clf(x).float()
        rebuilt, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=str(weights))
        rebuilt.eval()
        got = head_logits(rebuilt.encode_image(x), clf.head.weight, clf.head.bias)
    diff = float((want - got).abs().max())
    info = {"format": "open_clip", "open_clip_name": name, "state_dict": str(weights), "classifier": str(head),
            "check_images": len(x), "max_abs_diff": diff, "method": saved.method, "run": saved.manifest.get("run"),
            "classes": saved.classes, "image_size": saved.manifest["image_size"], "mean": saved.manifest["mean"],
            "std": saved.manifest["std"], "label": saved.label,
            "usage": (f"model, _, preprocess = open_clip.create_model_and_transforms({name!r}, pretrained={str(weights)!r}); "
                      f"head = safetensors.torch.load_file({str(head)!r}); logits = "
                      "F.normalize(model.encode_image(preprocess(img)[None]), dim=-1) @ head['weight'].T + head['bias']")}
    atomic_write_text(out / "export.json", json.dumps(info, indent=1) + "\n")
    echo(f"[export] open_clip: {weights} ({weights.stat().st_size / 2**20:.2f} MiB) + {head.name}; reloaded with "
         f"open_clip.create_model_and_transforms({name!r}, pretrained=...): max |logit difference| {diff:.2e} on "
         f"{len(x)} images")
    if name in _plugin_models():
        echo(f"[export] '{name}' is this course's own architecture: in another process run "
             "`from clipft_utils import plugins; plugins.load()` before open_clip (it registers the config).")
    if diff > ONNX_TOLERANCE * 10:
        raise ConfigError(f"The exported open_clip state dict gives logits up to {diff:.2e} away from the model folder's "
                          f"(on {len(x)} images). Fix: report it; meanwhile use --format onnx or predict.")
    return info


def _plugin_models() -> set[str]:
    from .models import STANDIN_MODELS
    return set(STANDIN_MODELS)


def _need_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as exc:
        raise ConfigError(f"--format onnx needs onnx and onnxruntime ({exc.name} is not installed). Fix: "
                          "pip install -e '.[export]' (the optional extra with the pinned versions).") from None
    return onnxruntime


def export_onnx(model: str | Path, out: str | Path, results: str | Path | None = None, echo=print,
                opset: int = 18) -> dict[str, Any]:
    """Write one ONNX graph (normalised images -> logits), run it with onnxruntime on a few images and compare with
    torch: the max abs difference must stay within 1e-4 (fp32)."""
    ort = _need_onnx()
    import onnx
    saved, loaded, clf = _load(model, results)
    from .modelfolder import plain
    clf = plain(clf, saved.structure).float()
    out = Path(out)
    path = out if out.suffix == ".onnx" else out / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    x = check_images(saved)
    with atomic_path(path) as tmp:
        import warnings
        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)  # MHA's fused inference kernel has no ONNX form
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on tracing say nothing about this graph
            torch.onnx.export(clf, (x,), str(tmp), input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset,
                              dynamo=False)
        torch.backends.mha.set_fastpath_enabled(fastpath)
        graph = onnx.load(str(tmp))
        meta = _head_meta(saved)
        for key, value in meta.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, json.dumps(value)
        onnx.save(graph, str(tmp))
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        with torch.inference_mode():
            want = clf(x).float().numpy()
        got = session.run(["logits"], {"images": x.numpy()})[0]
        diff = float(abs(want - got).max())
        if not diff <= ONNX_TOLERANCE:
            raise ConfigError(f"The ONNX graph's logits differ from torch's by up to {diff:.2e} on {len(x)} images "
                              f"(fp32 must agree within {ONNX_TOLERANCE:g}); nothing was written. Fix: report it "
                              f"(method {saved.method}, opset {opset}); meanwhile use predict.")
    info = {"format": "onnx", "path": str(path), "opset": opset, "input": "images [B, 3, S, S], normalised",
            "output": "logits [B, C]", "check_images": len(x), "max_abs_diff": diff, "max_abs_logit": float(abs(want).max()),
            "method": saved.method, "run": saved.manifest.get("run"), "classes": saved.classes}
    atomic_write_text(path.with_suffix(".json"), json.dumps({**info, **meta}, indent=1) + "\n")
    echo(f"[export] onnx: {path} ({path.stat().st_size / 2**20:.2f} MiB, opset {opset}); onnxruntime vs torch on "
         f"{len(x)} images: max |logit difference| {diff:.2e} (logits up to {info['max_abs_logit']:.1f}; tolerance "
         f"{ONNX_TOLERANCE:g})")
    return info


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clipft_utils export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a model folder (<results folder>/models/<run>) or a run name, e.g. lora_seed0")
    p.add_argument("--format", required=True, choices=("open_clip", "onnx"), help="what to write")
    p.add_argument("--out", required=True, metavar="PATH",
                   help="a folder (open_clip; onnx writes model.onnx in it) or a .onnx file")
    p.add_argument("--results", default=None, metavar="FOLDER",
                   help="the results folder a run name is looked up in (default: every folder of results/)")
    args = p.parse_args(argv)
    if args.format == "onnx":
        _need_onnx()  # before any work
        export_onnx(args.model, args.out, args.results)
    else:
        export_open_clip(args.model, args.out, args.results)
    label = json.loads((Path(args.out) / "export.json").read_text()).get("label") if args.format == "open_clip" else None
    if label:
        print(f"[export] {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
