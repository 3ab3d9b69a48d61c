"""One JSON per run (written atomically), its predictions beside it, and a loader that makes a table."""
from __future__ import annotations

import json
import math
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ResultsError
from .paths import PROJECT_ROOT, atomic_path, atomic_write_text, ensure_writable, results_root

REQUIRED_KEYS = (
    "method", "model", "pretrained", "dataset", "profile", "seed", "test_acc", "test_top5", "val_acc",
    "per_class_acc", "trainable_params", "total_params", "train_seconds", "eval_seconds",
    "images_per_second", "peak_memory_mb", "config", "history", "env",
)
PACKAGES = ("torch", "torchvision", "open_clip_torch", "numpy", "scikit-learn", "peft")


def results_dir(profile: str, root: str | Path | None = None) -> Path:
    """``<results root>/<profile>``, created and checked writable."""
    return ensure_writable(Path(root or results_root()) / profile)


def point_suffix(shots: int | None, seed: int) -> str:
    """``[_shots<k>][_seed<s>]`` (seed 0 unnamed): how executed notebooks and a run's figures name a grid point."""
    return ("" if shots is None else f"_shots{shots}") + ("" if seed == 0 else f"_seed{seed}")


def run_name(method: str, seed: int, variant: str | None = None, shots: int | None = None) -> str:
    """File stem of a run: ``<method>[-<variant>][_shots<k>]_seed<seed>``."""
    return f"{method}{'-' + variant if variant else ''}{'' if shots is None else f'_shots{shots}'}_seed{seed}"


def result_path(folder: str | Path, method: str, seed: int, variant: str | None = None,
                shots: int | None = None) -> Path:
    """Where a run's JSON lives."""
    return Path(folder) / f"{run_name(method, seed, variant, shots)}.json"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def env_info(device: Any = "cpu") -> dict[str, Any]:
    """Package versions, device and git commit, for the result's ``env`` field."""
    import torch
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    dev = str(device)
    name = torch.cuda.get_device_name(torch.device(dev)) if dev.startswith("cuda") else platform.processor() or "cpu"
    return {"python": platform.python_version(), "packages": versions, "device": dev, "device_name": name,
            "cpu_threads": torch.get_num_threads(), "git_commit": _git_commit(), "platform": platform.platform()}


def plain_json(value: Any) -> Any:
    """JSON-safe copy: numpy → python, NaN/inf → None, tuples → lists."""
    if isinstance(value, dict):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain_json(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def make_result(*, method: str, model: str, pretrained: str, dataset: str, profile: str, seed: int,
                test, val_acc: float | None, trainable_params: int, total_params: int, train_seconds: float,
                eval_seconds: float, images_per_second: float | None, peak_memory_mb: float | None,
                config: dict, history: list, device: Any = "cpu", variant: str | None = None,
                standin: bool = False, warnings: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """Assemble a result in the course's schema from an ``evaluate.EvalResult`` and run facts.

    ``warnings`` (``Course.warnings``) go into the label; without them a stand-in is still labelled STAND-IN.
    ``trainable_percent`` divides by ``base_params`` (the pretrained model, both towers: the same denominator for
    every row of a course, ``Course.identity``), else by ``total_params``; ``percent_of`` says which.
    """
    from .labels import run_label, warnings_for
    warnings = list(warnings) if warnings is not None else warnings_for(
        standin_notes=["the offline stand-in, not CLIP on Flowers102"] if standin else [])
    base = extra.get("base_params")
    denominator, percent_of = (base, f"the pretrained {model}, both towers ({base:,} parameters)") if base else \
        (total_params, "this row's total_params")
    result = {
        "method": method, "variant": variant, "model": model, "pretrained": pretrained, "dataset": dataset,
        "profile": profile, "seed": seed, "standin": standin, "warnings": warnings,
        "label": run_label(model, pretrained, dataset, warnings),
        "test_acc": test.top1, "test_top5": test.top5, "n_test": int(len(test.labels)), "val_acc": val_acc,
        "per_class_acc": test.per_class_acc, "trainable_params": trainable_params, "total_params": total_params,
        "trainable_percent": 100.0 * trainable_params / denominator if denominator else None,
        "percent_of": percent_of,
        "train_seconds": train_seconds, "eval_seconds": eval_seconds, "images_per_second": images_per_second,
        "peak_memory_mb": peak_memory_mb, "config": config, "history": history, "env": env_info(device),
    }
    result.update(extra)
    return plain_json(result)


def save_result(result: dict[str, Any], folder: str | Path, predictions=None, val_predictions=None) -> Path:
    """Write the run's test (and validation) predictions (``predictions/<run>.npz``), then its JSON, atomically.

    Only rank 0 of a distributed run writes (the others return the path)."""
    from . import distributed
    missing = [k for k in REQUIRED_KEYS if k not in result]
    if missing:
        raise ResultsError(f"Result is missing {missing}; build it with results.make_result().")
    name = run_name(result["method"], result["seed"], result.get("variant"), result.get("shots"))
    if not distributed.is_writer():
        return Path(folder) / f"{name}.json"
    folder = ensure_writable(folder)
    if predictions is not None:
        pred_path = folder / "predictions" / f"{name}.npz"
        arrays = {"logits": np.asarray(predictions.logits, dtype=np.float32),
                  "labels": np.asarray(predictions.labels, dtype=np.int64)}
        if val_predictions is not None:
            arrays |= {"val_logits": np.asarray(val_predictions.logits, dtype=np.float32),
                       "val_labels": np.asarray(val_predictions.labels, dtype=np.int64)}
        with atomic_path(pred_path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        result = {**result, "predictions": f"predictions/{name}.npz", "val_predictions": val_predictions is not None}
    return atomic_write_text(folder / f"{name}.json", json.dumps(result, indent=1))


def borrowed_history(history_of: Any, recipe: Any) -> str:
    """The recipe whose per-epoch history a result row keeps when that is not its own recipe (the probe's L-BFGS
    row keeps its AdamW run's history), else "": such a row is drawn as its own recipe, never as that curve."""
    return history_of if isinstance(history_of, str) and history_of != recipe else ""


def read_result(path: str | Path) -> dict[str, Any]:
    """One result JSON; a damaged one is a ResultsError naming the file and the command that remakes it."""
    path = Path(path)
    try:
        result = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise damaged_result(path, f"it is not valid JSON ({str(exc)[:80]})") from None
    if not isinstance(result, dict):
        raise damaged_result(path, f"it holds a {type(result).__name__}, not a result")
    return result


def damaged_result(path: Path, why: str) -> ResultsError:
    """The error for a result file that cannot be read: which file, why, and the command that remakes it."""
    from .records import remake_command
    return ResultsError(f"The result file '{path}' is damaged: {why}. Fix: remake it: {remake_command(path)}; "
                        "or delete it if that run is not wanted.")


def load_predictions(folder: str | Path, name: str, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """(logits [N, C], labels [N]) of ``split`` ("test" or "val") saved with a run (``name`` = run_name(...)).

    Raises KeyError when the run saved no predictions of that split."""
    prefix = "" if split == "test" else "val_"
    with np.load(Path(folder) / "predictions" / f"{name}.npz") as z:
        return z[f"{prefix}logits"], z[f"{prefix}labels"]


def load_results(profile: str = "smoke", root: str | Path | None = None):
    """All results of a profile as a pandas DataFrame, one row per run (empty if none); a damaged result file is a
    ResultsError naming it and the command that remakes it."""
    import pandas as pd
    folder = Path(root or results_root()) / profile
    rows = []
    for path in sorted(folder.glob("*.json")):
        res = read_result(path)  # a damaged file is an error naming it, never a run silently missing
        if "method" not in res:
            continue
        res["run"] = path.stem
        rows.append(res)
    return pd.DataFrame(rows)
