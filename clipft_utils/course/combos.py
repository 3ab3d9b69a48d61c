"""Notebook 06's combinations on a course: the models they start from and the result row each one writes.

``combine`` holds the arithmetic (probability ensembles, weight interpolation, heads, base-to-novel splits); this
module is the bookkeeping around it — which linear-probe head and LoRA adapter are at hand (saved by notebooks 02
and 05, else trained here), the exact rebuilds of ensemble members, the zero-shot-head baselines of LP→FT — and one
call per result row. Every choice is made on validation; test numbers only report.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from .. import combine
from ..costs import folder_facts
from ..evaluate import EvalResult, evaluate
from ..heads import find_head, head_logits
from ..results import read_result, save_result

__all__ = [
    "extra_configs", "short_run", "linear_probe_head", "Adapter", "lora_adapter", "rebuilt_members",
    "zero_shot_evals", "ensemble_table", "write_ensembles", "zero_shot_baselines", "write_lp_ft", "write_wise_ft",
    "base_novel_evals", "base_novel_table", "write_base_to_novel", "train_adapter_b", "fusion_evals", "fusion_table",
    "write_adapter_fusion",
]

SPLITS = ("val", "test")


# ----------------------------------------------------------------------------- what the combinations start from
def extra_configs(course: Any, cfg: Any, epochs: int | None, extra_epochs: int | None,
                  batch_size: int | None = None) -> tuple[Any, Any]:
    """(full fine-tuning's, LoRA's) recipe for the extra trainings: ``extra_epochs``, else ``epochs``, else the
    profile's (None: each method's own epochs); a shorter run gets a warm-up of at most a third of it."""
    from ..config import extra_epochs as epochs_of_extras
    from ..methods import make_config
    n = epochs_of_extras(course.profile, epochs, extra_epochs)
    cfg_extra = cfg if n is None else dataclasses.replace(cfg, epochs=n, warmup_epochs=min(cfg.warmup_epochs, n // 3))
    return cfg_extra, make_config("lora", course.profile, epochs=n, batch_size=batch_size)


def short_run(course: Any, method: str, cfg: Any, variant: str, head: Mapping[str, Any] | None = None):
    """Train ``method`` with recipe ``cfg`` from the zero-shot head (or ``head``); its row is not written."""
    from .core import train_method
    from ..methods import apply_method
    model = course.classifier()
    if head is not None:
        combine.set_head(model, head["weight"], head["bias"])
    return train_method(course, method, cfg, model, apply_method(method, model, cfg), save=False, progress=False,
                        variant=variant, budget_note="notebook 06's extra trainings (extra_epochs)")


def linear_probe_head(course: Any) -> tuple[dict[str, Any], str]:
    """(head, where it came from): notebook 02's saved head, else one fitted here on the cached features."""
    from ..methods import make_config
    from ..methods import linear_probe
    head = linear_probe.load_head(course.results_dir, course.seed, course.shots)
    if head is not None:
        return head, "notebook 02's saved head"
    return linear_probe.fit_best_head(course, make_config("linear_probe", course.profile)), \
        "fitted here (notebook 02 has not run)"


@dataclass
class Adapter:
    """LoRA adapter A of the combinations: its classifier, the adapter's name in it, where it came from, the run
    that trained it here (None: notebook 05's, loaded) and its validation and test evaluations."""

    model: Any
    name: str
    source: str
    run: Any
    evals: dict[str, EvalResult]

    @property
    def train_seconds(self) -> float:
        """Seconds spent training it here (0 for notebook 05's)."""
        return self.run.train.train_seconds if self.run is not None else 0.0


def lora_adapter(course: Any, lora_cfg: Any, precision: str) -> Adapter:
    """Notebook 05's adapter with its saved head (together they rebuild its model exactly), else one trained here
    from the zero-shot head with ``lora_cfg`` — a model of its own, not notebook 05's."""
    from ..methods import lora
    adapter_file = course.results_dir / "adapters" / f"{course.run_name('lora')}.pt"
    head = find_head(course.results_dir, course.run_name("lora"))
    if adapter_file.exists() and head is not None:
        model = course.classifier()
        lora.load_adapter(model, adapter_file, name="a")
        combine.set_head(model, head["weight"], head["bias"])
        evals = {s: evaluate(model, course.loader(s), device=course.device, precision=precision) for s in SPLITS}
        return Adapter(model, "a", "notebook 05's adapter + its saved head", None, evals)
    run = short_run(course, "lora", lora_cfg, "zs_init")
    source = f"trained here ({lora_cfg.epochs} epoch(s); notebook 05's adapter and head are not here)"
    return Adapter(run.classifier, "default", source, run, {"val": run.val, "test": run.test})


def rebuilt_members(course: Any, lp_head: Mapping[str, Any], run: Any, adapter: Adapter) -> dict[str, tuple]:
    """Ensemble members rebuilt exactly here, member -> (val logits, test logits): zero-shot from the text head, the
    linear probe from its head, full fine-tuning from ``run``, and LoRA when ``adapter`` is notebook 05's."""
    feats = {s: course.features(s, progress=False) for s in SPLITS}
    zs_head = course.zero_shot_head()
    rebuilt = {
        "zero_shot": tuple(head_logits(feats[s].features, zs_head).numpy() for s in SPLITS),
        "linear_probe": tuple(head_logits(feats[s].features, lp_head["weight"], lp_head["bias"]).numpy()
                              for s in SPLITS),
        "full_finetune": (run.val.logits, run.test.logits),
    }
    if adapter.run is None:
        rebuilt["lora"] = (adapter.evals["val"].logits, adapter.evals["test"].logits)
    return rebuilt


def zero_shot_evals(course: Any, rebuilt: Mapping[str, tuple]) -> dict[str, EvalResult]:
    """Zero-shot's validation and test evaluations from its rebuilt logits."""
    return {s: EvalResult.from_logits(rebuilt["zero_shot"][i], course.features(s, progress=False).labels)
            for i, s in enumerate(SPLITS)}


# ----------------------------------------------------------------------------- result rows
NO_MODEL = {
    "ensemble": "an average of several models' probabilities, which no single set of weights computes: predict with "
                "its members' model folders (config.members) and average their probabilities",
    "adapter_fusion": "two LoRA adapters with different targets and ranks, mixed at run time; it is not written as "
                      "one adapter: its members are notebook 05's lora folder (A) and the B trained in 06",
    "full_finetune-base2novel": "an evaluation of the pretrained and the base-fine-tuned towers on the base and "
                                "novel classes, not a model of its own",
}
"""Why a combination row has no model folder (in its result as ``no_model_folder``), by method or method-variant.
WiSE-FT and LP→FT are each one model, and leave one (``one_model``)."""


def _save(course: Any, row: dict[str, Any], test: Any = None, val: Any = None) -> Path:
    """Write ``row`` (with its test and validation predictions, where given) into the course's results folder; a
    row of a kind that leaves no model folder says why."""
    why = NO_MODEL.get(f"{row['method']}-{row.get('variant')}", NO_MODEL.get(row["method"]))
    if why:
        row.setdefault("no_model_folder", why)
    return save_result(row, course.results_dir, predictions=test, val_predictions=val)


def one_model(course: Any, row: dict[str, Any], clf: Any, test: Any, shape: str, config: dict[str, Any],
              how: dict[str, Any]) -> Path:
    """The model folder of a combination that is one model of ``shape``'s form (a method: its ``config`` rebuilds
    it), e.g. WiSE-FT's θ(α) or an LP→FT run; ``how``: what made it (in the manifest as ``combination``)."""
    from ..modelfolder import save_model
    # ``clf`` is a trained model of that shape (or a copy of one): its requires_grad flags are the ones training set,
    # which say what the folder holds; the rebuild applies the shape's method and checks the keys against them
    return save_model(course, row["method"], clf, result=row, variant=row.get("variant"), config=config,
                      check=(course.loader("test"), test), rebuild_as=shape, combination=how)


def ensemble_table(members: Mapping[str, combine.Member], run: Any) -> pd.DataFrame:
    """The probability average of every subset of ``members`` on validation and test, ranked by validation accuracy
    (ties: the smaller subset first)."""
    table = combine.subset_table({n: m.test for n, m in members.items()}, run.test.labels,
                                 val_preds={n: m.val for n, m in members.items()}, val_labels=run.val.labels)
    return table.sort_values(["val_acc", "size"], ascending=[False, True], ignore_index=True)


def write_ensembles(course: Any, members: Mapping[str, combine.Member], table: pd.DataFrame,
                    run: Any) -> pd.DataFrame:
    """Write two ensemble rows, both chosen on validation: the best subset of two or more members (``table`` ranked
    best first) and the full set; earlier picks of this seed are removed. Returns what was written."""
    multi = table[table["size"] >= 2]
    chosen = {"best": (multi if len(multi) else table).iloc[0]["members"], "all": tuple(members)}
    combine.remove_rows(course.results_dir, "ensemble", course.seed, shots=course.shots,  # a rerun may pick another
                        keep={"+".join(combine.short_name(m) for m in ms) for ms in chosen.values()})
    written = []
    for role, ms in chosen.items():
        row, test, val = combine.ensemble_result(course, members, ms, run.test.labels, run.val.labels,
                                                 roles=[r for r, s in chosen.items() if s == ms])
        written.append({"role": role, "variant": row["variant"], "val top-1": val.top1, "test top-1": test.top1,
                        "file": _save(course, row, test, val).name})
    return pd.DataFrame(written).set_index("role")


def zero_shot_baselines(course: Any, run: Any, cfg: Any, cfg_extra: Any, lora_cfg: Any,
                        adapter: Adapter) -> dict[str, tuple[dict, str]]:
    """LP→FT's baselines from the zero-shot head with the same recipe, kind -> (result row, source): the main run
    when the configs agree, adapter A or notebook 05's row when its recipe is the same, else a run trained here."""
    lora_path = course.result_path("lora")
    same_lora = lora_path.exists() and read_result(lora_path)["config"] == lora_cfg.to_dict()
    full = ((run.result, "this notebook's main run") if cfg_extra == cfg else
            (short_run(course, "full_finetune", cfg_extra, "zs_init").result,
             f"trained here ({cfg_extra.epochs} epoch(s))"))
    lora = ((adapter.run.result, adapter.source) if adapter.run is not None else
            (read_result(lora_path), "notebook 05's row (same recipe)") if same_lora else
            (short_run(course, "lora", lora_cfg, "zs_init").result, f"trained here ({lora_cfg.epochs} epoch(s))"))
    return {"full": full, "lora": lora}


def write_lp_ft(course: Any, lp_ft: Mapping[str, Any], baselines: Mapping[str, tuple[dict, str]],
                lp_source: str) -> pd.DataFrame:
    """Write one ``lp_ft-<kind>`` row per run in ``lp_ft`` (with its zero-shot-head baseline); returns the table."""
    rows = []
    for kind, out in lp_ft.items():
        base_row, source = baselines[kind]
        row = {**out.result, "method": "lp_ft", "variant": kind, "init_head": lp_source,
               "baseline_zero_shot_head": {"test_acc": base_row["test_acc"], "val_acc": base_row["val_acc"],
                                           "source": source}}
        shape = {"full": "full_finetune", "lora": "lora"}[kind]   # one trained model of that method's form
        row.update(folder_facts(one_model(course, row, out.classifier, out.test, shape, out.result["config"],
                                          {"init_head": lp_source})))
        _save(course, row, out.test, out.val)
        rows.append({"method": kind, "from zero-shot head": base_row["test_acc"], "from linear-probe head":
                     out.test.top1, "val (zs head)": base_row["val_acc"], "val (LP head)": out.train.best_val_acc,
                     "zs-head run": source})
    return pd.DataFrame(rows).set_index("method")


def write_wise_ft(course: Any, sweep: combine.WiseFT, alpha: float, alphas: Sequence[float], run: Any) -> Path:
    """Write the ``wise_ft-alpha<α>`` row of the α chosen on validation (earlier picks of this seed removed; its test
    evaluation is made here, the only interior α evaluated on test), and its model folder: ``θ(α)`` is one model of full fine-tuning's shape (a whole tower and a head). At α = 0 or 1
    it is the zero-shot or the fine-tuned model, whose folders exist: the row names them instead."""
    combine.remove_rows(course.results_dir, "wise_ft", course.seed, keep={f"alpha{alpha:g}"}, shots=course.shots)
    sweep.add(alpha, "test", course.loader("test"), device=course.device, precision=run.train.precision)
    best = sweep.evals[alpha]
    how = {"alphas": [float(a) for a in alphas], "chosen_on": "val", "fine_tuned": run.path.name,
           "test_at": "the α chosen on validation and the two ends (zero-shot, fine-tuned)"}
    row = combine.combination_result(
        course, "wise_ft", f"alpha{alpha:g}", best["test"], val_acc=best["val"].top1,
        trainable_params=run.result["trainable_params"], total_params=run.result["total_params"],
        train_seconds=run.train.train_seconds, config=how, alpha=alpha, curve=sweep.records(),
        curve_shape=combine.curve_shape(sweep.curve["alpha"], sweep.curve["val_acc"]),
        train_tflops=run.result.get("train_tflops"), gflops_per_image=run.result.get("gflops_per_image"),
        budget="no training run of its own: it interpolates the zero-shot and the fine-tuned weights (the "
               "fine-tuning run, full_finetune's row, is its training compute)")
    if alpha in (0.0, 1.0):  # an endpoint is a model that already has its folder: no second copy of a tower
        row["no_model_folder"] = (f"θ({alpha:g}) is the fully fine-tuned model itself: models/{run.path.stem}/"
                                  if alpha == 1.0 else "θ(0) is the zero-shot model itself: notebook 01's "
                                  "zero_shot model folder")
    else:
        row.update(folder_facts(one_model(course, row, sweep.model(alpha), best["test"], "full_finetune",
                                          run.result["config"], {**how, "alpha": alpha,
                                                                 "zero_shot": "the pretrained tower and the zero-shot head"})))
    return _save(course, row, best["test"], best["val"])


def base_novel_evals(course: Any, clf_base: Any, base: Sequence[int], novel: Sequence[int]) -> dict[tuple, EvalResult]:
    """Test top-1 on the base and the novel classes with the pretrained and the base-fine-tuned image tower, keyed
    (classes, tower). Base classes use each model's head; novel ones the zero-shot text head (never trained)."""
    from ..features import encode_images
    zs_head = course.zero_shot_head()
    test_pre = course.features("test", progress=False)                       # pretrained tower (cached)
    test_ft = encode_images(clf_base.visual, course.splits["test"], batch_size=course.eval_batch_size,
                            device=course.device, progress=False)           # tower fine-tuned on the base classes
    labels = test_pre.labels.numpy()
    head_w, head_b = clf_base.head.weight.detach().cpu(), clf_base.head.bias.detach().cpu()
    return {
        ("base", "pretrained"): combine.restricted_eval(test_pre.features, labels, base, zs_head[base]),
        ("base", "fine-tuned"): combine.restricted_eval(test_ft, labels, base, head_w, head_b),
        ("novel", "pretrained"): combine.restricted_eval(test_pre.features, labels, novel, zs_head[novel]),
        ("novel", "fine-tuned"): combine.restricted_eval(test_ft, labels, novel, zs_head[novel]),
    }


def base_novel_table(evals: Mapping[tuple, EvalResult]) -> pd.DataFrame:
    """Test top-1 of ``base_novel_evals``: rows base, novel and their harmonic mean; columns pretrained, fine-tuned."""
    table = pd.Series({k: e.top1 for k, e in evals.items()}).unstack()[["pretrained", "fine-tuned"]]
    table.loc["harmonic mean"] = 2 / (1 / table.loc["base"] + 1 / table.loc["novel"])
    return table


def write_base_to_novel(course: Any, evals: Mapping[tuple, EvalResult], table: pd.DataFrame, fit: Any,
                        clf_base: Any, cfg: Any, base: Sequence[int], novel: Sequence[int]) -> Path:
    """Write the ``full_finetune-base2novel`` row: novel-class zero-shot top-1 with the base-fine-tuned tower (and the
    base, novel and harmonic-mean numbers of ``table`` for both towers)."""
    from ..models import count_parameters
    trainable, total = count_parameters(clf_base)
    counted = {**fit_costs(course, clf_base, fit), "budget_note": "notebook 06's extra trainings (extra_epochs)"}
    row = combine.combination_result(
        course, "full_finetune", "base2novel", evals[("novel", "fine-tuned")], val_acc=fit.best_val_acc,
        trainable_params=trainable, total_params=total, train_seconds=fit.train_seconds,
        config={**cfg.to_dict(), "base_classes": base, "novel_classes": novel}, history=fit.history,
        test_acc_is="novel-class zero-shot top-1",
        test_acc_detail="zero-shot top-1 on the novel classes with the image tower fine-tuned on the base classes",
        val_acc_is="base-class validation top-1",
        novel_zero_shot_pretrained=table.loc["novel", "pretrained"],
        novel_zero_shot_finetuned=table.loc["novel", "fine-tuned"],
        base_acc_pretrained=table.loc["base", "pretrained"], base_acc_finetuned=table.loc["base", "fine-tuned"],
        harmonic_mean_pretrained=table.loc["harmonic mean", "pretrained"],
        harmonic_mean_finetuned=table.loc["harmonic mean", "fine-tuned"], **counted)
    return _save(course, row)


MLP = ("fc", "proj")


def adapter_targets(adapter: Adapter) -> tuple[str, ...]:
    """The targets LoRA adapter A holds (q, v by default; a ConvNeXt's MLP)."""
    from ..methods import lora
    return tuple(lora.adapter_config(adapter.model, adapter.name)["targets"])


def adapter_b_targets(course: Any, adapter: Adapter) -> tuple[str, ...]:
    """Adapter B's targets, other than A's: the MLP's (``fc``, ``proj``) where the tower has them; on a tower without
    an MLP LoRA can adapt (a ResNet's attention pool, FastViT's attention blocks) the targets A leaves out; on one
    whose only targets A holds (a ConvNeXt's MLP), A's."""
    from ..towers import facts
    offered, a_targets = facts(course.loaded.model.visual).lora_targets(), adapter_targets(adapter)
    others = tuple(t for t in offered if t not in a_targets)
    return tuple(t for t in MLP if t in others) or others or a_targets


def targets_tag(targets: Sequence[str]) -> str:
    """A row name's part for LoRA targets: ``mlp`` for (fc, proj), else the targets run together (``qv``)."""
    return "mlp" if tuple(targets) == MLP else "".join(targets)


def targets_text(targets: Sequence[str]) -> str:
    """LoRA targets as a title says them: "MLP" for (fc, proj), else "q, v"."""
    return "MLP" if tuple(targets) == MLP else ", ".join(targets)


def fusion_title(adapter: Adapter, cfg_b: Any) -> str:
    """The fusion figure's title, naming both adapters' targets."""
    a, b = targets_text(adapter_targets(adapter)), targets_text(cfg_b.targets)
    return f"LoRA adapter fusion: A ({a}) and B ({b}), one head"


def train_adapter_b(course: Any, adapter: Adapter, lora_cfg: Any) -> tuple[Any, Any, Any]:
    """Adapter B of the fusion: LoRA on ``adapter_b_targets`` (a ViT's MLP, ``fc`` and ``proj``) trained under adapter
    A's head, kept frozen, so both adapters serve one classifier; saved to ``<results>/adapters/`` and loaded beside A
    in ``adapter.model`` as "b" (inactive). Returns (its config, its classifier, its run); its row is not written."""
    from ..methods import apply_method, lora
    from .core import train_method
    cfg_b = dataclasses.replace(lora_cfg, targets=adapter_b_targets(course, adapter))
    tag = targets_tag(cfg_b.targets)
    clf_b = combine.set_head(course.classifier(), adapter.model.head.weight.detach(), adapter.model.head.bias.detach())
    groups_b = [g for g in apply_method("lora", clf_b, cfg_b) if g["name"] != "head"]  # B's A and B matrices only
    clf_b.head.requires_grad_(False)
    run_b = train_method(course, "lora", cfg_b, clf_b, groups_b, save=False, progress=False, variant=tag)
    b_file = lora.save_adapter(clf_b, course.results_dir / "adapters" / f"{course.run_name('lora', tag)}.pt",
                               name="default")
    lora.load_adapter(adapter.model, b_file, name="b", activate=False)   # one frozen tower and head, two adapters
    return cfg_b, clf_b, run_b


def fit_costs(course: Any, clf: Any, fit: Any) -> dict[str, Any]:
    """The counted costs of a run trained by ``engine.fit`` outside ``train_method`` (the base-to-novel model): its
    steps, budget and step time, the FLOPs of a step and of the run, its training memory by accounting."""
    from .. import costs
    images, labels = course.train_batch()
    trained = [p for p in clf.parameters() if p.requires_grad]
    counted = costs.training_costs(clf, trained, images, labels % clf.head.weight.shape[0], fit.precision)
    return {**counted, "steps": fit.steps, "epochs": fit.epochs_run, "budget": fit.budget,
            "train_tflops": costs.run_tflops(fit.steps, counted["flops_per_step"]),
            **costs.step_time_fields(fit.step_time, None)}


def fusion_evals(course: Any, adapter: Adapter, run_b: Any, pairs: Sequence[Sequence[float]],
                 precision: str) -> dict[str, dict[str, EvalResult]]:
    """Validation and test evaluations of A alone, B alone and each fused adapter ``fused<i>`` (weights ``pairs[i]``)
    held by ``adapter.model``; B's test evaluation is its training run's."""
    from ..methods import lora

    def on(name: str, splits: Sequence[str] = SPLITS) -> dict[str, EvalResult]:
        lora.set_adapter(adapter.model, name)
        return {s: evaluate(adapter.model, course.loader(s), device=course.device, precision=precision)
                for s in splits}

    fusion = {"A alone": adapter.evals, "B alone": {**on("b", ("val",)), "test": run_b.test}}
    fusion.update({f"fused {wa:g}·A + {wb:g}·B": on(f"fused{i}") for i, (wa, wb) in enumerate(pairs)})
    return fusion


def fusion_table(fusion: Mapping[str, dict[str, EvalResult]]) -> pd.DataFrame:
    """Validation and test top-1 of each model of ``fusion_evals``."""
    return pd.DataFrame({k: {"val top-1": e["val"].top1, "test top-1": e["test"].top1} for k, e in fusion.items()}).T


def write_adapter_fusion(course: Any, adapter: Adapter, run_b: Any, cfg_b: Any, fusion: Mapping[str, dict],
                         pairs: Sequence[Sequence[float]]) -> tuple[str, Path]:
    """Write the ``adapter_fusion-<A>+<B>`` row (``qv+mlp``: A on q, v, B on the MLP) of the fused weights best on
    validation; returns (its name, file).

    Parameters: both adapters and the head train; the model is the frozen tower plus them."""
    from ..methods import lora
    fused = [k for k in fusion if k.startswith("fused")]
    pick = max(fused, key=lambda k: fusion[k]["val"].top1)
    weights = pairs[fused.index(pick)]
    variant = f"{targets_tag(adapter_targets(adapter))}+{targets_tag(cfg_b.targets)}"
    combine.remove_rows(course.results_dir, "adapter_fusion", course.seed, keep={variant}, shots=course.shots)
    adapter_params = sum(p.numel() for n in (adapter.name, "b") for p in lora.lora_parameters(adapter.model, n))
    head_params = sum(p.numel() for p in adapter.model.head.parameters())
    tower_params = sum(p.numel() for p in course.loaded.model.visual.parameters())
    table = fusion_table(fusion)
    runs = [run_b.result] + ([adapter.run.result] if adapter.run is not None else [])
    trained = {k: run_b.result.get(k) for k in ("steps", "epochs", "flops_per_step", "train_memory_mb", "memory_parts",
                                                  "memory_measure", "step_ms", "step_ms_q1", "step_ms_q3",
                                                  "step_ms_spread", "step_ms_note")}
    row = combine.combination_result(
        course, "adapter_fusion", variant, fusion[pick]["test"], val_acc=fusion[pick]["val"].top1,
        trainable_params=adapter_params + head_params, total_params=tower_params + adapter_params + head_params,
        train_seconds=run_b.train.train_seconds + adapter.train_seconds, **trained,
        train_tflops=sum(r.get("train_tflops") or 0.0 for r in runs),
        budget=f"adapter B's run ({run_b.result.get('budget')})" + (" + adapter A's, trained here"
                                                                    if adapter.run is not None else ""),
        config={"weights": {"a": weights[0], "b": weights[1]}, "a": adapter.source, "b": cfg_b.to_dict(),
                "head": "adapter A's head (B was trained under it, frozen)", "chosen_on": "val"},
        alone={k: {"val_acc": fusion[k]["val"].top1, "test_acc": fusion[k]["test"].top1} for k in ("A alone", "B alone")},
        table=table.reset_index(names="model").to_dict("records"))
    return pick, _save(course, row, fusion[pick]["test"], fusion[pick]["val"])
