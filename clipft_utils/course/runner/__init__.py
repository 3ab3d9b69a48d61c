"""Run the course's notebooks headlessly with papermill (behind both ``run_all.sh`` and ``python -m clipft_utils run``).

A run is a plan of jobs — one notebook for one (shots, seed) — checked completely before the first one starts:
every ``-p`` parameter must be declared by a planned notebook (or be a field of a method's config, scoped as
``lora.rank=4``) and valid; the data, the weights and the devices must be there. A job is skipped only when its
completion record matches: same parameters, code, notebook, model weights and data, and every file it wrote
still there unchanged; otherwise it runs and the runner says why. Jobs can be spread over several devices (one
kernel each) or split into deterministic shards for a cluster; they all write atomically into one results folder.

The sections, one module each: ``jobs`` (the plan: jobs, course order, shards, what a job trains), ``checks`` (parameters,
checked first), ``fingerprints`` (what defines a job, completion records, inputs from other jobs), ``execute``
(locks, the notebook worker, set-aside files, Ctrl-C, devices) and ``run`` (``run_all``).
"""
from .checks import check_configs, declared, merge_extra, split_extra
from .execute import FolderLock, Interrupted, STOP, clean_leftovers, execute_all, run_job, run_reason
from .fingerprints import Context, code_version, fingerprint, why_run, write_record
from .jobs import (COMPARISON, Job, Report, Step, config_param, depends, describe_training, make_jobs, notebooks,
                   parse_shard, plan, shard_of)
from .run import dataset_names, run_all, stoppable

__all__ = ["COMPARISON", "Context", "FolderLock", "Interrupted", "Job", "Report", "STOP", "Step", "check_configs",
           "clean_leftovers", "code_version", "config_param", "dataset_names", "declared", "depends",
           "describe_training", "execute_all", "fingerprint", "make_jobs", "merge_extra", "notebooks", "parse_shard",
           "plan", "run_all", "run_job", "run_reason", "shard_of", "split_extra", "stoppable", "why_run",
           "write_record"]
