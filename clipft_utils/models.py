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
    """An open_clip model with everything the course needs to know about it. Its tokenizer loads on first use: a
    model whose tokenizer comes from the Hugging Face hub (SigLIP) runs its image-side work offline without it."""

    model: nn.Module
    name: str
    pretrained: str            # what the user asked for: a tag, a path, or "random"
    weights_id: str            # stable id for cache keys: the tag, "file-<sha1>" or "random"
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    preprocess_train: Any = field(repr=False, default=None)
    preprocess_val: Any = field(repr=False, default=None)
    _tokenizer: Any = field(repr=False, default=None)

    @property
    def tokenizer(self) -> Any:
        """open_clip's tokenizer for this model (loaded on first use; offline without it: ``OfflineError``)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.name)
        return self._tokenizer

    @property
    def embed_dim(self) -> int:
        """Width of the joint image-text embedding."""
        from .towers import facts
        return facts(self.model.visual).output_dim

    @property
    def architecture(self) -> Any:
        """The model's ``towers.Architecture`` (its towers' facts, for which methods apply)."""
        from .towers import architecture
        return architecture(self.model, self.name)

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


SCHEMES = ("hf-hub:", "local-dir:")
"""open_clip's identifiers whose config (and weights) come from a Hugging Face repo or a local folder."""


def check_model_name(name: str) -> str:
    """Return ``name`` if open_clip knows the architecture (a registered name, ``hf-hub:org/repo`` whose config is
    cached or downloadable, ``local-dir:PATH`` with an ``open_clip_config.json``), else raise with close matches."""
    import open_clip
    from . import plugins
    if name.startswith(SCHEMES):
        schema_config(name)
        return name
    plugins.load()  # plug-ins add their model configs to open_clip
    known = open_clip.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"Unknown model '{name}'.{hint} Fix: pass a name from open_clip.list_models(), 'hf-hub:ORG/REPO' or "
            "'local-dir:PATH' (the course uses 'ViT-B-32'; 'ToyCLIP' is the offline stand-in)."
        )
    return name


def schema_config(name: str, cache_dir: str | None = None) -> dict:
    """The ``open_clip_config.json`` of an ``hf-hub:`` / ``local-dir:`` model (from the folder, the local Hugging Face
    cache, or downloaded when online); a ConfigError or OfflineError saying what is missing."""
    import json
    schema, _, ident = name.partition(":")
    if schema == "local-dir":
        path = Path(ident).expanduser() / "open_clip_config.json"
        if not path.is_file():
            raise ConfigError(f"'{name}': {path} does not exist. Fix: pass a folder that open_clip wrote (or that "
                              "`python -m clipft_utils export --format open_clip` wrote), holding open_clip_config.json.")
        return json.loads(path.read_text())
    from huggingface_hub import try_to_load_from_cache
    hit = try_to_load_from_cache(ident, "open_clip_config.json", cache_dir=cache_dir)
    if not isinstance(hit, str):
        if not online():
            raise OfflineError(
                f"The config of '{name}' is not in the local Hugging Face cache and this machine is offline (or "
                f"HF_HUB_OFFLINE=1). Fix: on a machine with internet run `python -m clipft_utils prefetch --model "
                f"{name}` (it fills the cache this machine reads), or use a built-in name such as 'ViT-B-16-SigLIP'.")
        from open_clip.pretrained import download_pretrained_from_hf
        hit = download_pretrained_from_hf(ident, filename="open_clip_config.json", cache_dir=cache_dir)
    return json.loads(Path(hit).read_text())


def _schema_weights(name: str, cache_dir: str | None) -> tuple[str, str]:
    """(``"schema"``, weights id) of an ``hf-hub:`` / ``local-dir:`` model's own weights file, checked present."""
    schema, _, ident = name.partition(":")
    if schema == "local-dir":
        from open_clip.factory import _find_checkpoint_in_dir
        found = _find_checkpoint_in_dir(Path(ident).expanduser())
        if found is None:
            raise ConfigError(f"'{name}' holds no weights file (open_clip_model.safetensors, *.bin, *.pth). Fix: put "
                              "the weights in the folder, or pass pretrained='random' for its architecture alone.")
        return "schema", file_id(Path(found))
    from huggingface_hub import try_to_load_from_cache
    for fname in HF_FILENAMES:
        hit = try_to_load_from_cache(ident, fname, cache_dir=cache_dir)
        if isinstance(hit, str):
            return "schema", file_id(Path(hit))
    if not online():
        raise OfflineError(
            f"The weights of '{name}' are not in the local Hugging Face cache and this machine is offline (or "
            f"HF_HUB_OFFLINE=1). Fix: on a machine with internet run `python -m clipft_utils prefetch --model {name}`, "
            "or pass pretrained='random' for its architecture alone.")
    from open_clip.pretrained import download_pretrained_from_hf
    return "schema", file_id(Path(download_pretrained_from_hf(ident, cache_dir=cache_dir)))


def load_tokenizer(name: str) -> Any:
    """open_clip's tokenizer for ``name``. One from the Hugging Face hub (SigLIP's) missing offline is an
    ``OfflineError`` naming it and the prefetch command."""
    import open_clip
    try:
        return open_clip.get_tokenizer(name)
    except (OSError, ValueError, RuntimeError) as exc:
        if online():
            raise
        cfg = (schema_config(name) if name.startswith(SCHEMES) else open_clip.get_model_config(name)) or {}
        cfg = cfg.get("model_cfg", cfg)
        hf = cfg.get("text_cfg", {}).get("hf_tokenizer_name") or name
        raise OfflineError(
            f"The tokenizer of '{name}' ('{hf}', from the Hugging Face hub) is not in the local cache and this machine "
            "is offline (or HF_HUB_OFFLINE=1); class names cannot go through its text tower (zero-shot heads, CoOp, "
            f"CLIP-LoRA) without it ({type(exc).__name__}). Fix: on a machine with internet run `python -m "
            f"clipft_utils prefetch --model {name}` (it fetches the tokenizer too), or pick a model with CLIP's "
            "tokenizer (ViT-B-32, RN50, EVA02-B-16, convnext_base, MobileCLIP-S1).") from None


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
    if name.startswith(SCHEMES):  # its weights come with it (open_clip ignores `pretrained` for these)
        return _schema_weights(name, cache_dir)
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


def load_clip(name: str = DEFAULT_MODEL, pretrained: str | None = DEFAULT_PRETRAINED,
              device: str | torch.device = "cpu", cache_dir: str | None = None) -> LoadedCLIP:
    """Load an open_clip model by name and weights tag, local checkpoint path, or 'random'.

    A local file that is not a state dict of ``name`` raises ``WeightsError`` saying what it is instead.
    """
    import open_clip
    from .weightfiles import weights_error, weights_problem
    check_model_name(name)
    weights, weights_id = resolve_weights(name, pretrained, cache_dir)
    schema = name.startswith(SCHEMES)
    local_file = Path(weights) if weights is not None and not schema and Path(weights).is_file() else None
    import logging
    if weights is None:  # open_clip warns "No pretrained weights loaded": the label says RANDOM WEIGHTS instead
        logging.disable(logging.WARNING)
    try:
        model, pre_train, pre_val = open_clip.create_model_and_transforms(
            name, pretrained=None if schema else weights, device=device, cache_dir=cache_dir,
            load_weights=weights is not None)
    except (MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as exc:
        found = weights_problem(name, local_file) if local_file is not None else None
        if found is None and isinstance(exc, OSError) and not online():  # a Hugging Face text tower's config
            meta_model(name)  # raises the OfflineError that says what to prefetch
        if found is None:  # not the file's fault (or not a file at all): the original error is the right one
            raise
        # `from None`: the raw loader error (pickle opcodes, key dumps, "weights_only" advice) helps nobody here
        raise weights_error(name, local_file, found, _a_tag(name)) from None
    finally:
        logging.disable(logging.NOTSET)
    model.eval()
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = cfg.get("size", model.visual.image_size)
    size = size[0] if isinstance(size, (tuple, list)) else size
    return LoadedCLIP(
        model=model, name=name, pretrained=pretrained or "random",
        weights_id=weights_id, image_size=int(size),
        mean=tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD)),
        preprocess_train=pre_train, preprocess_val=pre_val,
    )


def architecture_of(name: str) -> Any:
    """The ``towers.Architecture`` of model ``name``, built on the meta device (no weights, no memory, no download):
    which methods apply, known before any work."""
    if name not in _ARCHITECTURES:
        from .towers import architecture
        _ARCHITECTURES[name] = architecture(meta_model(name), name)
    return _ARCHITECTURES[name]


def meta_model(name: str) -> nn.Module:
    """Model ``name``'s architecture on the meta device: every shape, no values (counting parameters, its towers'
    facts); a Hugging Face text tower that is not cached offline is an ``OfflineError``."""
    import logging
    import open_clip
    check_model_name(name)
    logging.disable(logging.WARNING)
    try:
        with torch.device("meta"):
            return open_clip.create_model(name, device="meta", load_weights=False)
    except OSError as exc:  # transformers looking for a config on the hub
        if online():
            raise
        raise OfflineError(f"'{name}' has a Hugging Face text tower whose config is not in the local cache, and this "
                           f"machine is offline ({str(exc).splitlines()[0]}). Fix: on a machine with internet run "
                           f"`python -m clipft_utils prefetch --model {name}`.") from None
    finally:
        logging.disable(logging.NOTSET)


_ARCHITECTURES: dict[str, Any] = {}


def _a_tag(name: str) -> str:
    """A weights tag ``name`` has (for messages): 'openai' where it exists."""
    import open_clip
    tags = list(open_clip.list_pretrained_tags_by_model(name)) + [t for (m, t) in LOCAL_WEIGHTS if m == name]
    return DEFAULT_PRETRAINED if DEFAULT_PRETRAINED in tags or not tags else tags[0]


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

    def train(self, mode: bool = True) -> "CLIPClassifier":
        """Training mode, with every BatchNorm of the tower kept in eval mode: its statistics stay the pretrained ones
        in every method (a few-shot batch would overwrite them, and no model folder stores them)."""
        from .towers import freeze_batch_norm_stats
        super().train(mode)
        freeze_batch_norm_stats(self.visual)
        return self


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
