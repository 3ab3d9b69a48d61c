"""Load CLIP models (real weights, a local file, or the offline ToyCLIP) and build classifiers from them."""
from __future__ import annotations

import difflib
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, OfflineError
from .paths import hash_file

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "openai"
RANDOM_WEIGHTS = ("", "none", "random")
HF_FILENAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                "open_clip_pytorch_model.bin")


@dataclass
class LoadedCLIP:
    """An open_clip model with everything the course needs to know about it."""

    model: nn.Module
    tokenizer: Any
    name: str
    pretrained: str            # what the user asked for: a tag, a path, or "random"
    weights_id: str            # stable id for cache keys: the tag, "file-<sha1>" or "random"
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    preprocess_train: Any = field(repr=False, default=None)
    preprocess_val: Any = field(repr=False, default=None)

    @property
    def embed_dim(self) -> int:
        """Width of the joint image-text embedding."""
        return int(self.model.visual.output_dim)

    @property
    def is_standin(self) -> bool:
        """True for a model the project made itself (ToyCLIP): never to be reported as CLIP."""
        return self.name in STANDIN_MODELS

    @property
    def random_weights(self) -> bool:
        """True when the weights are random: accuracies then mean nothing."""
        return self.weights_id == "random"


@dataclass(frozen=True)
class LocalWeights:
    """Weights a plug-in provides as a local file (no download), e.g. ToyCLIP's ``synthflowers``."""

    model: str
    tag: str
    path: Callable[[], Path]      # the open_clip state dict to load (may be built on first use)
    weights_id: Callable[[], str]  # a stable id for cache keys; changes when the weights do


LOCAL_WEIGHTS: dict[tuple[str, str], LocalWeights] = {}
STANDIN_MODELS: dict[str, str] = {}
"""Model name -> how its results are labelled (a model the project made itself, never CLIP)."""


def register_local_weights(weights: LocalWeights, standin_note: str | None = None) -> None:
    """Make ``pretrained=weights.tag`` of ``weights.model`` load a local file; a ``standin_note`` marks the model."""
    LOCAL_WEIGHTS[(weights.model, weights.tag)] = weights
    if standin_note:
        STANDIN_MODELS[weights.model] = standin_note


def check_model_name(name: str) -> str:
    """Return ``name`` if open_clip knows the architecture, else raise with close matches."""
    import open_clip
    from . import plugins
    plugins.load()  # plug-ins add their model configs to open_clip
    known = open_clip.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"Unknown model '{name}'.{hint} Fix: pass a name from open_clip.list_models() "
            "(the course uses 'ViT-B-32'; 'ToyCLIP' is the offline stand-in)."
        )
    return name


def file_id(path: Path) -> str:
    """``file-<sha1 prefix>`` of a file's bytes: the id of weights loaded from a local file."""
    return f"file-{hash_file(path, 'sha1')[:12]}"


def online(host: str = "huggingface.co", timeout: float = 1.0) -> bool:
    """Whether ``host`` answers on port 443 within ``timeout`` (False at once with HF_HUB_OFFLINE=1)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def cached_weights(name: str, tag: str, cache_dir: str | None = None) -> str | None:
    """Path of already-downloaded weights for (name, tag), or None."""
    import open_clip
    cfg = open_clip.get_pretrained_cfg(name, tag)
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache
        repo, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
        for fname in ([filename] if filename else HF_FILENAMES):
            hit = try_to_load_from_cache(repo, fname, cache_dir=cache_dir)
            if isinstance(hit, str):
                return hit
    url = cfg.get("url", "")
    if url:
        root = Path(cache_dir or Path.home() / ".cache" / "clip")
        candidate = root / os.path.basename(url)
        if candidate.exists():
            return str(candidate)
    return None


def resolve_weights(name: str, pretrained: str | None, cache_dir: str | None = None) -> tuple[str | None, str]:
    """Turn a tag / path / 'random' into (what to pass open_clip, weights id); fail fast when offline."""
    import open_clip
    from . import plugins
    plugins.load()
    pretrained = (pretrained or "").strip()
    if pretrained.lower() in RANDOM_WEIGHTS:
        return None, "random"
    local = LOCAL_WEIGHTS.get((name, pretrained))
    if local is not None:
        return str(local.path()), local.weights_id()
    path = Path(pretrained).expanduser()
    if path.is_file():
        return str(path), file_id(path)
    if any(sep in pretrained for sep in ("/", "\\")) or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
        raise ConfigError(f"Weights file '{pretrained}' does not exist. Fix: check the path, or pass a tag "
                          f"such as '{DEFAULT_PRETRAINED}'.")
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        raise ConfigError(
            f"Model '{name}' has no weights tagged '{pretrained}'. Fix: use one of {tags or ['random']}, "
            "a local checkpoint path, or 'random'."
        )
    if cached_weights(name, pretrained, cache_dir) is None and not online():
        raise OfflineError(
            f"The weights '{name}' / '{pretrained}' are not in the local cache and this machine is offline "
            f"(or HF_HUB_OFFLINE=1). Fix: on a machine with internet run "
            f"`python -m clipft_utils prefetch --model {name} --pretrained {pretrained}` (it fills the cache "
            "this machine reads), or use the offline stand-in: profile 'smoke' (model 'ToyCLIP')."
        )
    return pretrained, pretrained


def _short(text: object, limit: int = 90) -> str:
    """First line of ``text``, cut to ``limit`` characters (for one-line 'found' descriptions)."""
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _read_weights_file(path: Path) -> tuple[Any, str | None]:
    """(object in the file, None), or (None, what the file is instead). Only safe loads (weights_only)."""
    import pickle
    import zipfile
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as err:
        return None, f"a file that cannot be read ({err.strerror or type(err).__name__})"
    looks_safetensors = len(head) > 8 and head[8:9] == b"{"
    if path.suffix == ".safetensors" or looks_safetensors:
        try:
            from safetensors.torch import load_file
            return load_file(str(path), device="cpu"), None
        except Exception as err:  # noqa: BLE001 - any failure means "not a readable safetensors file"
            if path.suffix == ".safetensors":
                return None, f"not a valid safetensors file ({_short(err)})"
    if head[:2] == b"PK" and not zipfile.is_zipfile(path):
        return None, "a damaged or truncated PyTorch file (an incomplete zip archive)"
    if not (zipfile.is_zipfile(path) or head[:1] == b"\x80"):
        return None, "not a PyTorch or safetensors file"
    try:
        return torch.load(path, map_location="cpu", weights_only=True), None
    except pickle.UnpicklingError:  # the safe unpickler refused the stream: objects, or not a pickle at all
        refused = _refused_globals(path)
        if refused:
            return None, (f"a pickle of Python objects ({', '.join(refused[:3])}), not a plain state dict of tensors; "
                          "unpickling objects can run code hidden in the file, so it is refused for safety. Save the "
                          "weights as safetensors (safetensors.torch.save_file) or as a plain state dict of tensors")
        return None, "a damaged PyTorch file (its pickled contents cannot be read)"
    except Exception as err:  # noqa: BLE001 - truncated zip, bad records, ...
        detail = "" if "weights_only" in str(err) or not str(err).strip() else f": {_short(err)}"
        return None, f"a damaged or truncated PyTorch file ({type(err).__name__}{detail})"


def _pickle_streams(path: Path) -> list[bytes]:
    """The pickle bytes of a torch file: the zip format's ``data.pkl``, else the whole (legacy or raw) file."""
    import zipfile
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return [z.read(n) for n in z.namelist() if n.endswith("data.pkl")]
    return [path.read_bytes()]


def _pickled_globals(data: bytes) -> list[str]:
    """Every ``module.name`` a pickle stream imports (GLOBAL, INST, STACK_GLOBAL), read opcode by opcode without
    executing anything; a malformed or truncated stream yields what was read before the damage."""
    import io
    import pickletools
    found: list[str] = []
    strings: list[str] = []
    memo: dict[int, str | None] = {}
    stream = io.BytesIO(data)
    try:
        while stream.tell() < len(data):  # a legacy torch file is several pickles in a row
            last: str | None = None
            for op, arg, _ in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(".".join(strings[-2:]))
                elif op.name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                    memo[len(memo) if op.name == "MEMOIZE" else int(arg)] = last
                elif op.name in ("GET", "BINGET", "LONG_BINGET") and memo.get(int(arg)) is not None:
                    strings.append(memo[int(arg)])
                last = arg if isinstance(arg, str) and "UNICODE" in op.name else None
                if last is not None:
                    strings.append(last)
    except Exception:  # noqa: BLE001 - storage bytes after the pickles, or damage: what was read stands
        pass
    return found


def _refused_globals(path: Path) -> list[str]:
    """The globals in ``path`` that torch's safe (weights-only) unpickler does not allow: pickled Python objects."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals
        allowed = set(_get_allowed_globals()) | {f"{g.__module__}.{g.__qualname__}" for g in
                                                 torch.serialization.get_safe_globals() if hasattr(g, "__qualname__")}
    except (ImportError, AttributeError):  # another torch: anything outside torch and OrderedDict is an object
        allowed = set()
    try:
        streams = _pickle_streams(path)
    except (OSError, ValueError):
        return []
    names = [g for data in streams for g in _pickled_globals(data)]
    refused = [g for g in names if g not in allowed and not (not allowed and (g.startswith("torch.")
                                                                             or g == "collections.OrderedDict"))]
    return list(dict.fromkeys(refused))


def _shape(t: Any) -> str:
    return str(list(getattr(t, "shape", ())))


def _state_dict_mismatch(name: str, obj: Any) -> str | None:
    """What keeps ``obj`` (a loaded checkpoint) from being ``name``'s weights, or None if it would fit."""
    import logging
    import open_clip
    if isinstance(obj, torch.jit.ScriptModule):
        obj = obj.state_dict()
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        return f"a file holding a {type(obj).__name__}, not a state dict"
    if not obj:
        return "an empty state dict"
    if not any(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = ", ".join(f"'{k}'" for k in list(obj)[:4])
        return f"a dict without tensors (keys {keys}), not a state dict"
    if all(str(k).startswith("module.") for k in obj):
        obj = {k[7:]: v for k, v in obj.items()}
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # open_clip warns "initialized randomly": true but beside the point here
    try:
        with torch.device("meta"):  # the architecture's keys and shapes, without allocating or initialising
            expected = open_clip.create_model(name, device="meta").state_dict()
    finally:
        logging.disable(previous)
    lenient = {"logit_bias", "text.transformer.embeddings.position_ids"}  # open_clip fills in / drops these
    unexpected = [k for k in obj if k not in expected and k not in lenient]
    missing = [k for k in expected if k not in obj and k not in lenient]
    shapes = []
    for k, want in expected.items():
        got = obj.get(k)
        if not isinstance(got, torch.Tensor) or tuple(got.shape) == tuple(want.shape):
            continue
        if k.startswith("logit_") and got.numel() == want.numel():
            continue  # scalar vs 1-d: open_clip reshapes it
        if k.endswith("positional_embedding") and got.shape[-1:] == want.shape[-1:]:
            continue  # same width, other length: open_clip interpolates it
        shapes.append(k)
    if not (unexpected or missing or shapes):
        return None
    parts = []
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key{'s' * (len(unexpected) > 1)} such as '{unexpected[0]}'")
    if missing:
        parts.append(f"{len(missing)} missing such as '{missing[0]}'")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} shape mismatch{'es' * (len(shapes) > 1)}, e.g. '{k}' "
                     f"{_shape(obj[k])} in the file vs {_shape(expected[k])} expected")
    what = "a state dict for another architecture" if unexpected or missing else f"a state dict that does not fit '{name}'"
    return f"{what}: {', '.join(parts)}"


def _weights_problem(name: str, path: Path) -> str | None:
    """One line saying what is wrong with the local weights file ``path`` for ``name``, or None if nothing is."""
    obj, found = _read_weights_file(path)
    return found if found is not None else _state_dict_mismatch(name, obj)


def _weights_error(name: str, path: Path, found: str):
    """The ``WeightsError`` for a local file that cannot be ``name``'s weights."""
    import open_clip
    from .errors import WeightsError
    tags = list(open_clip.list_pretrained_tags_by_model(name)) + [t for (m, t) in LOCAL_WEIGHTS if m == name]
    tag = DEFAULT_PRETRAINED if DEFAULT_PRETRAINED in tags or not tags else tags[0]
    return WeightsError(
        f"Cannot load the weights file '{path}' into model '{name}'. Expected: an open_clip state dict (or "
        f"checkpoint with a 'state_dict') for the architecture '{name}'. Found: {found}. Fix: check the path; "
        f"pass the weights of a {name} model (a file saved with torch.save(model.state_dict(), path)); or use "
        f"pretrained='random' / a tag such as '{tag}'."
    )


def load_clip(name: str = DEFAULT_MODEL, pretrained: str | None = DEFAULT_PRETRAINED,
              device: str | torch.device = "cpu", cache_dir: str | None = None) -> LoadedCLIP:
    """Load an open_clip model by name and weights tag, local checkpoint path, or 'random'.

    A local file that is not a state dict of ``name`` raises ``WeightsError`` saying what it is instead.
    """
    import open_clip
    check_model_name(name)
    weights, weights_id = resolve_weights(name, pretrained, cache_dir)
    local_file = Path(weights) if weights is not None and Path(weights).is_file() else None
    import logging
    if weights is None:  # open_clip warns "No pretrained weights loaded": the label says RANDOM WEIGHTS instead
        logging.disable(logging.WARNING)
    try:
        model, pre_train, pre_val = open_clip.create_model_and_transforms(
            name, pretrained=weights, device=device, cache_dir=cache_dir)
    except (MemoryError, torch.OutOfMemoryError):
        raise
    except Exception:
        found = _weights_problem(name, local_file) if local_file is not None else None
        if found is None:  # not the file's fault (or not a file at all): the original error is the right one
            raise
        # `from None`: the raw loader error (pickle opcodes, key dumps, "weights_only" advice) helps nobody here
        raise _weights_error(name, local_file, found) from None
    finally:
        logging.disable(logging.NOTSET)
    model.eval()
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = cfg.get("size", model.visual.image_size)
    size = size[0] if isinstance(size, (tuple, list)) else size
    return LoadedCLIP(
        model=model, tokenizer=open_clip.get_tokenizer(name), name=name, pretrained=pretrained or "random",
        weights_id=weights_id, image_size=int(size),
        mean=tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD)),
        preprocess_train=pre_train, preprocess_val=pre_val,
    )


@torch.inference_mode()
def text_embeddings(loaded: LoadedCLIP, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Normalised text embeddings [len(texts), D] on the model's device."""
    model = loaded.model
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(texts), batch_size):
        tokens = loaded.tokenizer(list(texts[i:i + batch_size])).to(device)
        out.append(F.normalize(model.encode_text(tokens).float(), dim=-1))
    return torch.cat(out)


def zero_shot_weights(loaded: LoadedCLIP, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """Per-class text embeddings [C, D]: templates embedded, normalised, averaged, renormalised."""
    if not templates:
        raise ConfigError("zero_shot_weights needs at least one template, e.g. 'a photo of a {}.'")
    prompts = [t.format(c) for c in classnames for t in templates]
    emb = text_embeddings(loaded, prompts).view(len(classnames), len(templates), -1)
    return F.normalize(emb.mean(dim=1), dim=-1)


def logit_scale(loaded: LoadedCLIP) -> float:
    """The model's learned temperature, exp(logit_scale)."""
    return float(loaded.model.logit_scale.exp().item())


class CLIPClassifier(nn.Module):
    """Image tower + linear head on normalised features: ``head(normalize(visual(x)))``."""

    def __init__(self, visual: nn.Module, head_weight: torch.Tensor, head_bias: bool = True):
        super().__init__()
        self.visual = visual
        num_classes, dim = head_weight.shape
        self.head = nn.Linear(dim, num_classes, bias=head_bias)
        with torch.no_grad():
            self.head.weight.copy_(head_weight)
            if head_bias:
                self.head.bias.zero_()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised image embeddings."""
        return F.normalize(self.visual(images), dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def zero_shot_head(loaded: LoadedCLIP, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """Head weight that reproduces zero-shot logits: ``logit_scale * text embeddings``."""
    return logit_scale(loaded) * zero_shot_weights(loaded, classnames, templates)


def build_classifier(loaded: LoadedCLIP, head_weight: torch.Tensor) -> CLIPClassifier:
    """A CLIPClassifier over the loaded model's image tower (the tower is shared, not copied)."""
    return CLIPClassifier(loaded.model.visual, head_weight.to(next(loaded.model.parameters()).device))


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return trainable, total


def format_trainable(module: nn.Module) -> str:
    """peft-style line: trainable params, all params, trainable %."""
    trainable, total = count_parameters(module)
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"


def resolve_device(device: str | None = "auto") -> torch.device:
    """'auto' → cuda if available, else mps, else cpu; anything else is validated."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device='{device}' but CUDA is not available here. Fix: use device='auto' or 'cpu'.")
    return dev
