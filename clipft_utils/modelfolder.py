"""A model folder per trained run: what the method changed, in safetensors, and a manifest saying how to rebuild it.

``<results folder>/models/<run>/`` holds

- ``model.safetensors``: only what the method changed -- BitFit's biases, the prefix (folded: the MLP's output,
  not the MLP), LoRA's A and B, the fully fine-tuned tower -- and the classifier head. The method's tensors are
  stored in fp16 by default (``dtype="fp32"`` on request) when they are large (``FP16_MIN_MB``; else fp32, exact)
  and rounding changes none of the run's test predictions; the head always in fp32 (it is small and sets the
  logits).
- ``manifest.json``: the method, its config, the base weights (model, pretrained, weights id and a digest of the
  base image tower), the classes in head order, the prompts, the preprocessing, the data, the accuracies and the
  labels (STAND-IN / RANDOM WEIGHTS) every number of the run carries.

Rebuilding is the course's own path: ``load_clip(base)`` -> ``CLIPClassifier`` over its image tower ->
``methods.apply_method(method, clf, config)`` (which adds LoRA's or the prefix's structure) -> the saved tensors,
by name, strictly (every saved key must exist with its shape, every key the method trains must be saved).
Nothing here unpickles: a results folder can come from someone else.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ConfigError, WeightsError
from .paths import atomic_path, atomic_write_text

FORMAT = "clipft-model-1"
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
HEAD_KEYS = ("head.weight", "head.bias")
FP16_MIN_MB = 4.0
"""Below this size in fp32 a method's tensors stay fp32 whatever ``dtype`` asks: halving them saves under 2 MiB, while
rounding could change a prediction (BitFit's biases, LoRA's A and B, a prefix: all far below it on ViT-B-32); the
fully fine-tuned tower (350 MB in fp32 on ViT-B-32) is what fp16 is for."""
PREPROCESS = {"exif_transpose": True, "resize": "shorter side to image_size", "interpolation": "bicubic",
              "crop": "center", "convert": "RGB after the crop", "scale": "x / 255", "normalize": "(x - mean) / std"}
"""open_clip's evaluation preprocessing, as the course decodes (datasets.base.eval_geometry, loader.normalise)."""


def models_dir(results_dir: str | Path) -> Path:
    """``<results folder>/models``."""
    return Path(results_dir) / "models"


def model_path(results_dir: str | Path, run: str) -> Path:
    """``<results folder>/models/<run>``: a run's model folder."""
    return models_dir(results_dir) / run


# ------------------------------------------------------------------------------------------ what is saved
def base_digest(visual: nn.Module) -> str:
    """A digest of the base image tower's weights (a strided sample of every tensor, in key order): it tells the
    base a model folder was trained on from any other weights of the same architecture, in well under a second."""
    h = hashlib.sha1()
    for name, t in sorted(visual.state_dict().items()):
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(flat[::step].to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def deployable(method: str, clf: nn.Module) -> tuple[nn.Module, bool]:
    """The trained classifier of ``method`` as a model folder saves it: (a ``CLIPClassifier``, head only). The method's
    ``deployed`` hook decides (CoOp: a head over the frozen tower; CLIP-LoRA: its image side); else ``clf`` itself."""
    from .methods import get
    hook = get(method).deployed
    return (clf, False) if hook is None else hook(clf)


def _method_tensors(clf: nn.Module, method: str) -> dict[str, torch.Tensor]:
    """What ``method`` changed in the tower of ``clf``, by file key: its ``saved_tensors`` hook, else the parameters
    it trains (``requires_grad``, as ``apply_method`` set them) other than the head."""
    from .methods import get
    hook = get(method).saved_tensors
    if hook is not None:
        return dict(hook(clf))
    return {name: p.detach() for name, p in clf.named_parameters() if p.requires_grad and name not in HEAD_KEYS}


def changed_state(clf: nn.Module, method: str, head_only: bool = False) -> dict[str, torch.Tensor]:
    """What ``method`` changed in ``clf``, by name, plus the head. ``head_only``: a head over the frozen tower (zero-shot,
    the linear probe, CoOp), whatever the tower's flags say, with whatever the head holds besides its weight and bias
    (Tip-Adapter's cache: keys, values, α, β)."""
    if head_only:
        state = {f"head.{n}": p.detach() for n, p in clf.head.named_parameters() if f"head.{n}" not in HEAD_KEYS}
    else:
        state = _method_tensors(clf, method)
    state["head.weight"] = clf.head.weight.detach()
    state["head.bias"] = (clf.head.bias.detach() if clf.head.bias is not None
                          else torch.zeros(clf.head.weight.shape[0], device=clf.head.weight.device))
    return state


def rounding_changes(clf: nn.Module, method: str, config: Any, dtype: str, base_visual: nn.Module, loader: Any,
                     reference: Any, precision: str = "auto") -> int:
    """How many of ``reference``'s predictions (an ``EvalResult`` of ``clf`` on ``loader``) change when the model is
    rebuilt from the tensors a folder would store in ``dtype``, over a copy of the base tower ``base_visual`` (the
    model ``predict`` would load); ``clf`` and the base tower are left as they were."""
    from .evaluate import evaluate
    if dtype == "fp32":
        return 0
    rebuilt = rebuilt_copy(clf, method, config, base_visual, dtype=dtype)
    rounded = evaluate(rebuilt, loader, device=next(clf.parameters()).device, precision=precision)
    return int((rounded.preds != reference.preds).sum())


def rebuilt_copy(clf: nn.Module, structure: str, config: Any, base_visual: nn.Module, head_only: bool = False,
                 dtype: str = "fp32") -> nn.Module:
    """``clf`` as its model folder rebuilds it: over a copy of ``base_visual``, from the tensors the folder stores (in
    ``dtype``), on ``clf``'s device, frozen, in eval mode."""
    import copy
    tensors = _file_tensors(changed_state(clf, structure, head_only), dtype)
    rebuilt = _rebuild(structure, config, tensors, copy.deepcopy(base_visual), head_only)
    return rebuilt.to(next(clf.parameters()).device)


def _file_tensors(state: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """CPU copies for the file: the method's tensors in ``dtype``, the head in fp32."""
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}. Fix: pass dtype='fp16' (half the "
                          "size) or 'fp32' (exact).")
    out = {}
    for k, t in state.items():
        want = torch.float32 if k in HEAD_KEYS or not t.is_floating_point() else DTYPES[dtype]
        out[k] = t.detach().to("cpu", want).contiguous().clone()
    return out


def library_version() -> str:
    """The installed clipft version (the package's own when it is not installed)."""
    from importlib import metadata
    try:
        return metadata.version("clipft")
    except metadata.PackageNotFoundError:
        from . import __version__
        return __version__


# ------------------------------------------------------------------------------------------ writing
def save_model(course: Any, method: str, clf: nn.Module, *, result: dict | None = None, variant: str | None = None,
               config: Any = None, dtype: str = "fp16", templates: list[str] | None = None,
               folder: str | Path | None = None, check: tuple[Any, Any] | None = None,
               head_only: bool = False, rebuild_as: str | None = None,
               combination: dict[str, Any] | None = None, chosen: dict[str, Any] | None = None) -> Path:
    """Write ``<results>/models/<run>/`` (``model.safetensors`` + ``manifest.json``, each atomically) for ``clf``,
    trained by ``method`` in ``course``; ``result``: the run's result row (accuracies). ``check``: (test loader, the
    run's test ``EvalResult``): fp16 is kept only if rounding to it changes none of those predictions (else fp32,
    and the manifest says why), so that the folder reproduces the run's test accuracy. ``head_only``: save the head
    alone (a head over the frozen tower). ``rebuild_as``: a combination that is one model of a method's shape (WiSE-FT:
    a fully fine-tuned tower) names that method, whose ``config`` rebuilds it; ``combination`` says how it was
    made. ``chosen``: what the run chose on validation (Tip-Adapter's α and β), kept in the manifest beside the
    tensors that hold it. Returns the folder."""
    from safetensors.torch import save_file
    from .results import plain_json
    name = course.run_name(method, variant)
    folder = Path(folder) if folder is not None else model_path(course.results_dir, name)
    structure = rebuild_as or method  # the method whose hooks save (and rebuild) the model
    note = None
    if head_only and dtype in DTYPES:
        dtype = "fp32"  # a head (and Tip-Adapter's cache) is small and sets the logits: always exact
    if dtype in DTYPES and dtype != "fp32":  # an unknown dtype is refused by _file_tensors
        mb = sum(t.numel() for k, t in changed_state(clf, structure).items() if k not in HEAD_KEYS) * 4 / 2**20
        if mb < FP16_MIN_MB:
            note = f"the method's tensors are small ({mb:.2f} MiB in fp32, under {FP16_MIN_MB:g}), so they are kept exact"
            dtype = "fp32"
    result = result or {}
    cfg = config.to_dict() if hasattr(config, "to_dict") else (config or result.get("config") or {})
    if check is not None and dtype != "fp32":
        changed = rounding_changes(clf, structure, _config(structure, cfg, folder), dtype, course.loaded.model.visual,
                                   *check, precision=result.get("precision") or "auto")
        if changed:  # the folder must reproduce the run's predictions: keep the exact values instead
            note = (f"{dtype} changed {changed} of {len(check[1].preds)} test predictions, so the tensors are "
                    "stored in fp32")
            dtype = "fp32"
    tensors = _file_tensors(changed_state(clf, structure, head_only), dtype)
    loaded = course.loaded
    manifest = {
        "format": FORMAT, "method": method, "head_only": head_only, "variant": variant, "run": name, "config": cfg,
        **({"rebuild_as": rebuild_as, "combination": combination or {}} if rebuild_as else {}),
        **({"chosen": chosen} if chosen else {}),
        "base": {"model": loaded.name, "pretrained": loaded.pretrained, "weights_id": loaded.weights_id,
                 "digest": base_digest(loaded.model.visual), "random_weights": loaded.random_weights},
        "classes": list(course.classnames),
        "templates": list(templates if templates is not None else result.get("templates") or course.templates()),
        "image_size": int(loaded.image_size), "mean": list(loaded.mean), "std": list(loaded.std),
        "preprocess": PREPROCESS,
        "dataset": course.dataset, "dataset_id": course.data.identity, "profile": course.profile.name,
        "shots": course.shots, "seed": course.seed,
        "val_acc": result.get("val_acc"), "test_acc": result.get("test_acc"), "n_test": result.get("n_test"),
        "precision": result.get("precision") or "auto",
        "dtype": dtype, "dtype_note": note, "tensors": {k: list(t.shape) for k, t in tensors.items()},
        "standin": bool(course.standin), "warnings": list(course.warnings), "label": course.label,
        "library_version": library_version(),
    }
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "method": method})
    atomic_write_text(folder / MANIFEST, json.dumps(plain_json(manifest), indent=1) + "\n")
    return folder


def save_head_model(course: Any, method: str, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                    result: dict | None = None, variant: str | None = None, config: Any = None,
                    templates: list[str] | None = None) -> Path:
    """The model folder of a head over the frozen image tower (zero-shot, the linear probe)."""
    from .models import CLIPClassifier
    clf = CLIPClassifier(course.loaded.model.visual, weight.detach().float().cpu())  # the tower is shared, not copied
    if bias is not None:
        with torch.no_grad():
            clf.head.bias.copy_(bias.detach().float().cpu())
    return save_model(course, method, clf, result=result, variant=variant, config=config, dtype="fp32",
                      templates=templates, head_only=True)


# ------------------------------------------------------------------------------------------ reading
@dataclass
class SavedModel:
    """A model folder, read and checked (nothing loaded into a network yet)."""

    folder: Path
    manifest: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def method(self) -> str:
        return self.manifest["method"]

    @property
    def structure(self) -> str:
        """The method whose shape and config rebuild the model: its own, or the one a combination names
        (``rebuild_as``: WiSE-FT is a fully fine-tuned tower)."""
        return self.manifest.get("rebuild_as") or self.method

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def label(self) -> str:
        return self.manifest.get("label", "")


def remake_hint(folder: Path, run: str | None = None) -> str:
    """The command that rewrites a model folder (the run that trained it)."""
    from .records import remake_command
    results = folder.parent.parent if folder.parent.name == "models" else folder.parent
    return remake_command(results / f"{run or folder.name}.json")


def _bad(path: Path, why: str, run: str | None = None) -> WeightsError:
    folder = path.parent
    return WeightsError(f"Cannot load the model folder '{folder}': {path.name} {why}. Nothing was loaded. Fix: remake "
                        f"the model folder by re-running the run that trained it: {remake_hint(folder, run)}.")


def find_model(model: str | Path, results: str | Path | None = None) -> Path:
    """A model folder, from its path or from a run name inside a results folder (``results``, else every folder of
    the results root: ``$CLIPFT_RESULTS`` or ``results/``)."""
    from .paths import results_root
    path = Path(model).expanduser()
    if path.is_dir():
        if (path / MANIFEST).exists() or (path / WEIGHTS).exists():
            return path
        if (path / "models").is_dir():
            runs = sorted(p.name for p in (path / "models").iterdir() if p.is_dir())
            raise ConfigError(f"'{path}' is a results folder, not a model folder. Fix: pass one of its models, e.g. "
                              f"{path / 'models' / runs[0] if runs else path / 'models' / '<run>'} (it has: "
                              f"{', '.join(runs) or 'none yet'}).")
        raise _bad(path / MANIFEST, "is missing (this folder is no model folder)")
    if os.sep in str(model) or "/" in str(model):
        raise ConfigError(f"The model folder '{model}' does not exist. Fix: pass a model folder "
                          "(<results folder>/models/<run>) or a run name such as lora_seed0.")
    top = Path(results).expanduser() if results else results_root()
    # a results folder, or a root holding several (results/ itself, or --results pointed at it): search them all
    roots = [top] if (top / "models").is_dir() else [top, *sorted(p for p in top.glob("*") if p.is_dir())]
    hits = [r / "models" / str(model) for r in roots if (r / "models" / str(model)).is_dir()]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise ConfigError(f"The run '{model}' has a model folder in {len(hits)} results folders: "
                          f"{', '.join(str(h) for h in hits)}. Fix: pass the folder itself, or --results FOLDER.")
    known = sorted({p.name for r in roots for p in (r / "models").glob("*") if p.is_dir()})
    where = results or results_root()
    raise ConfigError(f"No model folder for the run '{model}' in '{where}'. Fix: pass a model folder, or one of the "
                      f"runs there: {', '.join(known[:12]) or 'none (train a method first: ./run_all.sh)'}.")


def read_model(folder: str | Path) -> SavedModel:
    """Read and check a model folder's manifest and weights (safetensors and JSON only: nothing unpickles)."""
    from safetensors import SafetensorError, safe_open
    folder = Path(folder)
    mpath, wpath = folder / MANIFEST, folder / WEIGHTS
    if not mpath.exists():
        raise _bad(mpath, "is missing")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(mpath, f"is damaged ({type(exc).__name__}: {str(exc)[:80]})") from None
    run = manifest.get("run") if isinstance(manifest, dict) else None
    missing = [k for k in ("format", "method", "config", "base", "classes", "image_size", "mean", "std")
               if not isinstance(manifest, dict) or k not in manifest]
    if missing or manifest.get("format") != FORMAT:
        why = f"lacks {missing}" if missing else f"has format {manifest.get('format')!r}, not {FORMAT!r}"
        raise _bad(mpath, f"is not a clipft model manifest (it {why})", run)
    if not wpath.exists():
        raise _bad(wpath, "is missing", run)
    with open(wpath, "rb") as f:
        head = f.read(16)
    # safetensors: an 8-byte little-endian header length, then the JSON header ("{"). Its first byte can be 0x80 (a
    # header of 128 + 256k bytes), so a pickle is told apart by what follows, not by the first byte alone.
    if head[8:9] != b"{" and (head[:2] == b"PK" or head[:1] == b"\x80"):
        raise _bad(wpath, "is a pickle (a torch.save file), not safetensors: unpickling can run code hidden in the "
                   "file, so it is refused", run)
    try:
        with safe_open(str(wpath), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _bad(wpath, f"is damaged or not a safetensors file ({str(exc).strip()[:80]})", run) from None
    absent = [k for k in HEAD_KEYS if k not in tensors]
    if absent:
        raise _bad(wpath, f"has no classifier head ({absent} missing)", run)
    n_classes, n_head = len(manifest["classes"]), tensors["head.weight"].shape[0]
    if n_classes != n_head or tensors["head.bias"].shape != (n_head,):
        raise ConfigError(f"The model folder '{folder}' lists {n_classes} classes in {MANIFEST} but its head in "
                          f"{WEIGHTS} has {n_head} outputs: the two files come from different runs. Fix: remake the "
                          f"folder: {remake_hint(folder, run)}.")
    return SavedModel(folder, manifest, tensors)


def _config(method: str, given: dict[str, Any], folder: Path, written_by: str | None = None) -> Any:
    """``method``'s config from a manifest's ``config`` dict (lists back to the tuples the dataclass declares)."""
    import dataclasses
    import typing
    from .methods import get
    cls = get(method).config
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ConfigError(f"The model folder '{folder}' was written with a {method} config field(s) {unknown} "
                          f"this library ({library_version()}) does not know (written by "
                          f"{written_by or 'another version'}). Fix: use the clipft version that wrote it.")
    hints = typing.get_type_hints(cls)
    tuples = {k for k in known if typing.get_origin(hints.get(k)) is tuple}
    return cls(**{k: tuple(v) if isinstance(v, list) and k in tuples else v for k, v in given.items()})


def load_base(saved: SavedModel, device: str | torch.device = "cpu"):
    """The base CLIP a model folder was trained on, checked against its manifest (weights id and tower digest)."""
    from .models import load_clip
    from .seeding import seed_everything
    base = saved.manifest["base"]
    if base.get("weights_id") == "random":  # the run's random tower came from its seed, set before load_clip
        seed_everything(int(saved.manifest.get("seed") or 0))
    loaded = load_clip(base["model"], base["pretrained"], device="cpu")
    digest = base_digest(loaded.model.visual)
    if loaded.weights_id != base.get("weights_id") or (base.get("digest") and digest != base["digest"]):
        raise WeightsError(
            f"The model folder '{saved.folder}' was trained on {base['model']} / {base['pretrained']} with the "
            f"weights id {base.get('weights_id')} (tower digest {base.get('digest')}), but the weights available here "
            f"for {base['model']} / {base['pretrained']} are {loaded.weights_id} (digest {digest}). Its saved tensors "
            "only make sense on top of the weights it was trained on. Fix: use the same base weights (the same "
            "file, tag and open_clip version), or retrain the method on these: "
            f"{remake_hint(saved.folder, saved.manifest.get('run'))}.")
    return loaded


class _Mismatch(ValueError):
    """The tensors of a model folder do not fit the model its manifest builds (the message says how)."""


def _rebuild(structure: str, cfg: Any, tensors: dict[str, torch.Tensor], visual: nn.Module,
             head_only: bool) -> nn.Module:
    """``CLIPClassifier`` over ``visual`` with ``structure`` applied (its ``rebuild`` hook, else ``apply``) and
    ``tensors`` loaded by name, strictly; frozen, in eval mode. A mismatch raises ``_Mismatch``."""
    from .methods import apply_method, freeze, get
    from .models import CLIPClassifier
    n, dim = tensors["head.weight"].shape
    clf = CLIPClassifier(visual, torch.zeros(n, dim))
    rebuild = get(structure).rebuild
    if rebuild is None:
        apply_method(structure, clf, cfg)
    else:
        freeze(clf)
        rebuild(clf, cfg, tensors)
    expected = changed_state(clf, structure, head_only)
    file_keys, want = set(tensors), set(expected)
    if file_keys != want:
        extra, lacking = sorted(file_keys - want), sorted(want - file_keys)
        parts = ([f"{len(extra)} key(s) this {structure} model does not have, e.g. {extra[:2]}"] if extra else []) + \
                ([f"{len(lacking)} key(s) the method trains missing, e.g. {lacking[:2]}"] if lacking else [])
        raise _Mismatch(f"does not fit its manifest: {'; '.join(parts)}")
    shapes = [k for k in file_keys if tuple(tensors[k].shape) != tuple(expected[k].shape)]
    if shapes:
        k = shapes[0]
        raise _Mismatch(f"holds {k} with shape {list(tensors[k].shape)}, but the {structure} model built from its "
                        f"manifest needs {list(expected[k].shape)}")
    params = dict(clf.named_parameters())
    with torch.no_grad():
        for k, t in tensors.items():
            params[k].copy_(t.to(params[k].dtype))
    for p in clf.parameters():
        p.requires_grad_(False)
    if hasattr(clf.visual, "set_grad_checkpointing"):
        clf.visual.set_grad_checkpointing(False)  # a training-time switch (full fine-tuning's); inference needs none
    return clf.eval()


def build_classifier(saved: SavedModel, loaded: Any) -> nn.Module:
    """The trained classifier: ``CLIPClassifier`` over ``loaded``'s tower, the method applied, the tensors loaded."""
    cfg = _config(saved.structure, dict(saved.manifest.get("config") or {}), saved.folder,
                  saved.manifest.get("library_version"))
    try:
        return _rebuild(saved.structure, cfg, saved.tensors, loaded.model.visual, bool(saved.manifest.get("head_only")))
    except _Mismatch as exc:
        raise _bad(saved.folder / WEIGHTS, str(exc), saved.manifest.get("run")) from None


def plain(clf: nn.Module, structure: str) -> nn.Module:
    """``clf`` with the method folded into the tower's own weights (its ``merge`` hook: LoRA merged and its wrappers
    removed, the stock open_clip modules again), in eval mode: the same logits, no extra work per forward pass."""
    from .methods import get
    hook = get(structure).merge
    return (clf if hook is None else hook(clf)).eval()


def load_model(model: str | Path, device: str | torch.device = "cpu", results: str | Path | None = None):
    """``(classifier, SavedModel, LoadedCLIP)`` of a model folder or run name, on ``device``, in eval mode."""
    saved = read_model(find_model(model, results))
    loaded = load_base(saved)
    clf = build_classifier(saved, loaded)
    return clf.to(device), saved, loaded


RELOAD_IMAGES = 16
"""Test images a notebook's "Save and load" step classifies again (``predict`` checks every image: tests)."""


def reload_check(course: Any, method: str, variant: str | None = None) -> dict[str, Any]:
    """A notebook's "Save and load" step: reload the run's model folder in a fresh object (base weights from
    ``load_clip``, the folder's tensors on top) and compare its predictions on the first ``RELOAD_IMAGES`` test
    images with the predictions the run recorded. Returns the folder, its files and sizes, and the agreement."""
    from .results import load_predictions
    name = course.run_name(method, variant)
    folder = model_path(course.results_dir, name)
    clf, saved, _ = load_model(folder, device=course.device)
    from .evaluate import autocast_context
    images = next(iter(course.loader("test")))[0][:RELOAD_IMAGES]
    with torch.inference_mode(), autocast_context("auto", course.device):  # the precision the run evaluated in
        logits = clf(images.to(course.device)).float().cpu()
    recorded, _ = load_predictions(course.results_dir, name)
    recorded = torch.as_tensor(recorded[:len(logits)])
    agree = float((logits.argmax(1) == recorded.argmax(1)).float().mean())
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir())}
    summary = (f"{folder}\n  files: " + ", ".join(f"{k} ({v / 2**20:.3f} MiB)" for k, v in files.items())
               + f"\n  saved: {len(saved.tensors)} tensors ({saved.manifest.get('dtype')}"
               + (f"; {saved.manifest['dtype_note']}" if saved.manifest.get("dtype_note") else "") + ")"
               + f"\n  reloaded in a fresh object: top-1 agrees with the run's recorded predictions on {agree:.0%} of "
               f"{len(logits)} test images (max |logit difference| {float((logits - recorded).abs().max()):.2e})"
               + f"\n  outside the notebook: python -m clipft_utils predict {folder} IMAGE_OR_FOLDER --top 5")
    return {"folder": folder, "files": files, "agreement": agree, "images": len(logits), "summary": summary,
            "max_abs_diff": float((logits - recorded).abs().max())}
