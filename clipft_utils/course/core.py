"""What every notebook does in its setup cell, and the one way a trainable method is run and recorded."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import data as D
from ..config import Profile, get_profile, profile_data_root
from ..datasets import Dataset, check_noting, get_dataset, is_folder
from ..errors import ConfigError, DatasetError, OfflineError
from ..labels import run_label, warnings_for
from ..methods import get as get_method
from ..models import STANDIN_MODELS, CLIPClassifier, LoadedCLIP, count_parameters, load_clip, resolve_device
from ..paths import PROJECT_ROOT, atomic_path, ensure_writable, results_root
from ..results import make_result, point_suffix, result_path, run_name, save_result
from ..seeding import seed_everything


@dataclass
class Course:
    """A notebook's world: profile, model, data splits, results folder — built once by ``setup``."""

    profile: Profile
    loaded: LoadedCLIP
    splits: dict[str, D.ImageSplit]
    data: Dataset
    seed: int
    device: torch.device
    results_dir: Path
    batch_size: int
    eval_batch_size: int
    sampling: dict = field(default_factory=dict)   # shots, val_per_class, test_per_class as used
    _heads: dict = field(default_factory=dict, repr=False)

    @property
    def dataset(self) -> str:
        """The dataset's display name (as every result and figure names it)."""
        return self.data.display

    @property
    def standin(self) -> bool:
        """True when the numbers come from the offline stand-in (its model or its data), not from real data."""
        return self.loaded.is_standin or self.data.standin

    @property
    def warnings(self) -> list[str]:
        """What every number of this course must be labelled with (stand-in, random weights, rehearsal)."""
        notes = [STANDIN_MODELS.get(self.loaded.name, ""), self.data.standin_note if self.data.standin else ""]
        return warnings_for(standin_notes=notes, random_weights=self.loaded.random_weights,
                            rehearsal=self.profile.rehearsal)

    @property
    def label(self) -> str:
        """Model / weights / dataset line that every table and figure carries."""
        return run_label(self.loaded.name, self.loaded.pretrained, self.dataset, self.warnings)

    @property
    def classnames(self) -> list[str]:
        return self.data.classnames

    def templates(self, ensemble: bool = False) -> list[str]:
        """The dataset's prompt template (or template ensemble)."""
        return self.data.templates(ensemble)

    def zero_shot_head(self, ensemble: bool = False) -> torch.Tensor:
        """``logit_scale * text embeddings`` of the class prompts (computed once per course)."""
        if ensemble not in self._heads:  # computed once per model, weights, classes and templates (features.py)
            from ..features import zero_shot_head as cached
            self._heads[ensemble] = cached(self.loaded, self.classnames, self.templates(ensemble))
        return self._heads[ensemble]

    def describe(self) -> str:
        """Images per split and per class as actually loaded (and how many were asked for), and the device."""
        def part(split: str, key: str, what: str) -> str:
            per = np.bincount(self.splits[split].targets, minlength=len(self.classnames))
            lo, hi, asked = int(per.min()), int(per.max()), self.sampling.get(key)
            count = f"{lo}" if lo == hi else f"{lo}-{hi}"
            short = f"; {asked} asked, only {lo} available" if asked and lo < asked else ""
            return f"{split} {len(self.splits[split]):,} ({count} {what} per class{short})"
        keys = {"train": ("shots", "shot(s)" if self.shots else "image(s)"), "val": ("val_per_class", "image(s)"),
                "test": ("test_per_class", "image(s)")}
        return " · ".join(part(s, *keys[s]) for s in keys if s in self.splits) + f" images on {self.device}"

    def identity(self) -> dict[str, Any]:
        """The fields every result row of this course carries (what produced it, and its label; ``base_params``:
        the pretrained model's parameters, both towers, the one denominator of every row's trainable percentage)."""
        return dict(model=self.loaded.name, pretrained=self.loaded.pretrained, weights_id=self.loaded.weights_id,
                    dataset=self.dataset, dataset_id=self.data.identity, profile=self.profile.name, seed=self.seed,
                    standin=self.standin, warnings=self.warnings, device=self.device,
                    shots=self.shots, val_per_class=self.sampling.get("val_per_class"),
                    n_train=len(self.splits["train"]) if "train" in self.splits else None,
                    n_val=len(self.splits["val"]) if "val" in self.splits else None,
                    base_params=self.base_params)

    @property
    def base_params(self) -> int:
        """Parameters of the pretrained model the course loaded (image and text towers)."""
        return sum(p.numel() for p in self.loaded.model.parameters())

    @property
    def images_per_class(self) -> float | None:
        """Training images per class (k of a k-shot split; the mean over classes): what a budget per shot multiplies."""
        if "train" not in self.splits or not self.classnames:
            return None
        return round(len(self.splits["train"]) / len(self.classnames), 2)

    def train_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The first training batch (augmented, on the device): the batch a step's costs are counted on."""
        images, labels = next(iter(self.loader("train", train=True)))[:2]
        return images, labels

    @property
    def shots(self) -> int | None:
        """Training images per class when the train split is a k-shot sample (None: the whole split)."""
        return self.sampling.get("shots")

    def classifier(self, head: torch.Tensor | None = None) -> CLIPClassifier:
        """A fresh classifier: a *copy* of the pretrained image tower + a head (zero-shot by default)."""
        head = self.zero_shot_head() if head is None else head
        visual = copy.deepcopy(self.loaded.model.visual)
        return CLIPClassifier(visual, head.detach().clone()).to(self.device)

    def loader(self, split: str, train: bool = False, batch_size: int | None = None, sharded: bool = False):
        """Batches of a split on the course's device: shuffled and augmented for training, plain for evaluation.

        ``sharded``: under torchrun each rank gets its part of every (global) batch."""
        from .. import distributed
        from ..loader import CachedLoader
        bs = batch_size or (self.batch_size if train else self.eval_batch_size)
        rank, world = (distributed.rank(), distributed.world()) if sharded else (0, 1)
        return CachedLoader(self.splits[split], bs, shuffle=train, augment=train, seed=self.seed, device=self.device,
                            rank=rank, world=world)

    def default(self, name: str, value: Any = None) -> Any:
        """A notebook parameter: ``value`` when given, else this profile's default for it (declared by the method
        that owns the parameter, ``Method.notebook_defaults``; the full profile's when this one sets none)."""
        from .sections import notebook_default
        return value if value is not None else notebook_default(self.profile.name, name)

    def applies(self, method: str, cfg: Any = None, skipped: str = "") -> "Applies":
        """Whether ``method`` (with ``cfg``) applies to this course's model: truthy, or falsy with the reason, which it
        prints; ``skipped`` names what a notebook skips where only a setting does not apply (default: the method's cells,
        and 07 shows it as not applicable). ``%%when <the flag>`` skips those cells and prints the reason again."""
        from ..methods import get
        from ..methods.base import not_applicable_message, reason_not_applicable
        spec = get(method)
        reason = reason_not_applicable(spec, self.loaded.architecture, cfg)
        if reason is None:
            return Applies(True)
        if skipped:  # a setting of a method that runs (06: gradient checkpointing on a ResNet)
            print(f"{skipped}: {reason}.")
            return Applies(False, f"{skipped}: {reason}")
        message = not_applicable_message(spec, self.loaded.architecture, reason).split(" Fix:")[0]
        print(f"{message} Its cells below are skipped, and 07 shows it as not applicable.")
        return Applies(False, f"{spec.title} does not apply to {self.loaded.name}: {reason}")

    def tower_is(self, family: str, what: str) -> "Applies":
        """Whether the image tower is of ``family`` (``towers.FAMILIES``): cells that show ``what`` in that family's
        own modules run only then."""
        from ..towers import FAMILIES, facts
        found = facts(self.loaded.model.visual)
        if found.family == family:
            return Applies(True)
        return Applies(False, f"{what} reads {FAMILIES[family]}'s modules; {self.loaded.name}'s tower is {found.arch} "
                              "(the method itself ran on it above)")

    def run_id(self, method: str, variant: str | None = None) -> str:
        """What a training checkpoint must match besides its config: model, weights, data, images, seed."""
        parts = [method, variant, self.loaded.name, self.loaded.weights_id, self.data.identity, self.seed,
                 *(self.splits[s].cache_key for s in ("train", "val") if s in self.splits)]
        return hashlib.sha1(json.dumps(parts, default=str).encode()).hexdigest()[:16]

    def features(self, split: str, progress: bool = True):
        """Cached frozen features of a split (see features.extract_features)."""
        from ..features import extract_features
        return extract_features(self.loaded.model.visual, self.splits[split], model_name=self.loaded.name,
                                weights_id=self.loaded.weights_id, batch_size=self.eval_batch_size,
                                device=self.device, progress=progress)

    def run_name(self, method: str, variant: str | None = None) -> str:
        """``<method>[-<variant>][_shots<k>]_seed<seed>``: the stem of this course's files for a run."""
        return run_name(method, self.seed, variant, self.shots)

    def result_path(self, method: str, variant: str | None = None) -> Path:
        return result_path(self.results_dir, method, self.seed, variant, self.shots)

    def title(self, text: str) -> str:
        """Figure title with the model / data line underneath."""
        return f"{text}\n{self.label}"

    def save_figure(self, fig, name: str, *, per_run: bool = True) -> Path:
        """Save a figure under ``<results>/figures/`` (and leave it for inline display).

        A run's figure is named like its executed notebook (``_shots<k>``, ``_seed<s>`` when not 0), so the points
        of a grid never overwrite each other's figures; ``per_run=False`` for a figure drawn from every run.
        """
        folder = ensure_writable(self.results_dir / "figures")
        path = folder / f"{name}{point_suffix(self.shots, self.seed) if per_run else ''}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
        return path


@dataclass(frozen=True)
class Applies:
    """A yes, or a no with its reason: what ``%%when`` prints for a cell it skips."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


def results_folder(prof: Profile, data: Dataset) -> Path:
    """``results/<profile>`` for the profile's own dataset, ``results/<profile>-<dataset>`` for any other."""
    name = prof.name if data.name == prof.dataset else f"{prof.name}-{data.slug}"
    return results_root() / name


FEW_SHOT_VAL_CAP = 4
"""CoOp's convention: with k training images per class, validation uses min(k, 4) per class."""
NOTEBOOK_HINT = ('In a notebook: the parameters cell (the first code cell), line 1, set profile = "smoke" for the '
                 "offline stand-in; or start the course with ./lab.sh --smoke, which sets CLIPFT_PROFILE=smoke.")


def _display_defaults() -> None:
    """Show tables whole: class names are long and two of them may differ only in their last words."""
    import pandas as pd
    pd.set_option("display.max_colwidth", None)
    pd.set_option("display.width", 200)


def check_checkout(cwd: Path | None = None) -> None:
    """A notebook of one copy of the course must not run another copy's library (an editable install made
    elsewhere): say which is which, and how to fix it."""
    cwd = Path.cwd() if cwd is None else cwd
    here = next((p for p in (cwd, *cwd.parents) if (p / "clipft_utils" / "__init__.py").exists()
                 and (p / "notebooks").is_dir()), None)
    if here is not None and here.resolve() != PROJECT_ROOT.resolve():
        raise ConfigError(
            f"This notebook belongs to the checkout '{here}', but the kernel imports clipft_utils from "
            f"'{PROJECT_ROOT}' (the environment's install points there). Fix: start JupyterLab with "
            f"'{here}/lab.sh' (it puts its own checkout first), or run '{here}/scripts/bootstrap.sh' once.")


def resolve_profile(profile: str | None) -> Profile:
    """``profile``, else ``$CLIPFT_PROFILE`` (``./lab.sh --smoke`` sets it), else ``full``."""
    return get_profile(profile or os.environ.get("CLIPFT_PROFILE") or "full")


def val_per_class(shots: int | None, val_shots: int | None) -> int | None:
    """Validation images per class: ``val_shots`` if given (0 = all), else min(shots, 4) with k shots, else all."""
    if val_shots is not None:
        return val_shots or None
    return None if shots is None else min(shots, FEW_SHOT_VAL_CAP)


def setup(profile: str | None = None, *, model: str | None = None, pretrained: str | None = None,
          dataset: str | None = None, data_root: str | None = None, seed: int = 0, device: str = "auto",
          batch_size: int | None = None, shots: int | None = None, val_shots: int | None = None,
          results_dir: str | None = None, test_per_class: int | None = None, data_split: Any = None,
          dataset_options: dict | None = None) -> Course:
    """Validate everything, seed, load model and data: the one setup call of every notebook.

    ``profile``: None = ``$CLIPFT_PROFILE`` or ``full``. ``dataset``: a name (``flowers102``, ``synthflowers``,
    ``imagefolder``) or the path of a folder of images; ``data_root``: where its files are. ``shots``: k training
    images per class (None = all, or the profile's default); ``val_shots``: validation images per class (None =
    min(shots, 4) with shots, else all; 0 = all). ``test_per_class``: None = the profile's choice, 0 = the whole
    test split, k = a fixed, balanced subset of k test images per class (the same for every seed). ``data_split``:
    how a folder of images is split (train, val[, test] per class: counts, fractions or 'rest'; None = its default).
    """
    from .params import check_value
    check_checkout()
    prof = resolve_profile(profile)
    for name, value in dict(seed=seed, device=device, batch_size=batch_size, shots=shots, val_shots=val_shots,
                            test_per_class=test_per_class, model=model, pretrained=pretrained,
                            data_root=data_root, results_dir=results_dir, data_split=data_split).items():
        check_value(name, value)
    shots = prof.shots if shots is None else shots
    if dataset is None and data_root is None:
        data_root = profile_data_root(prof)  # a profile that brings its own data (the rehearsal)
    try:
        options = {**(dataset_options or {}), **({"split": data_split} if data_split is not None else {})}
        data = check_noting(get_dataset(dataset or prof.dataset, data_root, **options))
        folder = ensure_writable(Path(results_dir) if results_dir else results_folder(prof, data))
        dev = resolve_device(device)
        seed_everything(seed)
        loaded = load_clip(model or prof.model, pretrained if pretrained is not None else prof.pretrained, device=dev)
    except (OfflineError, DatasetError) as exc:
        if prof.downloads and not (isinstance(exc, DatasetError) and is_folder(dataset)):  # not for your folder
            raise type(exc)(f"{exc}\n{NOTEBOOK_HINT}") from exc
        raise
    test_per_class = prof.test_per_class if test_per_class is None else test_per_class
    val_k = val_per_class(shots, val_shots)
    _display_defaults()
    from .magics import register
    register()  # %%when extras: the notebooks' optional cells
    splits = D.load_splits(data, loaded, shots=shots, seed=seed, test_per_class=test_per_class, val_per_class=val_k)
    return Course(profile=prof, loaded=loaded, splits=splits, data=data, seed=seed, device=dev,
                  results_dir=folder, batch_size=batch_size or prof.batch_size,
                  eval_batch_size=prof.eval_batch_size,
                  sampling={"shots": shots, "val_per_class": val_k, "test_per_class": test_per_class or None})


@dataclass
class RunOutput:
    """What ``train_method`` returns: the trained classifier, its training record and test evaluation."""

    classifier: CLIPClassifier
    train: Any
    test: Any
    result: dict
    path: Path
    val: Any = None


def train_method(course: Course, method: str, cfg, clf: CLIPClassifier, groups: list[dict], *,
                 variant: str | None = None, save: bool = True, progress: bool = True,
                 checkpoint: bool = True, resume: bool | str = "auto", stop_after_epochs: int | None = None,
                 model_dtype: str = "fp16", **extra: Any) -> RunOutput:
    """Train ``clf`` with the one engine, evaluate it on validation and test, write its result, predictions, head and
    model folder (``<results>/models/<run>``: what the method changed, in ``model_dtype``; see ``modelfolder``).

    A checkpoint (``<results>/checkpoints/<run>.pt``) lets a killed run resume; ``resume="auto"`` starts over,
    and says so, when the checkpoint belongs to another run; True refuses it; False ignores it. Under torchrun
    every rank trains and rank 0 evaluates and writes.
    """
    from .. import distributed
    from ..engine import fit
    from ..evaluate import evaluate
    from ..heads import head_path, save_head
    get_method(method)
    name = course.run_name(method, variant)
    ckpt = course.results_dir / "checkpoints" / f"{name}.pt" if checkpoint else None
    if os.environ.get("CLIPFT_FRESH") == "1" and resume:  # the runner's --force: from scratch, never a resume
        resume = False
    train = fit(clf, groups, course.loader("train", train=True, sharded=True), course.loader("val", sharded=True),
                cfg, device=course.device, seed=course.seed, checkpoint_path=ckpt, resume=resume, progress=progress,
                desc=name, run_id=course.run_id(method, variant), stop_after_epochs=stop_after_epochs,
                images_per_class=course.images_per_class)
    if not distributed.is_writer() or not train.completed:  # other ranks, or paused: the checkpoint stays
        return RunOutput(clf, train, None, {}, course.result_path(method, variant))
    start = time.perf_counter()
    test = evaluate(clf, course.loader("test"), device=course.device, precision=cfg.precision)
    eval_seconds = time.perf_counter() - start
    val = train.best_val  # the validation pass of the best epoch (the model now holds its weights)
    if val is None or len(val.labels) != len(course.splits["val"]):
        val = evaluate(clf, course.loader("val"), device=course.device, precision=cfg.precision)
    from ..methods import trainable_parameters
    from ..modelfolder import deployable, save_model
    model, head_only = deployable(method, clf)  # CoOp: a head over the frozen tower; CLIP-LoRA: its image side
    result = make_result(
        method=method, variant=variant, test=test,
        val_acc=train.best_val_acc, trainable_params=sum(p.numel() for p in trainable_parameters(groups)),
        total_params=count_parameters(clf)[1], train_seconds=train.train_seconds, eval_seconds=eval_seconds,
        images_per_second=train.images_per_second, peak_memory_mb=train.peak_memory_mb,
        config=cfg.to_dict(), history=train.history, **course.identity(),
        best_epoch=train.best_epoch, epochs_run=train.epochs_run, precision=train.precision,
        world_size=train.world_size, resumed_from_epoch=train.resumed_from_epoch,
        **run_costs(course, method, cfg, clf, groups, train, model, head_only), **extra)
    path = course.result_path(method, variant)
    if save:
        save_head(head_path(course.results_dir, name), model.head.weight, model.head.bias, method=method,
                  variant=variant or "", model=course.loaded.name, dataset=course.dataset)
        folder = save_model(course, method, model, result=result, variant=variant, config=cfg, dtype=model_dtype,
                            head_only=head_only, check=None if head_only else (course.loader("test"), test))
        from ..costs import folder_facts
        result.update(folder_facts(folder))
        path = save_result(result, course.results_dir, predictions=test, val_predictions=val)
    if ckpt is not None:
        ckpt.unlink(missing_ok=True)  # the run finished: its resume point is no longer needed
    return RunOutput(clf, train, test, result, path, val)


def run_costs(course: Course, method: str, cfg: Any, clf: torch.nn.Module, groups: list[dict], train: Any,
              model: torch.nn.Module, head_only: bool) -> dict[str, Any]:
    """A trained run's costs (see ``clipft_utils.costs``): its steps and budget, the FLOPs of a step and of the run,
    its training memory by accounting (and the CUDA peak on a GPU), its step time against one frozen forward pass,
    and the inference FLOPs per image and the numbers of ``model``, the deployed form of ``clf``."""
    from .. import costs
    from ..methods import trainable_parameters
    images, labels = course.train_batch()
    counted = costs.training_costs(clf, trainable_parameters(groups), images, labels, train.precision,
                                   cfg.grad_accum_steps)
    timed = train.step_time.get("step_ms") is not None
    forward = costs.frozen_forward_ms(course.loaded.model.visual, images, precision=train.precision) if timed else None
    deployed = costs.deployed_model(model, method, cfg, course.loaded.model.visual, head_only)
    return {**counted, "steps": train.steps, "epochs": train.epochs_run, "budget": train.budget,
            "train_tflops": costs.run_tflops(train.steps, counted["flops_per_step"]),
            **costs.step_time_fields(train.step_time, forward),
            "gflops_per_image": costs.flops_per_image(deployed, images[:2]) / 1e9,
            "deployed_params": costs.deployed_params(model, method, head_only),
            "cuda_peak_mb": train.peak_memory_mb, "cuda_peak_measure": train.memory_measure or None}

