"""``python -m clipft_utils export MODEL --format open_clip|onnx --out PATH``: a model folder as files other tools load.

- ``open_clip``: open_clip's own folder layout, the one every open_clip model on the Hugging Face hub has
  (``open_clip_config.json`` with ``model_cfg`` and ``preprocess_cfg``, beside ``open_clip_model.safetensors``: LoRA
  merged into its weights, BitFit's biases and a fine-tuned tower in place, the text tower as the base had it), so
  ``open_clip.create_model_and_transforms("local-dir:" + OUT)`` loads it (uploaded: ``hf-hub:user/repo``), and
  ``create_model_and_transforms(NAME, pretrained=OUT + "/open_clip_model.safetensors")`` still does where NAME is
  registered. The config also holds the ``classes``, the ``templates``, the label and a ``note``; the head is
  ``classifier.safetensors`` (``logits = weight @ normalize(encode_image(x)) + bias``); ``classify.py`` (with
  ``pixels.py``) classifies files as ``predict`` does without this project. Prefix-tuning cannot be merged into
  open_clip's weights (its tokens are extra inputs of every forward pass), nor Tip-Adapter's cache into a linear
  head: each says so and points to ``--format onnx``. A folder holding anything but an earlier export is refused.
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
from .pixels import BIT_DEPTH_NOTE

ONNX_TOLERANCE = 1e-4
CHECK_IMAGES = 4
OPEN_CLIP_FILE = "open_clip_model.safetensors"
"""open_clip's own weights name (HF_SAFE_WEIGHTS_NAME): ``local-dir:``, ``hf-hub:`` and ``pretrained=PATH`` all load it;
it is also the first name ``local-dir:`` looks for, so ``classifier.safetensors`` beside it is never taken instead."""
CONFIG_FILE = "open_clip_config.json"
HEAD_FILE = "classifier.safetensors"
EXPORT_FORMAT = "clipft-open_clip-1"
CLIENT_FILES = {"classify.py": "export_client.py", "pixels.py": "pixels.py"}
HEAD_CONVENTION = "logits = weight @ normalize(encode_image(x)) + bias (normalize: L2 over the feature dimension)"
NOTE = ("open_clip's transform does not apply EXIF orientation: call PIL.ImageOps.exif_transpose(image) first; a "
        "16-bit, 32-bit or float image must be scaled to 8 bits before it (pixels.to_8bit, beside this file), or "
        "PIL's convert('RGB') inside it turns the image white. `python classify.py IMAGE...` does both.")
USAGE = ("model, _, preprocess = open_clip.create_model_and_transforms('local-dir:' + FOLDER); head = "
         "safetensors.torch.load_file(FOLDER + '/classifier.safetensors'); x = preprocess(to_8bit(ImageOps."
         "exif_transpose(Image.open(PATH))))[None]; logits = F.normalize(model.encode_image(x), dim=-1) @ "
         "head['weight'].T + head['bias']")


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


def _refuse_unlinear(saved: Any, clf: nn.Module) -> None:
    """A model that is not open_clip's weights (prefix-tuning's tokens) or whose head is not linear cannot live in
    open_clip's weights + classifier.safetensors: say so."""
    from .methods import get
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


def _is_export(out: Path) -> bool:
    """True for a folder an earlier ``export --format open_clip`` wrote (this layout, or the older export.json)."""
    for name, key, value in ((CONFIG_FILE, "clipft", EXPORT_FORMAT), ("export.json", "format", "open_clip")):
        try:
            found = json.loads((out / name).read_text())[key]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if found == value or isinstance(found, dict) and found.get("format") == value:
            return True
    return False


def _check_out(out: Path) -> None:
    """``out`` is new, empty or an earlier export: a user's own files are never overwritten."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' is a file. Fix: name a new folder for the export.")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries and not _is_export(out):
        raise ConfigError(f"'{out}' already holds files ({', '.join(entries[:5])}{' ...' if len(entries) > 5 else ''}) "
                          "and is not an earlier export; nothing was written. Fix: give --out a new or empty folder.")


def _open_clip_config(saved: Any, name: str, head: torch.Tensor) -> dict[str, Any]:
    """``open_clip_config.json``: what open_clip reads (``model_cfg``, ``preprocess_cfg``) and what a client needs."""
    import open_clip
    m, model_cfg = saved.manifest, open_clip.get_model_config(name)
    if model_cfg is None:
        raise ConfigError(f"open_clip has no config for '{name}' to write into {CONFIG_FILE}; nothing was written. "
                          "Fix: export with --format onnx.")
    return {
        "model_cfg": model_cfg,
        "preprocess_cfg": {"size": m["image_size"], "mean": list(m["mean"]), "std": list(m["std"]),
                           "interpolation": "bicubic", "resize_mode": "shortest"},   # how the course decodes
        "classes": saved.classes,
        "templates": m.get("templates"), "templates_format": "str.format: {} is the class name, {{ }} literal braces",
        "classifier": {"file": HEAD_FILE, "shape": list(head.shape), "logits": HEAD_CONVENTION},
        "label": saved.label, "warnings": m.get("warnings"), "note": NOTE,
        "usage": USAGE,
        "clipft": {"format": EXPORT_FORMAT, "run": m.get("run"), "method": saved.method, "base": m["base"],
                   "open_clip_name": name, "bit_depth": BIT_DEPTH_NOTE},
    }


def _write_client(out: Path) -> None:
    """``classify.py`` and ``pixels.py``: the standalone client (``export_client``), copied verbatim."""
    for target, source in CLIENT_FILES.items():
        atomic_write_text(out / target, (Path(__file__).parent / source).read_text())


def export_open_clip(model: str | Path, out: str | Path, results: str | Path | None = None,
                     echo=print) -> dict[str, Any]:
    """Write open_clip's own folder layout (``open_clip_config.json`` + ``open_clip_model.safetensors``), the head
    (``classifier.safetensors``) and the client (``classify.py``, ``pixels.py``) to ``out``; load the folder back with
    ``open_clip.create_model_and_transforms("local-dir:" + out)`` and report the max abs logit difference."""
    import open_clip
    from safetensors.torch import save_file
    from .heads import head_logits, save_head
    from .modelfolder import plain
    out = Path(out).expanduser()
    _check_out(out)                                   # before the model loads
    saved, loaded, clf = _load(model, results)
    _refuse_unlinear(saved, clf)
    name = open_clip_name(loaded)
    config = _open_clip_config(saved, name, clf.head.weight)
    plain(clf, saved.structure)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in loaded.model.state_dict().items()}
    weights = out / OPEN_CLIP_FILE
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "exported_by": "clipft"})
    head = save_head(out / HEAD_FILE, clf.head.weight, clf.head.bias, **_head_meta(saved, open_clip_name=name))
    atomic_write_text(out / CONFIG_FILE, json.dumps(config, indent=1) + "\n")
    _write_client(out)
    x = check_images(saved)
    with torch.inference_mode():
        want = clf(x).float()
        rebuilt, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out}")
        got = head_logits(rebuilt.eval().encode_image(x), clf.head.weight, clf.head.bias)
    diff = float((want - got).abs().max())
    info = {"format": "open_clip", "folder": str(out), "open_clip_name": name, "state_dict": str(weights),
            "classifier": str(head), "config": str(out / CONFIG_FILE), "check_images": len(x), "max_abs_diff": diff,
            "method": saved.method, "run": saved.manifest.get("run"), "classes": saved.classes, "label": saved.label}
    echo(f"[export] open_clip: {out} ({CONFIG_FILE}, {OPEN_CLIP_FILE} {weights.stat().st_size / 2**20:.2f} MiB, "
         f"{HEAD_FILE}, classify.py); reloaded with open_clip.create_model_and_transforms('local-dir:{out}'): "
         f"max |logit difference| {diff:.2e} on {len(x)} images")
    echo(f"[export] {NOTE}")
    if diff > ONNX_TOLERANCE * 10:
        raise ConfigError(f"The exported open_clip state dict gives logits up to {diff:.2e} away from the model folder's "
                          f"(on {len(x)} images). Fix: report it; meanwhile use --format onnx or predict.")
    return info


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
    from .modelfolder import plain
    saved, loaded, clf = _load(model, results)
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
        info = export_onnx(args.model, args.out, args.results)
    else:
        info = export_open_clip(args.model, args.out, args.results)
    if info.get("label"):
        print(f"[export] {info['label']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
