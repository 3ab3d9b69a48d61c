"""What every notebook does in its setup cell, and the one way a trainable method is run and recorded."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import data as D
from .config import Profile, get_profile, check_method
from .errors import ConfigError
from .models import CLIPClassifier, LoadedCLIP, count_parameters, load_clip, resolve_device, zero_shot_head
from .paths import cache_dir, ensure_writable, results_root
from .results import make_result, result_path, save_result
from .seeding import seed_everything


@dataclass
class Course:
    """A notebook's world: profile, model, data splits, results folder — built once by ``setup``."""

    profile: Profile
    loaded: LoadedCLIP
    splits: dict[str, D.ImageSplit]
    dataset: str
    seed: int
    device: torch.device
    results_dir: Path
    batch_size: int
    eval_batch_size: int
    _heads: dict = field(default_factory=dict, repr=False)

    @property
    def standin(self) -> bool:
        """True when the numbers come from the offline stand-in, not from CLIP on Flowers102."""
        return self.loaded.is_standin or self.dataset != "flowers102"

    @property
    def label(self) -> str:
        """Model / weights / dataset line that every table and figure carries."""
        tag = " — STAND-IN (ToyCLIP on SynthFlowers), not CLIP on Flowers102" if self.standin else ""
        return f"{self.loaded.name} / {self.loaded.pretrained} on {self.dataset}{tag}"

    @property
    def classnames(self) -> list[str]:
        return D.classnames(self.dataset)

    def templates(self, ensemble: bool = False) -> list[str]:
        """The dataset's prompt template (or template ensemble)."""
        return D.templates(self.dataset, ensemble)

    def zero_shot_head(self, ensemble: bool = False) -> torch.Tensor:
        """``logit_scale * text embeddings`` of the class prompts (computed once per course)."""
        if ensemble not in self._heads:
            self._heads[ensemble] = zero_shot_head(self.loaded, self.classnames, self.templates(ensemble)).cpu()
        return self._heads[ensemble]

    def classifier(self, head: torch.Tensor | None = None) -> CLIPClassifier:
        """A fresh classifier: a *copy* of the pretrained image tower + a head (zero-shot by default)."""
        head = self.zero_shot_head() if head is None else head
        visual = copy.deepcopy(self.loaded.model.visual)
        return CLIPClassifier(visual, head.detach().clone()).to(self.device)

    def loader(self, split: str, train: bool = False, batch_size: int | None = None):
        """Loader of a split: shuffled + augmented for training, plain for evaluation."""
        ds = self.splits[split].with_augmentation(train)
        bs = batch_size or (self.batch_size if train else self.eval_batch_size)
        return ds.loader(batch_size=bs, shuffle=train, seed=self.seed)

    def features(self, split: str, progress: bool = True):
        """Cached frozen features of a split (see features.extract_features)."""
        from .features import extract_features
        return extract_features(self.loaded.model.visual, self.splits[split], model_name=self.loaded.name,
                                weights_id=self.loaded.weights_id, batch_size=self.eval_batch_size,
                                device=self.device, progress=progress)

    def result_path(self, method: str, variant: str | None = None) -> Path:
        return result_path(self.results_dir, method, self.seed, variant)

    def title(self, text: str) -> str:
        """Figure title with the model / data line underneath."""
        return f"{text}\n{self.label}"

    def save_figure(self, fig, name: str) -> Path:
        """Save a figure under ``<results>/figures/`` (and leave it for inline display)."""
        folder = ensure_writable(self.results_dir / "figures")
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        return path


def setup(profile: str = "smoke", *, model: str | None = None, pretrained: str | None = None,
          dataset: str | None = None, data_root: str | None = None, seed: int = 0, device: str = "auto",
          batch_size: int | None = None, shots: int | None = None, results_dir: str | None = None,
          test_per_class: int | None = None, verify: bool = True, download: bool = False) -> Course:
    """Validate everything, seed, load model and data: the one setup call of every notebook.

    ``test_per_class``: None = the profile's choice (the whole split on ``full``, 20 per class on ``smoke``),
    0 = the whole test split, k = a fixed, balanced subset of k test images per class (the same for every seed).
    """
    prof = get_profile(profile)
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size <= 0):
        raise ConfigError(f"batch_size must be a positive whole number, got {batch_size!r}.")
    folder = ensure_writable(Path(results_dir) if results_dir else results_root() / prof.name)
    dataset = D.check_dataset(dataset or prof.dataset)
    dev = resolve_device(device)
    seed_everything(seed)
    loaded = load_clip(model or prof.model, pretrained if pretrained is not None else prof.pretrained, device=dev)
    splits = D.load_splits(dataset, loaded, root=data_root, shots=shots, seed=seed, download=download,
                           verify=verify)
    test_per_class = prof.test_per_class if test_per_class is None else test_per_class
    if test_per_class:  # 0 or None: the whole test split
        test = splits["test"]
        splits["test"] = test.subset(D.few_shot_indices(test.targets, min(test_per_class, int(np.bincount(test.targets).min())), 0))
    return Course(profile=prof, loaded=loaded, splits=splits, dataset=dataset, seed=seed, device=dev,
                  results_dir=folder, batch_size=batch_size or prof.batch_size,
                  eval_batch_size=prof.eval_batch_size)


@dataclass
class RunOutput:
    """What ``train_method`` returns: the trained classifier, its training record and test evaluation."""

    classifier: CLIPClassifier
    train: Any
    test: Any
    result: dict
    path: Path


def train_method(course: Course, method: str, cfg, clf: CLIPClassifier, groups: list[dict], *,
                 variant: str | None = None, save: bool = True, progress: bool = True,
                 checkpoint: bool = True, **extra: Any) -> RunOutput:
    """Train ``clf`` on the course's train split with the one engine, evaluate on test, write the result."""
    from .engine import fit
    from .evaluate import evaluate
    check_method(method)
    ckpt = cache_dir("checkpoints", course.profile.name) / f"{method}-{variant or 'main'}_seed{course.seed}.pt" \
        if checkpoint else None
    train = fit(clf, groups, course.loader("train", train=True), course.loader("val"), cfg,
                device=course.device, seed=course.seed, checkpoint_path=ckpt, progress=progress,
                desc=f"{method}{'-' + variant if variant else ''}")
    start = time.perf_counter()
    test = evaluate(clf, course.loader("test"), device=course.device, precision=cfg.precision)
    eval_seconds = time.perf_counter() - start
    trainable, total = count_parameters(clf)
    result = make_result(
        method=method, variant=variant, model=course.loaded.name, pretrained=course.loaded.pretrained,
        dataset=course.dataset, profile=course.profile.name, seed=course.seed, test=test,
        val_acc=train.best_val_acc, trainable_params=trainable, total_params=total,
        train_seconds=train.train_seconds, eval_seconds=eval_seconds,
        images_per_second=train.images_per_second, peak_memory_mb=train.peak_memory_mb,
        config=cfg.to_dict(), history=train.history, device=course.device, standin=course.standin,
        best_epoch=train.best_epoch, precision=train.precision, **extra)
    path = save_result(result, course.results_dir, predictions=test) if save else course.result_path(method, variant)
    if ckpt is not None:
        ckpt.unlink(missing_ok=True)  # the run finished: its resume point is no longer needed
    return RunOutput(clf, train, test, result, path)
