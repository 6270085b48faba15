"""`align` command line: validate, plan, run (the Prefect flow), stage (what dvc.yaml calls),
dvc (write dvc.yaml from a pipeline), plots (the DVC plots as an offline HTML page)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from align.config import load_pipeline
from align.config.losses import loss_parameters
from align.core.errors import AlignError
from align.core.io import atomic_write_text


def _add_pipeline(p: argparse.ArgumentParser) -> None:
    p.add_argument("pipeline", help="pipelines/<name>.yaml")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override any YAML key (repeatable), e.g. --set train.loss.beta=0.1",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="same stage structure on the tiny model with a handful of records",
    )


def cmd_validate(args: argparse.Namespace) -> int:
    cfg = load_pipeline(args.pipeline, args.overrides, args.smoke)
    from align.pipeline import active_stages

    print(
        f"{args.pipeline}: ok — pipeline {cfg.name!r}, loss {cfg.train.loss.name}, "
        f"stages: {' -> '.join(active_stages(cfg))}"
    )
    values = cfg.train.loss.model_dump(by_alias=True)
    for key, default, reason in loss_parameters(cfg.train.loss.name):
        note = "default" if values[key] == default else f"default {json.dumps(default)}"
        print(f"  train.loss.{key} = {json.dumps(values[key])}  ({note}; {reason})")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from align.pipeline import plan

    cfg = load_pipeline(args.pipeline, args.overrides, args.smoke)
    table = Table(title=f"{cfg.name}: {args.pipeline}")
    for col in ("stage", "inputs", "outputs", "hash", "status"):
        table.add_column(col)
    for p in plan(cfg):
        inputs = "\n".join(f"{k}: {str(v)[:40]}" for k, v in p.inputs.items()) or "-"
        table.add_row(
            p.name,
            inputs,
            "\n".join(o.path for o in p.outs),
            p.stage_hash[:12],
            "[green]cached[/]" if p.cached else "[yellow]to run[/]",
        )
    Console().print(table)
    print_resources(cfg)
    return 0


def print_resources(cfg) -> None:
    """`align plan`'s lines under the table: each stage's device, the train stage's figures."""
    from align.pipeline.resources import stage_placement, train_figures

    print(f"placement (model.device: {cfg.model.device}):")
    for stage, where in stage_placement(cfg).items():
        print(f"  {stage}: {where}")
    print("train:")
    for line in train_figures(cfg):
        print(f"  {line}")


def cmd_stage(args: argparse.Namespace) -> int:
    from align.pipeline import run_stage

    cfg = load_pipeline(args.pipeline, args.overrides, args.smoke)
    manifest, ran = run_stage(cfg, args.stage, force=args.force)
    print(
        f"{args.stage}: {'done' if ran else 'up to date'} "
        f"({manifest['stage_hash'][:12]}) {manifest['summary']}"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from align.pipeline import plan, run_stage, stage_folder

    cfg = load_pipeline(
        args.pipeline, args.overrides, args.smoke
    )  # fail fast, before Prefect starts
    started = time.time()
    if args.no_prefect:
        for p in plan(cfg):
            _, ran = run_stage(cfg, p.name)
            print(f"{p.name}: {'done' if ran else 'up to date'}")
        if args.record_dvc:
            from flows.dvc_record import record_in_dvc_lock

            print(record_in_dvc_lock(args.pipeline, args.overrides, args.smoke))
    else:
        from flows.align import align_flow

        align_flow(args.pipeline, args.overrides, args.smoke, args.record_dvc)
    print(f"pipeline {cfg.name} finished in {time.time() - started:.1f}s")
    evaluation = stage_folder(cfg, "evaluate") / "report.md"
    if evaluation.is_file():
        print(evaluation.read_text())
    run_report = stage_folder(cfg, "report.md")  # written by the flow (flows/report.py)
    last = plan(cfg)[-1]
    print(f"report: {run_report if run_report.is_file() else stage_folder(cfg, last.name)}")
    return 0


def _dvc_one(pipeline: str, output: Path, check: bool) -> bool:
    """Write (or with `check`, compare) one pipeline's dvc.yaml; True when it is up to date."""
    from align.pipeline.dvcfile import render_dvc_yaml

    text = render_dvc_yaml(load_pipeline(pipeline), pipeline, output)
    if check:
        if not output.is_file() or output.read_text() != text:
            print(f"{output} is out of date with {pipeline}; run `align dvc {pipeline}`")
            return False
        return True
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, text)
    print(f"wrote {output}")
    return True


def cmd_dvc(args: argparse.Namespace) -> int:
    from align.pipeline.dvcfile import NESTED_DIR, dvc_file_for

    if args.all == bool(args.pipeline):
        raise AlignError("align dvc: give one PIPELINE or --all (every pipelines/*.yaml)")
    if not args.all:
        output = Path(args.output) if args.output else dvc_file_for(args.pipeline)
        return 0 if _dvc_one(args.pipeline, output, args.check) else 1
    pipelines = [str(p) for p in sorted(Path("pipelines").glob("*.yaml"))]
    ok = all([_dvc_one(p, dvc_file_for(p), args.check) for p in pipelines])
    expected = {dvc_file_for(p) for p in pipelines}
    for stray in sorted(NESTED_DIR.glob("*/dvc.yaml")):
        if stray not in expected:
            ok = False
            print(f"{stray} has no pipeline in pipelines/; delete it")
    return 0 if ok else 1


def cmd_plots(args: argparse.Namespace) -> int:
    from align.pipeline import stage_folder
    from align.pipeline.plots_page import write_plots_page

    cfg = load_pipeline(args.pipeline, args.overrides, args.smoke)
    output = Path(args.output) if args.output else stage_folder(cfg, "plots.html")
    print(f"wrote {write_plots_page(cfg, output)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="align", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="check a pipeline YAML")
    _add_pipeline(p)
    p.set_defaults(fn=cmd_validate)
    p = sub.add_parser("plan", help="show the DAG, each stage's inputs, outputs and cache status")
    _add_pipeline(p)
    p.set_defaults(fn=cmd_plan)
    p = sub.add_parser("run", help="run the whole pipeline through the Prefect flow 'align'")
    _add_pipeline(p)
    p.add_argument("--no-prefect", action="store_true", help="run the stages in-process, in order")
    p.add_argument(
        "--record-dvc", action="store_true", help="afterwards, record the outputs in dvc.lock"
    )
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("stage", help="run one stage (what dvc.yaml calls)")
    _add_pipeline(p)
    p.add_argument("stage")
    p.add_argument("--force", action="store_true", help="re-run even when the output is current")
    p.set_defaults(fn=cmd_stage)
    p = sub.add_parser("dvc", help="write the dvc.yaml of a pipeline (or of --all of them)")
    p.add_argument("pipeline", nargs="?")
    p.add_argument("--all", action="store_true", help="every pipelines/*.yaml")
    p.add_argument("--output", help="default: dvc.yaml for the quickstart, else dvc/<name>/")
    p.add_argument("--check", action="store_true", help="exit 1 if the file differs")
    p.set_defaults(fn=cmd_dvc)
    p = sub.add_parser("plots", help="the DVC plots as a self-contained HTML page (no network)")
    _add_pipeline(p)
    p.add_argument("--output", help="default: runs/<name>/plots.html")
    p.set_defaults(fn=cmd_plots)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except AlignError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
