"""Profiles and the config every trained method shares (``TrainConfig``), with the checks its fields use.

Each method's own config class, and its per-profile defaults, live beside it in ``methods/<id>.py``;
``methods.make_config`` builds one for a profile."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")



@dataclass(frozen=True)
class Profile:
    """Which model, weights and dataset a run uses; `smoke` is the offline stand-in, `full` the real course.

    What a profile changes in a method (its epochs, its notebook's sweeps) is declared by the method's own module
    (``Method.profiles``; its notebook's parameters: the course's ``Section``), never by a branch on the profile's name."""

    name: str
    model: str
    pretrained: str
    dataset: str
    batch_size: int
    eval_batch_size: int
    test_per_class: int | None = None  # None: the whole test split; k: a balanced k-per-class subset of it
    note: str = ""
    rehearsal: bool = False  # the real code at the real shapes on generated data: never a result
    shots: int | None = None  # default k training images per class (None: the whole split)
    extra_epochs: int | None = 1  # epochs of 06's extra trainings (None: each method's own)
    flag: str | None = None  # run_all.sh's option for it: "--smoke"; "" for the default profile; None: --profile NAME
    downloads: bool = False  # its weights or data come from the network (offline errors then say how to switch)
    max_steps_per_epoch: int | None = None  # every training's cap on steps per epoch (the rehearsal: 1)
    disk_mb: int = 6000  # free disk a course run needs for its results, checkpoints and caches (checked before work)
    budget_scale: float = 1.0  # every training's step budget times this factor (see TrainConfig.budget)


MIN_STEPS_PER_EPOCH = 10
"""The floor of the image-side recipes (BitFit, prefix-tuning, LoRA, full fine-tuning): at least 10 optimizer steps per
epoch, so that a few-shot split or a small folder (60 images are 2 batches of 32) still trains 10 x epochs steps,
its loader cycled, instead of a handful. Flowers102's split (32 batches per pass) never reaches it."""
SMOKE_STEPS = {"epochs": 5, "min_steps_per_epoch": 16}
"""The smoke recipe of every method that trains on images: 5 epochs of at least 16 steps (SynthFlowers' pass at batch
64: a small folder of your own trains as many steps as the stand-in's split, its loader cycled)."""
SMOKE_BUDGET_SCALE = 0.6
"""The smoke profile's factor on every step budget: its recipes (5 epochs, at least 16 steps each; CLIP-LoRA 8 · k
steps) give 80 steps on SynthFlowers, x 0.6 = 48 for every main row that trains on images, which keeps the whole smoke
course's notebooks within their 480-second budget on 2 CPU cores (measured: see README)."""

PROFILES: dict[str, Profile] = {
    "full": Profile(
        name="full", model="ViT-B-32", pretrained="openai", dataset="flowers102",
        batch_size=32, eval_batch_size=256, extra_epochs=None, downloads=True, flag="",
        note="real: open_clip ViT-B-32 (OpenAI weights) on Oxford Flowers102",
    ),
    "smoke": Profile(
        name="smoke", model="ToyCLIP", pretrained="synthflowers", dataset="synthflowers",
        batch_size=64, eval_batch_size=64,  # on this CPU a batch of 512 evaluates 1.75x slower than 64 (measured)
        # ~20 test evaluations per course run: 20 per class (2,040 of 6,149 images, same subset for every method)
        # keeps the course under 10 minutes; the standard error of a top-1 near 35 % is then about 1 point.
        test_per_class=20, flag="--smoke", disk_mb=400, budget_scale=SMOKE_BUDGET_SCALE,
        note="STAND-IN: ToyCLIP pretrained by this project on SynthFlowers (not CLIP, not Flowers102)",
    ),
    # The real profile's code at the real shapes (ViT-B-32 at 224 px, torchvision's Flowers102 on the official
    # layout, the full profile's batch sizes) with random weights on generated images, sized to run the whole
    # course in about 10 minutes on 2 CPU cores: 1 training image per class (validation then uses 1 per class),
    # 1 test image per class, 1 epoch of 1 step (a full batch: the shapes and memory of a real step; more steps
    # prove nothing more on random weights), the smallest sweeps. Its numbers are never results.
    "rehearse": Profile(
        name="rehearse", model="ViT-B-32", pretrained="random", dataset="flowers102",
        batch_size=32, eval_batch_size=256, rehearsal=True, shots=1, test_per_class=1, flag="--rehearse",
        max_steps_per_epoch=1, disk_mb=1500,
        note="REHEARSAL: ViT-B-32 with random weights on generated Flowers102-shaped images",
    ),
}

PREPARE_DATA: dict[str, Any] = {}
"""Profile name -> a function that makes the profile's own data (once) and returns its root (plug-ins fill it)."""


def profile_data_root(profile: "Profile", echo=print) -> str | None:
    """The data root a profile brings with it (the rehearsal's generated folder), or None: the usual data/."""
    from . import plugins
    plugins.load()
    prepare = PREPARE_DATA.get(profile.name)
    return None if prepare is None else str(prepare(echo))


def extra_epochs(profile: "Profile", epochs: int | None, extra: int | None) -> int | None:
    """Epochs of notebook 06's extra trainings (base-to-novel, LP→FT, adapter B): ``extra`` if given, else
    ``epochs`` if given (one knob reaches every training), else the profile's (None: each method's own)."""
    if extra is not None:
        return extra
    if epochs is not None:
        return epochs
    return profile.extra_epochs


def get_profile(name: str) -> Profile:
    """Look up a profile by name, with an error that lists the valid ones."""
    if name not in PROFILES:
        raise ConfigError(f"Unknown profile '{name}'. Fix: use one of {', '.join(PROFILES)}.")
    return PROFILES[name]


def check_positive(cfg: Any, *names: str) -> None:
    """Each named field of ``cfg`` is None or a finite number > 0, else a ConfigError naming it."""
    for name in names:
        value = getattr(cfg, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ConfigError(
                f"{type(cfg).__name__}.{name} must be a positive number, got {value!r}. "
                f"Fix: pass {name}=<a value > 0>."
            )


def check_non_negative(cfg: Any, *names: str) -> None:
    """Each named field of ``cfg`` is None or a number >= 0."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and (not isinstance(value, (int, float)) or value < 0):
            raise ConfigError(f"{type(cfg).__name__}.{name} must be >= 0, got {value!r}.")


def check_integer(cfg: Any, *names: str) -> None:
    """Each named field of ``cfg`` is None or a whole number."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{type(cfg).__name__}.{name} must be a whole number, got {value!r}.")


@dataclass
class TrainConfig:
    """Settings of the one training engine, shared by every trainable method."""

    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3               # learning rate of the method's own parameters (the "backbone" group)
    head_lr: float | None = None   # learning rate of the classifier head; None = same as lr
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.0     # linear warm-up, then cosine decay to 0
    grad_clip: float | None = None  # max global gradient norm; None = no clipping
    grad_accum_steps: int = 1
    precision: str = "auto"        # auto: bf16 (or fp16 + grad scaler) on CUDA, fp32 on CPU
    patience: int | None = 10      # early stopping on validation top-1; None = never stop early
    label_smoothing: float = 0.0
    checkpoint_every: int = 1      # epochs between training checkpoints (resume points)
    max_steps_per_epoch: int | None = None  # stop each epoch after this many optimizer steps; None: the whole split
    # The step budget (``budget``): None = ``epochs`` passes over the training split; ``steps``: that many optimizer
    # steps; ``steps_per_shot``: that many per training image per class (CLIP-LoRA's 500 x k); never fewer than
    # ``min_steps_per_epoch`` per epoch (a small split's loader is cycled); times ``budget_scale`` (the profile's).
    steps: int | None = None
    steps_per_shot: int | None = None
    min_steps_per_epoch: int | None = None
    budget_scale: float = 1.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise a ConfigError naming the first bad field."""
        check_integer(self, "epochs", "batch_size", "grad_accum_steps", "patience", "checkpoint_every",
                 "max_steps_per_epoch", "steps", "steps_per_shot", "min_steps_per_epoch")
        check_positive(self, "epochs", "batch_size", "lr", "head_lr", "grad_accum_steps", "grad_clip", "patience",
                  "checkpoint_every", "max_steps_per_epoch", "steps", "steps_per_shot", "min_steps_per_epoch",
                  "budget_scale")
        check_non_negative(self, "weight_decay", "warmup_epochs", "label_smoothing")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"{type(self).__name__}.precision must be one of {PRECISIONS}, got {self.precision!r}."
            )
        if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
            raise ConfigError(
                f"{type(self).__name__}.warmup_epochs ({self.warmup_epochs}) must be smaller than "
                f"epochs ({self.epochs}). Fix: lower warmup_epochs or raise epochs."
            )
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"{type(self).__name__}.label_smoothing must be in [0, 1), got {self.label_smoothing}.")

    def budget(self, batches: int, images_per_class: float | None = None) -> "Budget":
        """The run's optimizer steps on a training split of ``batches`` loader batches (see ``Budget``)."""
        return plan_budget(self, batches, images_per_class)

    @property
    def effective_head_lr(self) -> float:
        """The head's learning rate (falls back to ``lr``)."""
        return self.head_lr if self.head_lr is not None else self.lr

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON view of the config."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class Budget:
    """A run's optimizer steps: ``total``, split over the epochs (``per_epoch``; validation after each), the steps of
    one pass over the training split, and ``rule``: how the total was set, in words."""

    total: int
    per_epoch: tuple[int, ...]
    steps_per_pass: int
    rule: str

    @property
    def cycled(self) -> bool:
        """True when the run trains more steps than its epochs' passes (a small split's loader is cycled)."""
        return self.total > len(self.per_epoch) * self.steps_per_pass

    def first_step(self, epoch: int) -> int:
        """The run's step count when ``epoch`` (0-based) begins."""
        return sum(self.per_epoch[:epoch])


def _base_steps(cfg: TrainConfig, per_pass: int, images_per_class: float | None) -> tuple[int, str]:
    """The recipe's steps before the floor and the scale, and how they were set."""
    if cfg.steps is not None:
        return cfg.steps, f"{cfg.steps} step(s)"
    if cfg.steps_per_shot is not None:
        if not images_per_class:
            raise ConfigError(f"{type(cfg).__name__}.steps_per_shot={cfg.steps_per_shot} needs the training images per "
                              "class. Fix: pass images_per_class to fit() (train_method does), or set steps instead.")
        n = max(1, round(cfg.steps_per_shot * images_per_class))
        return n, f"{cfg.steps_per_shot} × {images_per_class:g} image(s) per class = {n} step(s)"
    return cfg.epochs * per_pass, f"{cfg.epochs} epoch(s) × {per_pass} step(s)"


def plan_budget(cfg: TrainConfig, batches: int, images_per_class: float | None = None) -> Budget:
    """The run's optimizer steps on ``batches`` loader batches per pass: the recipe (``steps``, ``steps_per_shot`` x
    images per class, or ``epochs`` passes), raised to ``min_steps_per_epoch`` per epoch, times ``budget_scale``,
    capped at ``max_steps_per_epoch`` per epoch, at least one step per epoch; split evenly over the epochs."""
    per_pass = math.ceil(batches / cfg.grad_accum_steps)
    base, rule = _base_steps(cfg, per_pass, images_per_class)
    if cfg.min_steps_per_epoch and cfg.epochs * cfg.min_steps_per_epoch > base:
        base = cfg.epochs * cfg.min_steps_per_epoch
        rule += f", raised to {cfg.epochs} × {cfg.min_steps_per_epoch} (at least {cfg.min_steps_per_epoch} per epoch)"
    total = base
    if cfg.budget_scale != 1.0:
        total = max(1, math.floor(base * cfg.budget_scale + 0.5))
        rule += f" × {cfg.budget_scale:g} (the profile's budget scale)"
    if cfg.max_steps_per_epoch and total > cfg.epochs * cfg.max_steps_per_epoch:
        total = cfg.epochs * cfg.max_steps_per_epoch
        rule += f", at most {cfg.max_steps_per_epoch} per epoch"
    total = max(total, cfg.epochs)
    per_epoch = tuple(total * (e + 1) // cfg.epochs - total * e // cfg.epochs for e in range(cfg.epochs))
    if not rule.endswith(f"= {total} step(s)"):
        rule += f" = {total} step(s)"
    return Budget(total, per_epoch, per_pass, rule)
