"""Load CLIP models (real weights, a local file, or the offline ToyCLIP) and build classifiers from them."""
from __future__ import annotations

import difflib
import hashlib
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, OfflineError

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
        """True for the project's ToyCLIP (never to be reported as CLIP)."""
        from . import toyclip
        return self.name == toyclip.MODEL_NAME


def _register_toyclip() -> None:
    from . import toyclip
    toyclip.register()


def check_model_name(name: str) -> str:
    """Return ``name`` if open_clip knows the architecture, else raise with close matches."""
    import open_clip
    _register_toyclip()
    known = open_clip.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"Unknown model '{name}'.{hint} Fix: pass a name from open_clip.list_models() "
            "(the course uses 'ViT-B-32'; 'ToyCLIP' is the offline stand-in)."
        )
    return name


def _file_id(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return f"file-{h.hexdigest()[:12]}"


def _online(host: str = "huggingface.co", timeout: float = 1.0) -> bool:
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
    from . import toyclip
    pretrained = (pretrained or "").strip()
    if pretrained.lower() in RANDOM_WEIGHTS:
        return None, "random"
    if name == toyclip.MODEL_NAME and pretrained == toyclip.TAG:
        path = toyclip.checkpoint_path()
        return str(path), f"{toyclip.TAG}-{_file_id(toyclip.ASSET_PATH)[5:13]}"  # new build, new cache keys
    path = Path(pretrained).expanduser()
    if path.is_file():
        return str(path), _file_id(path)
    if any(sep in pretrained for sep in ("/", "\\")) or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
        raise ConfigError(f"Weights file '{pretrained}' does not exist. Fix: check the path, or pass a tag "
                          f"such as '{DEFAULT_PRETRAINED}'.")
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        raise ConfigError(
            f"Model '{name}' has no weights tagged '{pretrained}'. Fix: use one of {tags or ['random']}, "
            "a local checkpoint path, or 'random'."
        )
    if cached_weights(name, pretrained, cache_dir) is None and not _online():
        raise OfflineError(
            f"The weights '{name}' / '{pretrained}' are not in the local cache and this machine is offline "
            f"(or HF_HUB_OFFLINE=1). Fix: on a machine with internet run "
            f"`python -m clipft_utils prefetch --model {name} --pretrained {pretrained}` (it fills the cache "
            "this machine reads), or use the offline stand-in: profile 'smoke' (model 'ToyCLIP')."
        )
    return pretrained, pretrained


def load_clip(name: str = DEFAULT_MODEL, pretrained: str | None = DEFAULT_PRETRAINED,
              device: str | torch.device = "cpu", cache_dir: str | None = None) -> LoadedCLIP:
    """Load an open_clip model by name and weights tag, local checkpoint path, or 'random'."""
    import open_clip
    check_model_name(name)
    weights, weights_id = resolve_weights(name, pretrained, cache_dir)
    model, pre_train, pre_val = open_clip.create_model_and_transforms(
        name, pretrained=weights, device=device, cache_dir=cache_dir)
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
