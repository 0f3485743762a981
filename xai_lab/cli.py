"""The ``xai-lab`` command (also ``python -m xai_lab``).

Verbs that start from an experiment take ``--config EXP``; verbs that work on a trained
run take ``--run-dir DIR``; ``train --resume DIR`` continues a stopped run in place. All
accept dotted ``key=value`` overrides after the flags and ``--smoke`` (the same work, tiny)
but ``train --resume``, which allows a few overrides only. Exit codes: 0 done, 2 bad input
(one line on stderr), 1 a bug.
"""

from __future__ import annotations

import argparse
import errno
import logging
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from xai_lab import store
from xai_lab.config import (
    RESUME_OVERRIDES,
    SMOKE_EVAL_IMAGES,
    SMOKE_EXPLAIN,
    SMOKE_PER_CLASS,
    TRAINED_RUN_OVERRIDES,
)
from xai_lab.errors import Interrupted, RunStopped, UserError
from xai_lab.signals import StopSignals

log = logging.getLogger("xai_lab")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def load_config(args: argparse.Namespace):
    from xai_lab.experiment import load_experiment, smoke_overrides

    overrides = (smoke_overrides(args.config) if args.smoke else []) + list(args.overrides)
    return load_experiment(args.config, overrides)


def load_run_config(
    args: argparse.Namespace, extra: list[str] | tuple[str, ...] = (), data_file: str | None = None
):
    """The config saved in a run folder, with the overrides a trained run allows.

    ``extra`` overrides (e.g. the smoke ones) come before the user's. ``--explain-config FILE``
    (explain only) replaces the run's ``explain`` section before the overrides. With
    ``data_file`` (a data or experiment YAML) its data section replaces the run's (cross-dataset
    evaluation); ``data.*`` overrides then apply to it.
    """
    from xai_lab.config import (
        apply_overrides,
        from_dict,
        load_saved,
        parse_override,
        read_data_section,
        read_yaml,
        to_dict,
    )
    from xai_lab.experiment import resolve
    from xai_lab.runs import resolve_run_dir

    run_dir = resolve_run_dir(args.run_dir)
    cfg = load_saved(run_dir / "config.yaml")
    overrides = [*extra, *args.overrides]
    for text in args.overrides:
        key = ".".join(parse_override(text)[0])
        if not key.startswith(TRAINED_RUN_OVERRIDES):
            shown = ", ".join(k + "*" if k.endswith(".") else k for k in TRAINED_RUN_OVERRIDES)
            raise UserError(f"override '{text}' cannot change a trained run; allowed: {shown}")
    values = to_dict(cfg)
    explain_file = getattr(args, "explain_config", None)
    if explain_file:
        section = read_yaml(explain_file) or {}
        if not isinstance(section, dict):
            raise UserError(f"{explain_file} must be a mapping of explain keys (methods, split, num_each, ...)")
        values["explain"] = section
    if data_file:
        values["data"] = read_data_section(data_file)
        cfg = resolve(from_dict(apply_overrides(values, overrides)))
        if getattr(args, "smoke", False):
            cfg.data.limit_per_class = SMOKE_PER_CLASS
            cfg.data.name = f"{cfg.data.name}_limit{SMOKE_PER_CLASS}"
        return run_dir, cfg
    return run_dir, from_dict(apply_overrides(values, overrides))


# --- verbs -------------------------------------------------------------------------------------


def cmd_prepare(args: argparse.Namespace) -> None:
    from xai_lab.data.audit import audit_dataset
    from xai_lab.data.audit_markdown import summary_lines
    from xai_lab.data.prepare import prepare

    cfg = load_config(args)
    out = prepare(cfg.data, progress=cfg.run.progress, audit=False)
    report = audit_dataset(cfg.data, out)
    print(f"prepared {cfg.data.name}: {out}/metadata.csv and {out}/splits/")
    print("\n".join(summary_lines(report)))
    print(f"audit: {out}/audit.md")


def cmd_audit(args: argparse.Namespace) -> None:
    from xai_lab.data.audit_markdown import summary_lines
    from xai_lab.data.prepare import run_audit

    cfg = load_config(args)
    report, out = run_audit(cfg.data, progress=cfg.run.progress)
    print("\n".join(summary_lines(report)))
    print(f"audit: {out}/audit.json, {out}/audit.md")


def cmd_cv(args: argparse.Namespace) -> None:
    from xai_lab.crossval import cross_validate

    if not args.config and not args.resume:
        raise UserError("the following arguments are required: --config (or --resume CV_DIR to continue one)")
    cv_dir = None
    if args.resume:
        cfg, cv_dir = _resumed_config(args, args.resume)
        if (report_dir_for_cv := _report(cv_dir, None) / "cv_summary.json").is_file():
            raise UserError(f"{cv_dir} already finished ({report_dir_for_cv}); nothing to resume")
    else:
        cfg = load_config(args)
    only = None
    if args.only:
        try:
            only = [int(f) for f in args.only.split(",") if f.strip()]
        except ValueError:
            raise UserError(f"--only must list fold numbers like 0,1,2, got {args.only!r}") from None
    stop = StopSignals()
    try:
        result = cross_validate(cfg, only, resume=cv_dir)
    except RunStopped as e:
        stopped = Path(e.run_dir)
        _record(cfg, "the stopped cross-validation", lambda s: store.record_cv(s, stopped), stopped)
        raise stop.interrupted(shlex.join(["xai-lab", "cv", "--resume", str(stopped)]),
                               "the folds that finished are kept, a fold in training resumes from its last.pt") \
            from None
    _record(cfg, "the cross-validation", lambda s: store.record_cv(s, Path(result["cv_dir"])), result["cv_dir"])
    acc, f1 = result["test_accuracy"], result["test_macro_f1"]
    print(
        f"{len(result['folds_run'])} of {result['folds']} folds: "
        f"test accuracy {acc['mean']:.4f} ± {acc['std']:.4f}, macro-F1 {f1['mean']:.4f} ± {f1['std']:.4f} "
        f"(pooled accuracy {result['pooled_test_accuracy']:.4f} on {result['test_images']} images)"
    )
    print(f"-> {result['report_dir']}/cv_summary.json")


def resume_run(args: argparse.Namespace) -> tuple:
    """``train --resume RUN_DIR``: continue a stopped run in its own folder from its ``last.pt``.

    The run's saved ``config.yaml`` is used as it is, but for the overrides in :data:`RESUME_OVERRIDES`.
    Model, EMA, optimizer, schedule, best epoch so far and the batch/augmentation/mixing generator
    come from ``last.pt``, so on the same kind of device the run ends as it would have without the
    stop. Rows of ``train_log.jsonl`` after the checkpoint's epoch (and a torn last line) are dropped by ``fit``.

    Returns:
        The config to run with and :func:`xai_lab.train.fit`'s ``run_dir`` and ``resume_from`` arguments.

    Raises:
        UserError: no such run folder, no ``last.pt`` or an unreadable one, a run that already
            finished (all epochs, or stopped by early stopping), ``--smoke``, or another override.
    """
    import json

    from xai_lab.checkpoint import load_checkpoint

    cfg, run_dir = _resumed_config(args, args.resume)
    last = run_dir / "last.pt"
    if not last.is_file():
        raise UserError(f"{run_dir} has no last.pt to resume from (it stopped before its first checkpoint); "
                        "start the experiment again with --config")
    state = load_checkpoint(last)
    try:
        epoch, best_epoch = int(state["epoch"]), int(state["best_epoch"])
        missing = [k for k in ("optimizer", "scheduler", "best_val_macro_f1") if k not in state]
    except (KeyError, TypeError, ValueError):
        missing = ["epoch/best_epoch number"]
    if missing:
        raise UserError(f"{last} is not a training checkpoint to resume from (no {', '.join(missing)} in it)")
    del state
    finished = epoch  # the last epoch that train_summary.json says was trained, when it says more
    try:
        finished = max(epoch, int(json.loads((run_dir / "train_summary.json").read_text())["final"]["epoch"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no summary (a killed run) or none worth reading: the checkpoint decides
    patience = cfg.train.early_stopping_patience
    if finished >= cfg.train.epochs or (patience and epoch - best_epoch >= patience):
        why = "all epochs" if finished >= cfg.train.epochs else f"stopped early, no better epoch for {patience}"
        raise UserError(f"{run_dir} already finished (epoch {finished} of {cfg.train.epochs}, {why}); "
                        "nothing to resume")
    log.info("resuming %s after epoch %d of %d", run_dir, epoch, cfg.train.epochs)
    return cfg, {"run_dir": run_dir, "resume_from": last}


def _resumed_config(args: argparse.Namespace, folder: str):
    """``(config, folder)`` of a stopped run or cross-validation: its saved ``config.yaml`` with the overrides
    :data:`RESUME_OVERRIDES` allows (``--smoke`` and any other override refused)."""
    from xai_lab.config import apply_overrides, from_dict, load_saved, parse_override, to_dict
    from xai_lab.runs import resolve_run_dir

    if args.smoke:
        raise UserError("--smoke cannot be used with --resume: a run continues with its own config.yaml")
    for text in args.overrides:
        key = ".".join(parse_override(text)[0])
        if key not in RESUME_OVERRIDES:
            raise UserError(f"override '{text}' would change the resumed run ('{key}'); with --resume only "
                            f"{', '.join(RESUME_OVERRIDES)} may be set")
    run_dir = resolve_run_dir(folder)
    return from_dict(apply_overrides(to_dict(load_saved(run_dir / "config.yaml")), args.overrides)), run_dir


def cmd_train(args: argparse.Namespace) -> None:
    from xai_lab.train import fit

    if not args.config and not args.resume:  # argparse's words, as for the other verbs' --config
        raise UserError("the following arguments are required: --config (or --resume RUN_DIR to continue a run)")
    if args.resume:
        cfg, where = resume_run(args)
    else:
        cfg, where = load_config(args), {}
    stop = StopSignals()
    try:
        summary = fit(cfg, **where)
    except RunStopped as e:
        stopped = Path(e.run_dir)
        _record(cfg, "the stopped run", lambda s: store.record_training(s, stopped), stopped)
        if e.epoch:
            raise stop.interrupted(shlex.join(["xai-lab", "train", "--resume", str(e.run_dir)]),
                                   f"{e.run_dir}/last.pt holds epoch {e.epoch}") from None
        again = ["xai-lab", "train", "--config", args.config, *(["--smoke"] if args.smoke else []), *args.overrides]
        raise stop.interrupted(shlex.join(again), f"stopped before the first checkpoint of {e.run_dir}") from None
    run_dir = summary["run_dir"]
    _record(cfg, "the run", lambda s: store.record_training(s, Path(run_dir)), run_dir)
    print(f"run: {run_dir}")
    print(f"best val macro-F1 {summary['best_val_macro_f1']:.4f} at epoch {summary['best_epoch']}; "
          f"next: xai-lab evaluate --run-dir {run_dir}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from xai_lab.data.dataset import load_dataset
    from xai_lab.evaluate import evaluate_other_dataset, evaluate_run

    if args.data:
        run_dir, cfg = load_run_config(args, data_file=args.data)
        dataset = load_dataset(cfg.data, progress=cfg.run.progress)
        summary = evaluate_other_dataset(run_dir, dataset, args.out, split=args.split, device=cfg.run.device,
                                         max_images=SMOKE_EVAL_IMAGES if args.smoke else None)
        print(f"{summary['trained_on']} model on {summary['dataset']} {args.split} over the shared classes "
              f"{', '.join(summary['shared_classes'])}: accuracy {summary['accuracy']:.4f}, macro-F1 "
              f"{summary['macro_f1']:.4f} (n={summary['n']}; left out {summary['n_left_out']} images of "
              f"{', '.join(summary['data_only_classes']) or 'no other class'}; model-only classes: "
              f"{', '.join(summary['model_only_classes']) or 'none'})")
        out = Path(args.out) if args.out else _report(run_dir, None) / f"cross_{summary['dataset']}"
        _record(cfg, "the evaluation", lambda s: store.record_cross(s, run_dir, summary, out), run_dir)
        print(f"-> {out}/test_summary.json")
        return
    run_dir, cfg = load_run_config(args)
    dataset = load_dataset(cfg.data, progress=cfg.run.progress)
    summary = evaluate_run(run_dir, args.out, dataset=dataset, split=args.split, device=cfg.run.device,
                           max_images=SMOKE_EVAL_IMAGES if args.smoke else None)
    report = _report(run_dir, args.out)
    _record(cfg, "the evaluation", lambda s: store.record_training(s, run_dir, report), run_dir)
    print(f"{args.split}: accuracy {summary['accuracy']:.4f}, macro-F1 {summary['macro_f1']:.4f} "
          f"(n={summary['n']}) -> {report}/test_summary.json")


def cmd_plots(args: argparse.Namespace) -> None:
    from xai_lab.plots import plot_run

    run_dir, _ = load_run_config(args)
    written = plot_run(run_dir, args.out)
    print(f"wrote {len(written)} plots to {written[0].parent}")


def cmd_explain(args: argparse.Namespace) -> None:
    from xai_lab.data.dataset import load_dataset
    from xai_lab.explain.run import explain_run

    run_dir, cfg = load_run_config(args, SMOKE_EXPLAIN if args.smoke else ())
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    dataset = load_dataset(cfg.data, progress=cfg.run.progress)
    result = explain_run(run_dir, args.out, split=args.split, num_each=args.num_each, methods=methods,
                         dataset=dataset, device=cfg.run.device, explain_config=cfg.explain)
    report = _report(run_dir, args.out)
    _record(cfg, "the explanations", lambda s: store.record_training(s, run_dir, report), run_dir)
    print(f"wrote {sum(map(len, result.values()))} explanations to {report}/xai/")
    for method, entry in result.metrics.items():
        def baselines(k: str, e: dict = entry) -> str:
            rmod = e["randomized_model_baseline"].get(k)
            return f"random {e['random_baseline'][k]:.3f}" + (f", randomized model {rmod:.3f}" if rmod is not None
                                                              else "")
        scores = ", ".join(f"{k} {entry[k]:.3f} ({baselines(k)})" for k in ("deletion_auc", "insertion_auc",
                           "randomization_spearman", "pointing_game", "mask_iou") if k in entry)
        print(f"{method}: {scores}")
        if not entry["randomization_passed"]:
            print(f"{method} {entry['randomization_verdict']}")
        print(f"{method} {entry['randomized_model_verdict']}")
    if result.metrics:
        print(f"metrics: {report}/xai/metrics.json and metrics.md")


def cmd_sweep(args: argparse.Namespace) -> None:
    from sweeps.cli import cmd_sweep as run  # the orchestration layer; imports Ray

    run(args)


def cmd_report(args: argparse.Namespace) -> None:
    from sweeps.cli import cmd_report as run

    run(args)


def cmd_compare(args: argparse.Namespace) -> None:
    """``xai-lab compare --runs [NAME=]RUN_DIR ... [--out DIR] [--methods a,b] [key=value ...]``."""
    import re

    from sweeps.compare import compare_runs  # the sweep's comparison code; no Ray is started
    from xai_lab.config import SECTIONS

    # argparse hands every word after --runs to it: the dotted overrides are told apart by their section
    override = re.compile(rf"^({'|'.join(SECTIONS)})\.[\w.]+=")
    runs = [a for a in args.runs if not override.match(a)]
    overrides = [a for a in args.runs if override.match(a)] + list(args.overrides)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    index = compare_runs(runs, args.out, methods=methods, num_each=args.num_each, overrides=overrides,
                         smoke=args.smoke, progress=not args.quiet)
    print(f"comparison: {index.parent}")
    print(f"report: {index.resolve()}")


def cmd_runs(args: argparse.Namespace) -> None:
    """``xai-lab runs [--filter EXPR] [--sort KEY] [--columns a,b] [--csv]`` or ``xai-lab runs --sync PATH...``."""
    found = store.open_store(args.store or "")
    if found is None:
        raise UserError("the run store is off (store.uri / XAI_LAB_STORE is none); pass --store URI")
    with found:  # its connections closed when done
        if args.sync:
            _sync_runs(found, args.sync)
        else:
            _list_runs(found, args)


def _sync_runs(found: store.Store, paths: list[str]) -> None:
    counts = store.sync(found, paths)
    print(f"store {store.shown(found.uri)}: {counts['runs']} runs, {counts['cv']} cross-validations, "
          f"{counts['sweeps']} sweeps ({counts['trials']} trials) found; {len(found.created)} new records, the rest "
          "already there (updated with what was new)")


def _list_runs(found: store.Store, args: argparse.Namespace) -> None:
    import pandas as pd

    table = store.search(found, args.filter or "", args.sort, args.experiment, args.max)
    if table.empty:
        print(f"no runs in {store.shown(found.uri)}" + (f" match {args.filter!r}" if args.filter else ""),
              file=sys.stderr)
        return
    columns = _run_columns(table, args.columns)
    view = table[columns].rename(columns=lambda c: c.split(".", 1)[1] if c.startswith(_PREFIXES) else c)
    if args.csv:
        view.to_csv(sys.stdout, index=False)
    else:
        with pd.option_context("display.max_colwidth", 80, "display.width", 250,
                               "display.float_format", "{:.4f}".format):
            print(view.astype(object).where(view.notna(), "").to_string(index=False))


_PREFIXES = ("params.", "metrics.", "tags.")
# xai-lab runs' default columns (those some run has); every metric named <method>.pointing_game joins them
RUN_COLUMNS = ("start", "experiment", "run", "tags.xai_lab.kind", "tags.xai_lab.dataset", "params.model.name",
               "status", "metrics.best_val_macro_f1", "metrics.test_accuracy", "metrics.test_macro_f1")


def _run_columns(table, asked: str | None) -> list[str]:
    """The columns ``--columns`` names (a short name is looked up as a metric, a param, a tag, an ``xai_lab.`` tag,
    in that order), or
    the default ones with every ``<method>.pointing_game`` and the report folder."""
    if not asked:
        pointing = [c for c in table.columns if c.startswith("metrics.") and c.endswith(".pointing_game")]
        return [c for c in (*RUN_COLUMNS, *pointing, "tags.xai_lab.report_dir") if c in table.columns]
    columns = []
    for name in (c.strip() for c in asked.split(",") if c.strip()):
        match = next((c for c in (name, f"metrics.{name}", f"params.{name}", f"tags.{name}", f"tags.xai_lab.{name}")
                      if c in table.columns), None)
        if match is None:
            raise UserError(f"--columns: no run has {name!r}; columns are run, experiment, status, start, run_id "
                            "and params.*, metrics.*, tags.* (e.g. metrics.test_accuracy, params.model.depth)")
        columns.append(match)
    return columns


def _record(cfg, what: str, fn: Callable, sync: str | Path) -> None:
    """Record in the run store (:mod:`xai_lab.store`): a store that does not answer is one warning, not a failure."""
    store.record(cfg.store, what, fn, sync)


def _report(run_dir: Path, out: str | None) -> Path:
    from xai_lab.runs import report_dir_for

    return Path(out) if out else report_dir_for(run_dir)


# --- parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="xai-lab", description=__doc__.split("\n\n")[0])
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and results")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)

    def verb(name: str, fn: Callable, help_: str, run_dir: bool = False, resume: str = ""
             ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        if run_dir:
            p.add_argument("--run-dir", required=True, help="a run folder (artifacts/runs/<exp>/<id> or .../latest)")
            p.add_argument("--out", default=None, help="report folder (default: artifacts/reports/<exp>/<id>)")
        elif resume:  # --config EXP, or --resume FOLDER (the verb says when neither is given)
            one = p.add_mutually_exclusive_group()
            one.add_argument("--config", help="experiment YAML (configs/experiments/*.yaml)")
            metavar, text = resume.split(": ", 1)
            one.add_argument("--resume", metavar=metavar, help=f"{text}, with its own config; overrides: "
                             f"only {', '.join(RESUME_OVERRIDES)}")
        else:
            p.add_argument("--config", required=True, help="experiment YAML (configs/experiments/*.yaml)")
        p.add_argument("--smoke", action="store_true", help="the same work, tiny: a few images, one short epoch")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
        p.set_defaults(func=fn)
        return p

    verb("prepare", cmd_prepare, "manifest, stratified splits and decoded cache of a dataset")
    verb("train", cmd_train, "one training run",
         resume="RUN_DIR: continue a stopped run (artifacts/runs/<exp>/<id> or .../latest) in place from its last.pt")
    cv = verb("cv", cmd_cv, "k-fold cross-validation (data.folds): a run per fold, mean and std of scores",
              resume="CV_DIR: carry on with a stopped cross-validation (artifacts/runs/<exp>/cv-<id>): finished "
              "folds kept, the others resumed or run")
    cv.add_argument("--only", default=None, help="comma-separated folds to run (default: all)")
    verb("audit", cmd_audit, "duplicates, leakage, label conflicts, size/mode/brightness per class, balance")
    ev = verb("evaluate", cmd_evaluate, "test metrics of a run's best checkpoint", run_dir=True)
    ev.add_argument("--split", default="test", choices=["train", "val", "test"])
    ev.add_argument("--data", default=None, metavar="DATA_YAML",
                    help="score on another dataset (configs/data/*.yaml) over the emotions both share")
    verb("plots", cmd_plots, "training curves and the confusion matrix as PNGs", run_dir=True)
    ex = verb("explain", cmd_explain, "explanation galleries and metrics (faithfulness, sanity, masks)",
              run_dir=True)
    ex.add_argument("--split", default=None, choices=["train", "val", "test"])
    ex.add_argument("--num-each", type=int, default=None, help="images per gallery (default: explain.num_each)")
    ex.add_argument("--methods", default=None,
                    help="comma-separated, e.g. saliency,gradcam (overrides explain.methods)")
    ex.add_argument("--explain-config", default=None, metavar="FILE",
                    help="an explain YAML (configs/explain/*.yaml) replacing the run's explain section")
    _add_sweep_verbs(sub)
    _add_runs_verb(sub)
    return parser


def _add_sweep_verbs(sub) -> None:
    """sweep, report and compare: the verbs sweeps/ carries out."""
    sw = sub.add_parser("sweep", help="Ray Tune + Optuna sweep, then reports of the best trials",
                        description="Ray Tune + Optuna sweep over the base experiments of a sweep YAML, "
                        "then evaluate/plots/explain of the top-k trials, the comparison and index.html")
    sw.add_argument("--config", required=True, help="sweep YAML (configs/sweeps/*.yaml)")
    sw.add_argument("--resume", action="store_true",
                    help="carry on with an interrupted sweep of the same name")
    sw.add_argument("--address", default=None,
                    help="a running Ray cluster: auto, or host:port (default: RAY_ADDRESS, else a local Ray)")
    sw.add_argument("--dashboard", action="store_true",
                    help="start the local Ray with its dashboard on 127.0.0.1")
    sw.add_argument("--top", type=_non_negative, default=None,
                    help="report the top K trials per dataset (default: fanout.top_k)")
    sw.add_argument("--smoke", action="store_true", help="the same work, tiny: two trials of one short epoch")
    sw.add_argument("overrides", nargs="*", metavar="key=value",
                    help="dotted sweep overrides (search.num_samples=4)")
    sw.set_defaults(func=cmd_sweep)
    rp = sub.add_parser("report", help="index.html over a sweep's best trials",
                        description="pull the best trials' reports of a sweep into one folder, "
                        "with index.html")
    rp.add_argument("--sweep", required=True, help="the sweep folder (ray_results/<sweep>)")
    rp.add_argument("--top", type=_non_negative, default=None,
                    help="best K reported trials per dataset (default: all)")
    rp.add_argument("--out", default=None,
                    help="folder to pull the reports into (default: the sweep folder)")
    rp.set_defaults(func=cmd_report)
    cp = sub.add_parser("compare", help="compare trained runs across datasets: reports, transfer matrix, index.html",
                        description="report each run on its own test split, test every model on every run's "
                        "test split over the shared classes (the transfer matrix), and write the comparison "
                        "and index.html a sweep writes")
    cp.add_argument("--runs", nargs="+", required=True, metavar="[NAME=]RUN_DIR",
                    help="run folders (train, a cv fold, a sweep trial's checkpoint); NAME= names one (default: "
                    "its data.name)")
    cp.add_argument("--out", default=None, help="a new folder (default: artifacts/comparisons/<time>)")
    cp.add_argument("--methods", default=None, help="comma-separated explainers (default: the first run's)")
    cp.add_argument("--num-each", type=int, default=None, help="images per gallery (default: explain.num_each)")
    cp.add_argument("--smoke", action="store_true", help="the same work, tiny: a few images, cheap explainers")
    cp.add_argument("overrides", nargs="*", metavar="key=value",
                    help="explain.*, run.device, run.progress, train.eval_batch_size, train.amp")
    cp.set_defaults(func=cmd_compare)


def _add_runs_verb(sub) -> None:
    """runs: the run store (docs/store.md)."""
    rs = sub.add_parser("runs", help="list and filter the run store, or record folders made while it was off",
                        description="every run, cross-validation, evaluation, explanation and sweep trial "
                        "recorded in the run store (MLflow tracking; docs/store.md)")
    rs.add_argument("--store", default=None, metavar="URI",
                    help="the store (default: $XAI_LAB_STORE, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    rs.add_argument("--filter", default=None, metavar="EXPR",
                    help="MLflow search syntax, e.g. \"params.data.name = 'ckplus' and metrics.test_accuracy > 0.9\"")
    rs.add_argument("--sort", action="append", default=None, metavar="KEY",
                    help="e.g. 'metrics.test_accuracy DESC' (repeatable; default: newest first)")
    rs.add_argument("--columns", default=None, help="comma-separated, e.g. run,params.model.depth,test_accuracy")
    rs.add_argument("--experiment", action="append", default=None, metavar="NAME",
                    help="only this experiment (an experiment name, or sweep/<sweep name>; repeatable)")
    rs.add_argument("--max", type=_non_negative, default=1000, help="at most this many runs (default 1000)")
    rs.add_argument("--csv", action="store_true", help="CSV on stdout")
    rs.add_argument("--sync", nargs="+", default=None, metavar="PATH",
                    help="record the runs, cross-validations and sweeps under PATH (artifacts, ray_results/<sweep>, "
                    "a run folder) that are not in the store yet")
    rs.set_defaults(func=cmd_runs)


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already reported in one line
        return int(e.code or 0)
    if args.verb is None:
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s",
                        stream=sys.stderr)
    try:
        args.func(args)
    except UserError as e:
        print(f"xai-lab {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {e.filename}" if e.filename else ""
        print(f"xai-lab {args.verb}: error: no space left on the device{where}; free some space and run the "
              "command again", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        why = e.message if isinstance(e, Interrupted) else "interrupted"
        print(f"xai-lab {args.verb}: {why}", file=sys.stderr)
        return e.exit_code if isinstance(e, Interrupted) else 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
