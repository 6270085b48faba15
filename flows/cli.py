"""`align` command line: validate, plan, run (the Prefect flow), stage (what dvc.yaml calls),
dvc (write dvc.yaml from a pipeline), plots (the DVC plots as an offline HTML page), sweep (a
grid of settings with a paired comparison)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

from align.config import PipelineConfig
from align.config import load_pipeline as _load
from align.config.losses import loss_parameters
from align.core.errors import AlignError
from align.core.io import atomic_write_text
from flows.output import LINES, NORMAL, QUIET, VERBOSE, stage_line, verbosity


def load_pipeline(args: argparse.Namespace) -> PipelineConfig:
    """The command's pipeline with its overrides; says which loss parameters a loss switch
    dropped (`--set train.loss.name=...`, align/config/load.py), unless quiet."""
    notes: list[str] = []
    cfg = _load(args.pipeline, args.overrides, args.smoke, notes)
    for note in notes if args.verbosity > QUIET else []:
        print(note, file=sys.stderr)
    return cfg


def _add_verbosity(p: argparse.ArgumentParser, default: object) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "-q",
        "--quiet",
        dest="verbosity",
        action="store_const",
        const=QUIET,
        default=default,
        help="errors and results only: no progress bars, no per-stage lines",
    )
    group.add_argument(
        "-v",
        "--verbose",
        dest="verbosity",
        action="store_const",
        const=VERBOSE,
        default=default,
        help="everything: Prefect's logs, library warnings, full paths and hashes",
    )


def _add_pipeline(p: argparse.ArgumentParser) -> None:
    _add_verbosity(p, argparse.SUPPRESS)  # `align -q run ...` and `align run -q ...` alike
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
    from align.data.peek import check_inputs
    from align.pipeline import active_stages

    cfg = load_pipeline(args)
    checked = check_inputs(cfg)
    if args.verbosity == QUIET:
        return 0
    print(
        f"{args.pipeline}: ok — pipeline {cfg.name!r}, loss {cfg.train.loss.name}, "
        f"stages: {' -> '.join(active_stages(cfg))}"
    )
    if (rc := cfg.rounds) is not None:
        window = f"{rc.prompts_per_round} fresh prompts" if rc.prompts_per_round else "all prompts"
        print(
            f"  rounds: each run is one round from the {rc.policy_from} policy, reference "
            f"{rc.reference}, {window} per round; promoted when {rc.promote.metric} >= the "
            f"incumbent's + {rc.promote.min_delta:g}"
        )
    values = cfg.train.loss.model_dump(by_alias=True)
    for key, default, reason in loss_parameters(cfg.train.loss.name):
        note = "default" if values[key] == default else f"default {json.dumps(default)}"
        print(f"  train.loss.{key} = {json.dumps(values[key])}  ({note}; {reason})")
    for line in checked:
        print(f"  {line}")
    return 0


def _plan_json(cfg: PipelineConfig) -> list[dict]:
    from align.pipeline import plan

    return [
        {
            "stage": p.name,
            "status": "cached" if p.cached else "to run",
            "stage_hash": p.stage_hash,
            "config_hash": p.config_hash,
            "inputs": p.inputs,
            "outputs": [o.path for o in p.outs],
        }
        for p in plan(cfg)
    ]


def _short_outputs(paths: list[str], run_folder: str) -> str:
    """The folders of the outputs, relative to the run folder ('train/'); files in it: -v."""
    rel = [Path(os.path.relpath(p, run_folder)).parts[0] for p in paths]
    return ", ".join(f"{r}/" for r in dict.fromkeys(rel))


def cmd_plan(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    cfg = load_pipeline(args)
    stages = _plan_json(cfg)
    if args.json:
        print(json.dumps(stages, indent=2, default=str))
        return 0
    run_folder = str(Path(cfg.runs_dir) / cfg.name)
    console = Console()
    if args.verbosity == VERBOSE:  # one block per stage: full hashes and paths do not fit a table
        console.print(f"[bold]{cfg.name}[/]: {args.pipeline}")
        for st in stages:
            console.print(f"\n[bold]{st['stage']}[/] ({st['status']})")
            console.print(f"  stage hash {st['stage_hash']}", soft_wrap=True)
            for key, value in st["inputs"].items():
                console.print(f"  input {key}: {value}", soft_wrap=True)
            for path in st["outputs"]:
                console.print(f"  output {path}", soft_wrap=True)
        return 0
    table = Table(title=f"{cfg.name}: {args.pipeline}", caption=f"outputs under {run_folder}/")
    for col in ("stage", "status", "reads", "writes"):
        table.add_column(col, overflow="fold")
    for st in stages:
        table.add_row(
            st["stage"],
            "[green]cached[/]" if st["status"] == "cached" else "[yellow]to run[/]",
            ", ".join(st["inputs"]) or "-",
            _short_outputs(st["outputs"], run_folder),
        )
    console.print(table)
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
    from align.pipeline import run_stage, stage_folder

    cfg = load_pipeline(args)
    with _stoppable():
        manifest, ran = run_stage(cfg, args.stage, force=args.force)
    if args.verbosity > QUIET:
        print(stage_line(args.stage, manifest, ran, str(stage_folder(cfg, args.stage))))
    if args.verbosity == VERBOSE:
        print(json.dumps(manifest, indent=2, default=str))
    return 0


@contextlib.contextmanager
def _stoppable() -> Iterator[None]:
    from flows.stopping import stoppable

    with stoppable():
        yield


@contextlib.contextmanager
def temporary_prefect_server() -> Iterator[None]:
    """One temporary Prefect server for this run, unless PREFECT_API_URL names one. Its URL goes
    into the environment, so the stage worker processes report to it instead of each starting
    a server of its own."""
    if os.environ.get("PREFECT_API_URL"):
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_HOME

    from align.core.io import exclusive_lock

    server = SubprocessASGIServer()  # the instance this process's Prefect client would start
    # Two runs starting at once would both migrate the same database (one fails): the second
    # starts its server once the first one's is up and its database migrated.
    with exclusive_lock(Path(PREFECT_HOME.value()) / "server-start.lock", "a Prefect server start"):
        server.start()  # stopped at exit, after Prefect's last logs and events reach it
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        yield
    finally:
        os.environ.pop("PREFECT_API_URL", None)


def cmd_run(args: argparse.Namespace) -> int:
    from align.data.peek import check_inputs
    from align.pipeline import plan, run_stage, stage_folder

    cfg = load_pipeline(args)  # fail fast, before Prefect starts
    check_inputs(cfg, local_only=True)  # a wrong column, before any model loads
    started = time.time()
    with _stoppable():
        if args.no_prefect:
            from align.pipeline.rounds import close_round, prepare_run

            cfg, overrides, round_plan = prepare_run(args.pipeline, args.overrides, args.smoke)
            for p in plan(cfg):
                manifest, ran = run_stage(cfg, p.name)
                LINES.info(stage_line(p.name, manifest, ran, str(p.folder)))
            if round_plan is not None:
                record = close_round(cfg, round_plan)
                LINES.info(f"round {record['round']} {record['decision']}: {record['reason']}")
            if args.record_dvc:
                from flows.dvc_record import record_run

                LINES.info(record_run(args.pipeline, overrides, args.smoke, cfg))
        else:
            with temporary_prefect_server():
                from flows.align import align_flow

                align_flow(args.pipeline, args.overrides, args.smoke, args.record_dvc)
    run_report = stage_folder(cfg, "report.md")  # written by the flow (flows/report.py)
    last = plan(cfg)[-1]
    report = run_report if run_report.is_file() else stage_folder(cfg, last.name)
    evaluation = stage_folder(cfg, "evaluate") / "report.md"
    if args.verbosity > QUIET:
        print(f"pipeline {cfg.name} finished in {time.time() - started:.0f}s")
        if evaluation.is_file():
            print(evaluation.read_text())
    print(f"report: {report}")
    return 0


def _dvc_one(pipeline: str, output: Path, check: bool) -> bool:
    """Write (or with `check`, compare) one pipeline's dvc.yaml; True when it is up to date."""
    from align.pipeline.dvcfile import render_dvc_yaml
    from flows.dvc_params import check_param_round_trip

    check_param_round_trip(pipeline)  # `dvc exp run -S` must not corrupt the file it edits
    text = render_dvc_yaml(_load(pipeline), pipeline, output)
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
    if args.check:  # a pipeline's nested dvc.yaml exists once someone uses it with DVC
        pipelines = [p for p in pipelines if dvc_file_for(p).is_file()]
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

    cfg = load_pipeline(args)
    if args.exp:
        from align.pipeline.plots_compare import write_compare_page
        from flows.dvc_exps import experiment_curves

        output = Path(args.output) if args.output else stage_folder(cfg, "plots-compare.html")
        runs = experiment_curves(cfg, args.exp)
        print(f"wrote {write_compare_page(runs, output, f'{cfg.name}: ' + ' vs '.join(runs))}")
        return 0
    output = Path(args.output) if args.output else stage_folder(cfg, "plots.html")
    print(f"wrote {write_plots_page(cfg, output)}")
    return 0


def cmd_rounds(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from align.pipeline.rounds import promote_by_hand, read_events, round_display, rounds_table

    cfg = load_pipeline(args)
    if cfg.rounds is None:
        raise AlignError(f"{args.pipeline}: no rounds section; add one (docs/rounds.md)")
    if args.promote is not None:
        promote_by_hand(cfg, args.promote)
        print(f"round {args.promote} is now the incumbent; the next run trains from its model")
    rows = [round_display(r) for r in rounds_table(read_events(cfg))]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"{cfg.name}: no rounds yet; `align run {args.pipeline}` runs round 1")
        return 0
    table = Table(title=f"{cfg.name}: rounds (* = incumbent)")
    for col in rows[0]:
        table.add_column(col)
    for row in rows:
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()))
    Console().print(table)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from align.pipeline.sweep import parse_grid, run_sweep
    from align.pipeline.sweep_report import write_report

    grid = parse_grid(args.grid)
    started = time.time()
    root, cells = run_sweep(args.pipeline, args.overrides, args.smoke, grid, args.until, args.jobs)
    summary = write_report(root)
    print((root / "summary.md").read_text())
    print(f"{len(cells)} cells in {time.time() - started:.1f}s; summary: {root / 'summary.md'}")
    if summary["figure"]:
        print(f"probe figure: {summary['figure']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="align", description=__doc__)
    parser.add_argument("--version", action="version", version=f"align {version('align')}")
    _add_verbosity(parser, NORMAL)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "validate", help="check a pipeline YAML and the columns and first records of its data"
    )
    _add_pipeline(p)
    p.set_defaults(fn=cmd_validate)
    p = sub.add_parser("plan", help="show the DAG, each stage's inputs, outputs and cache status")
    _add_pipeline(p)
    p.add_argument("--json", action="store_true", help="every stage's hashes, inputs, outputs")
    p.set_defaults(fn=cmd_plan)
    p = sub.add_parser("run", help="run the whole pipeline through the Prefect flow 'align'")
    _add_pipeline(p)
    p.add_argument("--no-prefect", action="store_true", help="run the stages in-process, in order")
    p.add_argument(
        "--no-record-dvc",
        dest="record_dvc",
        action="store_false",
        help="leave dvc.lock alone (default: record the outputs there, as `dvc repro` would)",
    )
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("stage", help="run one stage (what dvc.yaml calls)")
    _add_pipeline(p)
    p.add_argument("stage")
    p.add_argument("--force", action="store_true", help="re-run even when the output is current")
    p.set_defaults(fn=cmd_stage)
    p = sub.add_parser(
        "dvc", help="write the dvc.yaml of a pipeline (or of --all of them; --check: those present)"
    )
    p.add_argument("pipeline", nargs="?")
    p.add_argument("--all", action="store_true", help="every pipelines/*.yaml")
    p.add_argument("--output", help="default: dvc.yaml for the quickstart, else dvc/<name>/")
    p.add_argument("--check", action="store_true", help="exit 1 if the file differs")
    p.set_defaults(fn=cmd_dvc)
    p = sub.add_parser("plots", help="the DVC plots as a self-contained HTML page (no network)")
    _add_pipeline(p)
    p.add_argument(
        "--exp",
        nargs="+",
        metavar="REV",
        help="overlay these DVC experiments (names from `dvc exp show`, commits, or workspace)",
    )
    p.add_argument("--output", help="default: runs/<name>/plots.html (plots-compare.html)")
    p.set_defaults(fn=cmd_plots)
    p = sub.add_parser("rounds", help="the table of rounds of an iterative pipeline")
    _add_pipeline(p)
    p.add_argument(
        "--promote", type=int, metavar="N", help="make promoted round N the incumbent (roll back)"
    )
    p.add_argument("--json", action="store_true", help="the table as JSON")
    p.set_defaults(fn=cmd_rounds)
    p = sub.add_parser(
        "sweep", help="run a grid of settings sharing upstream stages; compare with paired stats"
    )
    _add_pipeline(p)
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY.PATH=[V1,V2,...]",
        help="a key and its values (repeatable; cells are every combination), "
        "e.g. --grid 'train.loss.name=[nca,dpo]' --grid 'train.seed=[0,1,2]'",
    )
    p.add_argument("--until", help="last stage each cell runs (default: the pipeline's last)")
    p.add_argument(
        "--jobs", type=int, default=1, help="cells at a time, each with cores/jobs threads"
    )
    p.set_defaults(fn=cmd_sweep)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with verbosity(args.verbosity):  # before Prefect, transformers or torch are imported
            return args.fn(args)
    except AlignError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # only where no stage ran yet (flows/stopping.py handles the rest)
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
