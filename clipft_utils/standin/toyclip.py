"""ToyCLIP: a tiny open_clip model (ViT-B-32's classes, 8M parameters) that this project pretrains itself on
SynthFlowers captions — the offline STAND-IN for CLIP. Its numbers are never CLIP's numbers.

The shipped asset ``standin/assets/toyclip_synthflowers.pt`` is a *compact* checkpoint (fp16 tensors, and only the
rows of the token embedding that pretraining changed); :func:`checkpoint_path` expands it once into an
ordinary open_clip state dict, so the course loads ToyCLIP exactly like real weights from a local file::

    open_clip.create_model_and_transforms("ToyCLIP", pretrained=str(toyclip.checkpoint_path()))
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import synth
from ..errors import DatasetError
from ..models import LocalWeights, file_id, register_local_weights
from ..paths import atomic_path, cache_dir
from ..seeding import seed_everything

MODEL_NAME = "ToyCLIP"
TAG = "synthflowers"
ASSETS = Path(__file__).resolve().parent / "assets"
CONFIG_PATH = ASSETS / "ToyCLIP.json"
ASSET_PATH = ASSETS / "toyclip_synthflowers.pt"
FORMAT = "clipft-toyclip-compact"
FORMAT_VERSION = 1
TOKEN_KEY = "token_embedding.weight"
TOKEN_INIT_STD = 0.02  # open_clip's own init std for the token embedding
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

DEFAULTS = dict(steps=360, batch_size=128, lr=1e-3, weight_decay=0.1, warmup=36, threads=2, bf16=True)
"""The build recipe of the shipped checkpoint (about 4 minutes on 2 CPU cores)."""


# --------------------------------------------------------------------------- model
def register() -> None:
    """Make open_clip know the ``ToyCLIP`` architecture (idempotent)."""
    import open_clip
    if MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_PATH)


def model_config() -> dict:
    """The open_clip model config (``assets/ToyCLIP.json``)."""
    return json.loads(CONFIG_PATH.read_text())


@functools.lru_cache(maxsize=1)
def tokenizer():
    """open_clip's standard CLIP tokenizer (vocab 49408) at ToyCLIP's context length (32); built once."""
    import open_clip
    register()
    return open_clip.get_tokenizer(MODEL_NAME)


def token_embedding_init(seed: int) -> torch.Tensor:
    """The token embedding at initialisation: N(0, 0.02) from numpy's PCG64 seeded with ``[seed, 7]``.

    numpy's generator gives the same numbers on every machine, so the checkpoint need not store the
    (never trained) rows of tokens the corpus does not use: they are re-created from the seed.
    """
    cfg = model_config()["text_cfg"]
    rng = np.random.default_rng([seed, 7])
    values = rng.standard_normal((cfg["vocab_size"], cfg["width"]), dtype=np.float32) * TOKEN_INIT_STD
    return torch.from_numpy(values)


def create_model(seed: int = 0) -> nn.Module:
    """A randomly initialised ToyCLIP (deterministic for ``seed``)."""
    import open_clip
    register()
    torch.manual_seed(seed)
    logging.disable(logging.WARNING)  # open_clip warns "no pretrained weights": that is the point here
    try:
        model = open_clip.create_model(MODEL_NAME)
    finally:
        logging.disable(logging.NOTSET)
    with torch.no_grad():
        model.token_embedding.weight.copy_(token_embedding_init(seed))
    return model


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> normalised float [N, 3, H, W] (open_clip's eval preprocessing at 64 px)."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float().div_(255)
    mean, std = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    return (x - mean) / std


# --------------------------------------------------------------------------- pretraining
def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay weight matrices only: not gains, biases, logit_scale, nor the token embedding (the rows of
    tokens the corpus never uses then keep their seeded initial values, so the checkpoint can omit them)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or name == TOKEN_KEY else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _cosine(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up then cosine decay to 0, as a multiplier of the base learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def _train_step(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], loss_fn, opt, bf16: bool) -> float:
    """One contrastive step (bf16 autocast, math attention kernels: fastest deterministic CPU path)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    images, tokens = batch
    with sdpa_kernel(SDPBackend.MATH), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        image_features, text_features, logit_scale = model(images, tokens)
        loss = loss_fn(image_features.float(), text_features.float(), logit_scale.float())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
    return loss.item()


def pretrain(steps: int = DEFAULTS["steps"], batch_size: int = DEFAULTS["batch_size"], seed: int = 0,
             progress: bool = True, lr: float = DEFAULTS["lr"], weight_decay: float = DEFAULTS["weight_decay"],
             warmup: int = DEFAULTS["warmup"], threads: int = DEFAULTS["threads"],
             bf16: bool = DEFAULTS["bf16"]) -> tuple[nn.Module, dict]:
    """Contrastive pretraining (open_clip's ClipLoss, AdamW, cosine schedule) on fresh SynthFlowers
    pretraining-style batches; identical weights for the same seed on one machine."""
    from open_clip.loss import ClipLoss
    from tqdm.auto import tqdm
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        seed_everything(seed)
        model = create_model(seed).train()
        tok, rng = tokenizer(), np.random.default_rng([seed, 11])
        opt = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6,
                                fused=True)  # fused: the fastest CPU AdamW
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine(s, steps, min(warmup, steps - 1)))
        loss_fn, losses = ClipLoss(), []
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in tqdm(range(steps), desc="pretrain ToyCLIP", disable=not progress):
            images, captions = synth.pretraining_batch(rng, batch_size)
            losses.append(_train_step(model, (to_tensor(images), tok(captions)), loss_fn, opt, bf16))
            sched.step()
    finally:
        torch.set_num_threads(old_threads)
    metrics = {"steps": steps, "batch_size": batch_size, "seed": seed, "lr": lr, "weight_decay": weight_decay,
               "warmup": warmup, "threads": threads, "bf16": bf16, "final_loss": float(np.mean(losses[-20:])),
               "loss_curve": [round(v, 4) for v in losses[:: max(1, steps // 50)]],
               "train_seconds": round(time.perf_counter() - start, 1),
               "train_cpu_seconds": round(time.process_time() - cpu_start, 1)}
    return model.eval(), metrics


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def class_text_features(model: nn.Module, classnames: Sequence[str] = synth.CLASSNAMES,
                        templates: Sequence[str] = synth.TEMPLATES) -> torch.Tensor:
    """Normalised per-class text embeddings [C, D] (templates averaged, then renormalised)."""
    tokens = tokenizer()([t.format(c) for c in classnames for t in templates])
    emb = F.normalize(model.encode_text(tokens).float(), dim=-1).view(len(classnames), len(templates), -1)
    return F.normalize(emb.mean(1), dim=-1)


@torch.no_grad()
def image_features(model: nn.Module, images: np.ndarray, batch_size: int = 512) -> torch.Tensor:
    """Normalised image embeddings [N, D] of uint8 images at ToyCLIP's 64 px."""
    chunks = [model.encode_image(to_tensor(images[i:i + batch_size])).float()
              for i in range(0, len(images), batch_size)]
    return F.normalize(torch.cat(chunks), dim=-1)


@functools.lru_cache(maxsize=5)
def eval_images(split: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of a SynthFlowers split, or ``"pretrain"``: the 102 classes in pretraining style
    (cached: a build evaluates each split several times)."""
    if split == "pretrain":
        images, labels = synth.pretraining_style_split(per_class=10, seed=seed)
    else:
        images, labels = synth.generate_split(split, seed=seed)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def evaluate_zero_shot(model: nn.Module, split: str = "test", templates: Sequence[str] = synth.TEMPLATES,
                       seed: int = 0) -> float:
    """Zero-shot top-1 accuracy (0..1) of ``model`` on a SynthFlowers split (or ``"pretrain"`` style)."""
    images, labels = eval_images(split, seed)
    pred = (image_features(model, images) @ class_text_features(model, templates=templates).T).argmax(1)
    return float((pred.numpy() == labels).mean())


def linear_probe_accuracy(model: nn.Module, seed: int = 0,
                          c_grid: Sequence[float] = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)) -> dict:
    """Build-time sanity check: logistic regression on frozen normalised features (train), C picked on val."""
    from sklearn.linear_model import LogisticRegression
    feats = {s: (image_features(model, x).numpy(), y) for s in ("train", "val", "test")
             for x, y in [eval_images(s, seed)]}
    best = max(c_grid, key=lambda c: _probe(feats, c, "val", LogisticRegression))
    return {"C": best, "val": _probe(feats, best, "val", LogisticRegression),
            "test": _probe(feats, best, "test", LogisticRegression)}


def _probe(feats: dict, c: float, split: str, cls) -> float:
    """Accuracy on ``split`` of a logistic regression with inverse regularisation ``c`` fit on train."""
    clf = cls(C=c, max_iter=2000).fit(*feats["train"])
    return float(clf.score(*feats[split]))


def report(model: nn.Module, seed: int = 0, probe: bool = True) -> dict:
    """Zero-shot accuracy on the downstream test split and on pretraining-style images (seen vs held-out
    compositions), ensemble templates, and (optionally) the linear-probe check."""
    held = np.isin(np.arange(synth.NUM_CLASSES), synth.HELDOUT_CLASSES)
    out: dict[str, Any] = {}
    for split in ("test", "pretrain"):
        images, labels = eval_images(split, seed)
        feats = image_features(model, images)
        for name, templates in (("", synth.TEMPLATES), ("_ensemble", synth.ENSEMBLE_TEMPLATES)):
            correct = (feats @ class_text_features(model, templates=templates).T).argmax(1).numpy() == labels
            out[f"zero_shot_{split}{name}"] = round(float(correct.mean()), 4)
            if not name:
                out[f"zero_shot_{split}_heldout"] = round(float(correct[held[labels]].mean()), 4)
                out[f"zero_shot_{split}_seen"] = round(float(correct[~held[labels]].mean()), 4)
    if probe:
        out["linear_probe"] = linear_probe_accuracy(model, seed)
    return out


# --------------------------------------------------------------------------- compact checkpoint
def compact_state(model: nn.Module, seed: int) -> dict[str, Any]:
    """fp16 tensors, and only the token-embedding rows that differ from their seeded initialisation."""
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tokens = sd.pop(TOKEN_KEY)
    rows = torch.nonzero((tokens != token_embedding_init(seed)).any(1)).flatten()
    return {"tensors": {k: v.half() for k, v in sd.items()}, "token_rows": rows,
            "token_values": tokens[rows].half(), "token_init_seed": seed}


def expand_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The full fp32 open_clip state dict of a compact checkpoint (``ckpt["state"]`` from compact_state)."""
    state = ckpt["state"]
    sd = {k: v.float() for k, v in state["tensors"].items()}
    tokens = token_embedding_init(state["token_init_seed"])
    tokens[state["token_rows"]] = state["token_values"].float()
    sd[TOKEN_KEY] = tokens
    return sd


def _versions() -> dict[str, str]:
    import open_clip
    return {"torch": str(torch.__version__), "open_clip": str(open_clip.__version__), "numpy": str(np.__version__)}


def load_compact(path: str | Path = ASSET_PATH) -> dict[str, Any]:
    """Read a compact checkpoint (tensors and plain metadata only: ``weights_only`` loading)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"The ToyCLIP checkpoint '{path}' is missing. Fix: rebuild it with "
                           "`python -m clipft_utils toyclip build` (about 4 minutes on 2 CPU cores).")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("format") != FORMAT or ckpt.get("format_version") != FORMAT_VERSION:
        raise DatasetError(f"'{path}' is not a version-{FORMAT_VERSION} ToyCLIP checkpoint. Fix: rebuild it "
                           "with `python -m clipft_utils toyclip build`.")
    return ckpt


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def checkpoint_path(asset: str | Path = ASSET_PATH) -> Path:
    """A full open_clip state dict of the shipped ToyCLIP (expanded from ``asset`` once, then reused)."""
    asset = Path(asset)
    full = cache_dir("toyclip") / "toyclip_synthflowers_full.pt"
    stamp = full.with_suffix(".sha256")
    digest = _sha256(asset) if asset.exists() else ""
    if full.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return full
    state = expand_state(load_compact(asset))
    with atomic_path(full) as tmp:
        torch.save(state, tmp)
    with atomic_path(stamp) as tmp:
        tmp.write_text(digest + "\n")
    return full


def load_pretrained() -> nn.Module:
    """The shipped ToyCLIP through open_clip's own loader (eval mode)."""
    import open_clip
    register()
    return open_clip.create_model(MODEL_NAME, pretrained=str(checkpoint_path())).eval()


def build(out: str | Path = ASSET_PATH, seed: int = 0, progress: bool = True, probe: bool = True,
          **pretrain_kwargs: Any) -> dict:
    """Pretrain ToyCLIP, save the compact checkpoint atomically, and return its metadata (with metrics
    measured on the weights exactly as shipped, i.e. after the fp16 round trip)."""
    start = time.perf_counter()
    model, train_info = pretrain(seed=seed, progress=progress, **pretrain_kwargs)
    ckpt = {"format": FORMAT, "format_version": FORMAT_VERSION, "model_name": MODEL_NAME, "tag": TAG,
            "model_config": model_config(), "seed": seed, "train": train_info, "versions": _versions(),
            "dataset": synth.DATASET_NAME, "heldout_classes": list(synth.HELDOUT_CLASSES),
            "state": compact_state(model, seed)}
    shipped = create_model(seed)
    shipped.load_state_dict(expand_state(ckpt))
    ckpt["metrics"] = report(shipped.eval(), probe=probe)
    ckpt["build_seconds"] = round(time.perf_counter() - start, 1)
    with atomic_path(out) as tmp:
        torch.save(ckpt, tmp)
    return {k: v for k, v in ckpt.items() if k != "state"}


# --------------------------------------------------------------------------- command line
def _print_metrics(metrics: dict) -> None:
    for key, value in metrics.items():
        print(f"  {key:32s} {value}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m clipft_utils toyclip build [--steps N] [--out PATH]`` or ``... eval``."""
    parser = argparse.ArgumentParser(prog="python -m clipft_utils toyclip", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="pretrain ToyCLIP and write the compact checkpoint")
    b.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    b.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", default=str(ASSET_PATH))
    b.add_argument("--no-probe", action="store_true", help="skip the linear-probe check")
    e = sub.add_parser("eval", help="zero-shot accuracy of the shipped checkpoint (loaded through open_clip)")
    e.add_argument("--no-probe", action="store_true")
    args = parser.parse_args(argv)
    if args.cmd == "build":
        meta = build(args.out, seed=args.seed, probe=not args.no_probe, steps=args.steps,
                     batch_size=args.batch_size)
        print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.2f} MB) in {meta['build_seconds']} s")
        _print_metrics(meta["metrics"])
    else:
        stored = load_compact()["metrics"]
        print("stored at build time:")
        _print_metrics(stored)
        print("measured now (ToyCLIP loaded through open_clip from the expanded checkpoint):")
        _print_metrics(report(load_pretrained(), probe=not args.no_probe))
    return 0


def weights_id() -> str:
    """The id of the shipped weights in cache keys: a new build gives new keys."""
    return f"{TAG}-{file_id(ASSET_PATH)[5:13]}"


register()  # the plug-in: open_clip learns the architecture, the course learns where its weights are
register_local_weights(LocalWeights(MODEL_NAME, TAG, checkpoint_path, weights_id),
                       standin_note="ToyCLIP (pretrained by this project), not CLIP")

if __name__ == "__main__":
    raise SystemExit(main())
