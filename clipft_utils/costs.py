"""What a method costs, counted rather than timed: the same numbers on every machine.

- **Compute**: FLOPs counted by PyTorch's own ``torch.utils.flop_counter.FlopCounterMode`` on the method as applied —
  one training step (forward + backward on a training batch) and one inference image of the model a model folder
  rebuilds (folded, merged). It counts matrix products, convolutions and attention (element-wise work, normalisation
  and the optimizer's update are not counted). PyTorch's counter knows the attention kernels of GPUs; the one CPUs
  run (``_scaled_dot_product_flash_attention_for_cpu``) is given the same formulas here, and ``nn.MultiheadAttention``'s
  inference fast path (a fused kernel the counter cannot see into) is switched off while counting.
- **Training memory by accounting**: parameters (the whole model as it trains, frozen ones included) + the gradients
  of the trained ones + AdamW's two moments per trained parameter + the bytes autograd saves for one step's backward
  (``memory.SavedActivations``, counted in the same pass). It is what the run must hold, on any device; on a GPU the
  CUDA allocator's measured peak is reported beside it (``engine.fit``), labelled as such. Process RSS is never a
  method's memory.
- **Step time**: ``engine.timing`` times every optimizer step; ``frozen_forward_ms`` is the unit it is also given in.
"""
from __future__ import annotations

import contextlib
import copy
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import flop_counter as fc

from .evaluate import autocast_context
from .memory import SavedActivations, module_mb

_MB = 2**20
FLOP_NOTE = ("counted by torch.utils.flop_counter.FlopCounterMode: matrix products, convolutions and attention "
             "(element-wise work and the optimizer's update not counted); the same on every device")
MEMORY_MEASURE = ("accounted: parameters + gradients + AdamW state + what autograd saves for one step's backward "
                  "(the same on every device)")
NOTHING_TRAINS = "trains nothing: no training memory beyond the frozen model"


def _cpu_flash(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    """The CPU flash-attention kernel, counted as PyTorch counts the GPU ones."""
    return fc.sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_flash_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _custom_mapping() -> dict:
    """The CPU attention kernels the counter does not know (a newer PyTorch may register them itself)."""
    mapping = {}
    for name, formula in (("_scaled_dot_product_flash_attention_for_cpu", _cpu_flash),
                          ("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_flash_backward)):
        op = getattr(torch.ops.aten, name, None)
        if op is not None and op not in fc.flop_registry:
            mapping[op] = formula
    return mapping


@contextlib.contextmanager
def counting() -> Any:
    """A ``FlopCounterMode`` that sees every attention product: CPU attention mapped, the MHA fast path off."""
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with fc.FlopCounterMode(display=False, custom_mapping=_custom_mapping()) as counter:
            yield counter
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of everything ``fn()`` runs (see the module docstring for what is counted)."""
    with counting() as counter:
        fn()
    return int(counter.get_total_flops())


# ----------------------------------------------------------------------------- a training step
@dataclass
class StepCosts:
    """One micro-batch's forward + backward: FLOPs and the bytes autograd saved for the backward."""

    flops: int
    saved_bytes: int
    batch: int


def step_costs(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, precision: str = "fp32") -> StepCosts:
    """Count one training forward + backward of ``model`` on a batch: on a copy (in training mode, under the run's
    precision), so the model's weights, buffers (batch-norm statistics), gradients and the RNG stay untouched."""
    clone = copy.deepcopy(model).train()
    device = images.device
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), SavedActivations(clone.parameters()) as saved:
        with counting() as counter:
            with autocast_context(precision, device):
                logits = clone(images)
            F.cross_entropy(logits.float(), labels).backward()
    return StepCosts(int(counter.get_total_flops()), int(saved.bytes), int(len(labels)))


SMALL_BATCHES = (2, 4)
"""``batch_step_costs`` counts on these batch sizes and extends the line through them to the run's batch."""


def batch_step_costs(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                     precision: str = "fp32") -> StepCosts:
    """``step_costs`` of the whole batch, counted on its first 2 and first 4 images and extended along the line
    through them. Exact, not an estimate: every counted product, and every tensor saved for the backward, is either
    per image (the image tower, the head) or independent of the batch (a text tower running the class prompts), so
    both grow linearly in the batch; it saves counting a full batch (a tenth of the time at batch 64)."""
    n, (a, b) = len(labels), SMALL_BATCHES
    if n <= b:
        return step_costs(model, images, labels, precision)
    small, large = (step_costs(model, images[:k], labels[:k], precision) for k in (a, b))
    line = lambda x, y: round(x + (y - x) * (n - a) / (b - a))  # noqa: E731
    return StepCosts(line(small.flops, large.flops), line(small.saved_bytes, large.saved_bytes), n)


def accounted_memory(model: nn.Module, trained: Iterable[nn.Parameter], saved_bytes: int) -> dict[str, float]:
    """Training memory (MB) by parts: the model's parameters and buffers, the trained parameters' gradients, AdamW's
    two moments per trained parameter, the activations saved for one step's backward; and their total."""
    trained = list(trained)
    grads = sum(p.numel() * p.element_size() for p in trained) / _MB
    parts = {"parameters_mb": module_mb(model), "gradients_mb": grads, "optimizer_mb": 2 * grads,
             "activations_mb": saved_bytes / _MB}
    return {**parts, "total_mb": sum(parts.values())}


def training_costs(model: nn.Module, trained: Iterable[nn.Parameter], images: torch.Tensor, labels: torch.Tensor,
                   precision: str = "fp32", accum: int = 1) -> dict[str, Any]:
    """A trained method's counted costs: the FLOPs of one optimizer step (``accum`` micro-batches like ``images``)
    and its training memory by accounting (a result's ``flops_per_step``, ``train_memory_mb``, ``memory_parts``,
    ``memory_measure``)."""
    step = batch_step_costs(model, images, labels, precision)
    memory = accounted_memory(model, trained, step.saved_bytes)
    return {"flops_per_step": accum * step.flops, "flops_step_batch": step.batch * accum,
            "train_memory_mb": memory["total_mb"], "memory_parts": memory,
            "memory_measure": MEMORY_MEASURE + f"; activations of a batch of {step.batch} in {precision}",
            "flops_counted": FLOP_NOTE}


def run_tflops(steps: int | None, flops_per_step: float | None, extra_flops: float = 0.0) -> float | None:
    """A run's training compute in TFLOPs: its optimizer steps x one step's FLOPs (+ ``extra_flops``: a feature
    pass over the training images, for the methods that train on cached features)."""
    if flops_per_step is None and not extra_flops:
        return None
    return ((steps or 0) * (flops_per_step or 0) + extra_flops) / 1e12


# ----------------------------------------------------------------------------- inference
@torch.no_grad()
def flops_per_image(model: nn.Module, images: torch.Tensor) -> float:
    """FLOPs of one image through ``model`` in eval mode (counted on a copy over ``images``, divided by their number).
    The copy needs no gradients: a parameter that still asked for them would reach the counter's module hooks as a
    no-grad view without a gradient function (timm's attention-pool latent in SigLIP), which they refuse."""
    clone = copy.deepcopy(model).eval().requires_grad_(False).to(images.device)
    return count_flops(lambda: clone(images)) / len(images)


def frozen_forward_ms(visual: nn.Module, images: torch.Tensor, repeats: int = 5, precision: str = "fp32") -> float:
    """Median milliseconds of one forward pass of the frozen image tower over ``images`` (eval mode, no gradients;
    synchronised on CUDA; one untimed warm-up): the unit a step time is also given in."""
    was = visual.training
    visual.eval()
    times = []
    try:
        with torch.inference_mode(), autocast_context(precision, images.device):
            for i in range(repeats + 1):
                _sync(images.device)
                start = time.perf_counter()
                visual(images)
                _sync(images.device)
                if i:
                    times.append(1000 * (time.perf_counter() - start))
    finally:
        visual.train(was)
    return statistics.median(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_time_fields(step_time: dict[str, Any], forward_ms: float | None) -> dict[str, Any]:
    """A run's step-time fields: the engine's statistics, the frozen forward they are also given against, the ratio."""
    ms = step_time.get("step_ms")
    ratio = ms / forward_ms if ms is not None and forward_ms else None
    return {**step_time, "forward_ms": forward_ms, "step_over_forward": ratio}


# ----------------------------------------------------------------------------- what is deployed
def deployed_model(clf: nn.Module, method: str, config: Any, base_visual: nn.Module, head_only: bool = False,
                   rebuild_as: str | None = None) -> nn.Module:
    """The model a folder of ``clf`` rebuilds (over a copy of ``base_visual``), plain (LoRA merged, a prefix folded):
    what ``predict`` runs, and what inference FLOPs are counted on."""
    from .modelfolder import plain, rebuilt_copy
    structure = rebuild_as or method
    return plain(rebuilt_copy(clf, structure, config, base_visual, head_only), structure)


def deployed_params(clf: nn.Module, method: str, head_only: bool = False, rebuild_as: str | None = None) -> int:
    """The numbers a model folder of ``clf`` stores: what the method adds or changes, after folding, head included."""
    from .modelfolder import changed_state
    return int(sum(t.numel() for t in changed_state(clf, rebuild_as or method, head_only).values()))


def folder_facts(folder: Any) -> dict[str, Any]:
    """A written model folder: the numbers its ``model.safetensors`` holds (``deployed_params``, head included) and
    the size of its files (``model_folder_mb``)."""
    from pathlib import Path
    from safetensors import safe_open
    from .modelfolder import WEIGHTS
    folder = Path(folder)
    with safe_open(str(folder / WEIGHTS), framework="pt") as f:
        numel = sum(int(torch.Size(f.get_slice(k).get_shape()).numel()) for k in f.keys())
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    return {"deployed_params": numel, "model_folder_mb": size / _MB}


# ----------------------------------------------------------------------------- methods over the frozen tower
def probe_images(image_size: int, device: Any = "cpu", n: int = 2) -> torch.Tensor:
    """``n`` blank images of the tower's size: FLOPs do not depend on the pixels, only on the shapes."""
    return torch.zeros(n, 3, image_size, image_size, device=device)


def frozen_costs(visual: nn.Module, deployed: nn.Module, images: torch.Tensor, train_images: int) -> dict[str, Any]:
    """What every method over the frozen tower shares (zero-shot, the linear probe, Tip-Adapter): inference FLOPs per
    image of ``deployed`` (the tower and its head), and the feature pass over the ``train_images`` training images it
    learned from (one frozen forward each; zero-shot learns from none), part of its training compute."""
    tower = flops_per_image(visual, images)
    return {"gflops_per_image": flops_per_image(deployed, images) / 1e9, "feature_images": int(train_images),
            "feature_tflops": train_images * tower / 1e12, "forward_ms": None, "step_over_forward": None}


def no_steps(why: str, steps: int | None = 0, memory_mb: float | None = None,
             measure: str = NOTHING_TRAINS) -> dict[str, Any]:
    """The fields of a row that takes no optimizer step: zero-shot and Tip-Adapter (``steps`` 0), the L-BFGS probe
    (None: it iterates, its iterations are no optimizer steps)."""
    return {"steps": steps, "epochs": steps, "budget": why, "flops_per_step": None, "train_memory_mb": memory_mb,
            "memory_measure": measure,
            "step_ms": None, "step_ms_spread": None, "step_ms_q1": None, "step_ms_q3": None,
            "step_ms_note": f"no optimizer steps ({why})"}


def fit_costs(model: nn.Module, trained: Iterable[nn.Parameter], features: torch.Tensor, labels: torch.Tensor,
              train: Any, visual: nn.Module) -> dict[str, Any]:
    """A head or cache trained by ``engine.fit`` on cached features (``train``: its TrainResult): its steps, the
    FLOPs of a step on a feature batch, its step time, and its training memory by accounting, the frozen tower's
    parameters included (the feature pass needs it)."""
    counted = training_costs(model, trained, features, labels)
    with_tower(counted, visual)
    return {**counted, "steps": train.steps, "epochs": train.epochs_run, "budget": train.budget,
            **step_time_fields(train.step_time, None)}


def with_tower(counted: dict[str, Any], visual: nn.Module) -> dict[str, Any]:
    """Add the frozen tower's parameters to a fit's accounted memory (in place), and say so."""
    tower = module_mb(visual)
    counted["memory_parts"]["parameters_mb"] += tower
    counted["memory_parts"]["total_mb"] += tower
    counted["train_memory_mb"] = counted["memory_parts"]["total_mb"]
    counted["memory_measure"] += "; the frozen image tower counted with the parameters (its feature pass)"
    return counted


LBFGS_HISTORY = 10
"""scipy's L-BFGS-B (what scikit-learn's lbfgs solver runs) keeps this many curvature pairs (``maxcor``)."""


def lbfgs_costs(features: torch.Tensor, labels: torch.Tensor, num_classes: int, iterations: int,
                visual: nn.Module) -> dict[str, Any]:
    """The L-BFGS logistic regression of the CLIP paper's probe, by the same counts: ``iterations`` x one loss and
    gradient evaluation on every training feature (counted in torch; scikit-learn's own line searches may evaluate a
    few more), and memory = the tower and the head, the gradient, L-BFGS's curvature pairs, one evaluation's
    saved activations."""
    head = nn.Linear(features.shape[1], num_classes)
    step = step_costs(head, F.normalize(features.float(), dim=-1), torch.as_tensor(labels).long())
    memory = accounted_memory(head, list(head.parameters()), step.saved_bytes)
    parts = {**memory, "optimizer_mb": 2 * LBFGS_HISTORY * memory["gradients_mb"]}
    parts["total_mb"] = sum(v for k, v in parts.items() if k != "total_mb")
    counted = {"train_memory_mb": parts["total_mb"], "memory_parts": parts, "flops_counted": FLOP_NOTE,
               "memory_measure": MEMORY_MEASURE.replace("AdamW state", f"L-BFGS's {LBFGS_HISTORY} curvature pairs"),
               "lbfgs_iterations": int(iterations), "lbfgs_tflops": iterations * step.flops / 1e12}
    return with_tower(counted, visual)
