"""Command-line interface: parse, call the library, print. Nothing else lives here.

Every user mistake arrives as a :class:`~tertulia.errors.UserError` and leaves
as one line ``error: …`` on stderr with exit code 2 (a traceback only with
``--debug``).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from .errors import ConfigError, DataError, RunDirError, UserError

app = typer.Typer(
    name="tertulia",
    help="Orchestras of tiny recursive models: build, train and judge them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out_console = Console()
T = TypeVar("T")

DebugOpt = Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")]
DeviceOpt = Annotated[
    str | None,
    typer.Option(
        "--device",
        help="Where the models run: cpu, cuda, cuda:N or auto (CUDA when there is a GPU); "
        "default: the recipe's runtime.device (cpu).",
    ),
]


def _guard(debug: bool, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except UserError as exc:
        if debug:
            raise
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        console.print("interrupted", highlight=False)
        raise typer.Exit(130) from None


class _ProgressEvents:
    """Turns job events into a rich progress bar (one task per model)."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.tasks: dict[str, Any] = {}

    def __call__(self, event: str, payload: dict[str, Any]) -> None:
        p = self.progress
        if event == "data_generate":
            p.console.print(
                f"generating {payload['equation']} data: {payload['count']} trajectories "
                "(cached for next time) …",
                highlight=False,
            )
        elif event == "data":
            sizes = "/".join(str(v) for v in payload["sizes"].values())
            what = "/".join(payload["sizes"])
            if what == "train/val/test":
                what += " " + payload.get("unit", "trajectories")
            p.console.print(
                f"data: {payload['source']}, {sizes} {what} "
                f"({payload['seconds']:.1f} s)\nrun directory: {payload['out']}",
                highlight=False,
                soft_wrap=True,
            )
        elif event == "train_start":
            p.start()  # the bar appears with the first training, not before
            name = payload["model"]
            self.tasks[name] = p.add_task(f"train {name}", total=payload["total"], info="")
        elif event == "step":
            task = self.tasks.get(payload["model"])
            if task is None:
                return
            logs = payload["logs"]
            info = f"loss {logs.get('loss', float('nan')):.3f}"
            if "residual" in logs:
                info += f" res {logs['residual']:.1e}"
            if "iterations" in logs and logs.get("unconverged") is not None:
                info += f" it {logs['iterations']:.1f}"
            if "backward_iterations" in logs:
                info += f" bwd {logs['backward_iterations']:.1f}"
            p.update(task, completed=payload["step"], info=info)
        elif event == "train_end":
            name = payload["model"]
            if payload.get("resumed_from"):
                p.console.print(f"{name}: resumed from step {payload['resumed_from']}")
            if payload.get("skipped_steps"):
                p.console.print(f"{name}: skipped {payload['skipped_steps']} non-finite steps")
        elif event == "evaluate":
            if p.live.is_started:
                p.stop()  # training is over: freeze the bars above what follows
            p.console.print("evaluating on the test split …")
        elif event == "robustness":
            if payload["what"] == "ood":
                p.console.print(
                    "out-of-distribution sets: " + ", ".join(payload["conditions"]) + " …"
                )
            else:
                eps = ", ".join(f"{e:g}" for e in payload["eps"])
                p.console.print(f"FGSM/PGD attacks, ε = {eps} …")
        elif event == "fit":
            p.console.print(f"fitting {payload['model']} …", highlight=False)
        elif event == "note":
            p.console.print(payload["text"], highlight=False)
        elif event == "simulate":
            p.console.print(f"simulating {payload['what']} …", highlight=False)
        elif event == "report":
            p.console.print("writing report …")


class _SpeedColumn(ProgressColumn):
    """Steps per second, as measured by rich over the recent updates."""

    def render(self, task: Any) -> Text:
        speed = task.finished_speed or task.speed
        return Text("   — it/s" if speed is None else f"{speed:5.0f} it/s", style="green")


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        _SpeedColumn(),
        TextColumn("[cyan]{task.fields[info]}"),
        TimeRemainingColumn(),
        console=console,
    )


def _number(v: Any) -> str:
    """4 significant digits, but never scientific notation for 1e3 ≤ |v| < 1e7."""
    if v is None:
        return "—"
    if isinstance(v, (int, float)) and 1e3 <= abs(v) < 1e7:
        return f"{v:.1f}"
    return f"{v:.4g}"


def _flatten(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested metric dicts as dotted keys: {"a": {"b": 1}} → {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for k, v in row.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def _data_dir_sets(rec: Any, data_dir: Path) -> list[str]:
    """``--set`` assignments that point a recipe at the directory ``data_dir``."""
    if not data_dir.is_dir():
        raise DataError(f"--data-dir {data_dir} is not a directory")
    if rec.task == "sequence":
        return ["data.kind=mnist", f"data.path={data_dir}"]
    if rec.task == "velora":
        return [f"data.path={data_dir}"]
    raise ConfigError(
        f"--data-dir applies to sequence and velora recipes, not {rec.task} ({rec.name}); "
        "point a forecasting recipe at a file with --set data.path=FILE"
    )


def _print_metrics(metrics: dict[str, Any]) -> None:
    models = {
        name: {k: v for k, v in _flatten(row).items() if not isinstance(v, list)}
        for name, row in metrics.get("models", {}).items()
    }
    keys: list[str] = []
    for m in models.values():
        keys += [k for k in m if k not in keys]
    what = "fitted models" if metrics.get("task") in ("series", "island") else "test metrics"
    table = Table(title=f"{what} — {metrics.get('recipe', '')}")
    table.add_column("metric")
    for name in models:
        table.add_column(name, justify="right")
    for k in keys:
        row = [k]
        for m in models.values():
            v = m.get(k)
            row.append(_number(v) if v is None or isinstance(v, (int, float)) else str(v))
        table.add_row(*row)
    params = metrics.get("params", {})
    if params:
        table.add_row("params", *[str(params.get(n, "—")) for n in models])
    out_console.print(table)
    for name, entry in (metrics.get("compression") or {}).items():
        metric = entry.get("metric", "metric")
        comp = Table(title=f"compression — {name} ({entry.get('dtype', '')} values)")
        for col in ("pruned", metric, "bytes", "bytes ratio", "non-zeros"):
            comp.add_column(col, justify="right")
        dense = entry.get("dense", {})
        comp.add_row(
            "dense",
            _number(dense.get("metric")),
            str(dense.get("bytes")),
            "1",
            str(dense.get("nonzero")),
        )
        for row in entry.get("rows", []):
            label = f"{row['target']:.0%}" if row["target"] else "0% (fine-tuned)"
            comp.add_row(
                label,
                _number(row["metric"]),
                str(row["bytes"]),
                _number(row["bytes_ratio"]),
                str(row["nonzero"]),
            )
        out_console.print(comp)


@app.command()
def run(
    recipe: Annotated[
        str | None,
        typer.Argument(help="A shipped recipe name (see 'tertulia recipes') or a YAML path."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run directory (default runs/<name>).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a recipe key: --set model.d=32 (repeatable)."),
    ] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Continue an interrupted run directory.")
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Read the data from this directory: MNIST IDX files for sequence recipes "
            "(compress-mnist, seq-digits), the two CSVs for velora.",
        ),
    ] = None,
    nproc: Annotated[
        int,
        typer.Option(
            "--nproc",
            min=1,
            help="Data-parallel worker processes (torch.distributed: gloo on CPU, NCCL on "
            "GPU); the global batch is split between them.",
        ),
    ] = 1,
    phase: Annotated[
        str,
        typer.Option(
            "--phase",
            help="Staged recipes (velora): experts, router, finetune or all. A later phase "
            "continues a run: --resume DIR --phase router.",
        ),
    ] = "all",
    device: DeviceOpt = None,
    precision: Annotated[
        str | None,
        typer.Option(
            "--precision",
            help="fp32, or bf16: forward passes under bfloat16 autocast (weights, optimiser "
            "state and losses stay fp32); default: the recipe's runtime.precision (fp32).",
        ),
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Train the orchestra and its baselines on a recipe, evaluate, write the report."""

    def _run() -> None:
        from . import config, jobs, runs  # lazy: torch stays off --help, recipes, show
        from .runtime import Runtime

        worker = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if resume is not None:
            if out is not None:
                raise RunDirError("--resume continues a run in place; drop --out")
            if set_ or data_dir is not None:
                raise RunDirError(
                    "--set and --data-dir cannot change a run on --resume; start a new run instead"
                )
            saved = runs.require_run_dir(resume)
            if recipe is not None and config.resolve_recipe_path(recipe).stem != saved.name:
                raise RunDirError(f"{resume} is a run of recipe {saved.name!r}, not {recipe!r}")
            if precision is not None and precision != saved.runtime.precision:
                raise RunDirError(
                    f"{resume} trains in {saved.runtime.precision} (runtime.precision in its "
                    f"config.yaml); --precision {precision} would change the run: start a new "
                    "run instead"
                )
            rec, target = saved.with_runtime(device), resume
        else:
            rec = config.load_recipe(recipe or "burgers", set_ or [])
            if data_dir is not None:
                rec = config.load_recipe(
                    recipe or "burgers", [*(set_ or []), *_data_dir_sets(rec, data_dir)]
                )
            rec = rec.with_runtime(device, precision)
            if out is None:
                target = runs.fresh_run_dir(Path("runs") / rec.name)
            else:
                target = out
                if worker:  # the launcher checked it; rank 0 may already be writing
                    pass
                elif target.exists() and (not target.is_dir() or any(target.iterdir())):
                    what = "holds a run" if runs.is_run_dir(target) else "is not empty"
                    raise RunDirError(
                        f"{target} {what}; continue it with --resume {target} "
                        "or choose another --out"
                    )
        if resume is not None:
            words = ["run", rec.name, "--resume", str(target)]
        else:
            words = ["run", recipe or "burgers", "--out", str(target)]
            for assignment in set_ or []:
                words += ["--set", assignment]
            if data_dir is not None:
                words += ["--data-dir", str(data_dir)]
            if precision is not None:
                words += ["--precision", precision]
        if device is not None:
            words += ["--device", device]
        if phase != "all":
            words += ["--phase", phase]
        batch = getattr(getattr(rec, "train", None), "batch_size", None)
        if nproc > 1 and batch is not None and batch % nproc:
            raise ConfigError(
                f"--nproc {nproc} must divide train.batch_size={batch}: every worker takes "
                "an equal slice of the global batch"
            )
        runtime = Runtime.of(rec)  # a device this machine lacks fails here, before any work
        if nproc > 1 and not worker:
            if runtime.is_cuda and ":" in rec.runtime.device:
                raise ConfigError(
                    f"--nproc {nproc} gives every worker its own GPU (cuda:LOCAL_RANK); "
                    f"use --device cuda, not {rec.runtime.device}"
                )
            if runtime.is_cuda and nproc > _cuda_count():
                raise ConfigError(
                    f"--nproc {nproc} on --device cuda needs a GPU per worker; this machine "
                    f"has {_cuda_count()}"
                )
            _launch(words, nproc)  # the workers come back here, in the branch below
            return
        if worker:
            _init_worker(runtime)
            words += ["--nproc", os.environ.get("WORLD_SIZE", "1")]
        command = "tertulia " + shlex.join(words)
        progress = _progress()
        quiet = worker and _rank() != 0
        try:
            metrics = jobs.run(
                rec,
                target,
                resume=resume is not None,
                command=command,
                on_event=_noop_event if quiet else _ProgressEvents(progress),
                phase=phase,
            )
        except KeyboardInterrupt:
            if progress.live.is_started:
                progress.stop()
            console.print(
                "interrupted; continue from the last checkpoint with: "
                f"tertulia run {rec.name} --resume {target}",
                highlight=False,
                soft_wrap=True,  # a wrapped path could not be copied
            )
            raise typer.Exit(130) from None
        finally:
            if progress.live.is_started:
                progress.stop()
        if quiet:
            return
        _print_metrics(metrics)
        out_console.print(f"report: {target / 'report.html'}", highlight=False, soft_wrap=True)

    _guard(debug, _run)


def _noop_event(event: str, payload: dict[str, Any]) -> None:
    pass


def _rank() -> int:
    import torch.distributed as dist  # lazy: torch stays off --help, recipes, show

    return dist.get_rank() if dist.is_initialized() else 0


def _cuda_count() -> int:
    import torch  # lazy: torch stays off --help, recipes, show

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _init_worker(runtime: Any) -> None:
    """In a process started by ``--nproc`` (or torchrun): join the process group, with NCCL
    on this rank's GPU when the run is on CUDA (``cuda:LOCAL_RANK``), else gloo."""
    import torch  # lazy: torch stays off --help, recipes, show
    import torch.distributed as dist

    if runtime.is_cuda:
        torch.cuda.set_device(runtime.device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if runtime.is_cuda else "gloo")


def _launch(words: list[str], nproc: int) -> None:
    """Start ``nproc`` workers running ``tertulia <words>`` with torch's elastic launcher
    (what ``torchrun --standalone --nproc-per-node N -m tertulia …`` does: one node, a free
    port found by the launcher); wait for them."""
    from torch.distributed.run import get_args_parser  # lazy: torch stays off --help, recipes, show
    from torch.distributed.run import run as elastic_run

    args = get_args_parser().parse_args(
        ["--standalone", "--nproc-per-node", str(nproc), "--module", "tertulia", *words]
    )
    try:
        elastic_run(args)
    except Exception as exc:  # ChildFailedError: the workers printed their own error
        raise UserError(
            f"a worker process failed ({type(exc).__name__}); see its output above"
        ) from None


@app.command()
def sweep(
    recipe: Annotated[str, typer.Argument(help="A shipped recipe name or a YAML path.")],
    grid: Annotated[
        list[str] | None,
        typer.Option("--grid", "-g", help="KEY=V1,V2,… values to try (repeatable; crossed)."),
    ] = None,
    trials: Annotated[
        int, typer.Option("--trials", min=1, help="Repeats of every grid point (seeds).")
    ] = 1,
    metric: Annotated[
        str | None,
        typer.Option("--metric", help="Dotted path in metrics.json (default: the task's main)."),
    ] = None,
    mode: Annotated[
        str, typer.Option("--mode", help="auto, min or max: which way the metric is better.")
    ] = "auto",
    address: Annotated[
        str | None,
        typer.Option("--address", help="A Ray cluster to run on (default: this machine)."),
    ] = None,
    cpus: Annotated[
        int | None, typer.Option("--cpus", min=1, help="Local mode: CPUs for Ray (default: all).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Sweep directory (default sweeps/<recipe>).")
    ] = None,
    device: DeviceOpt = None,
    gpus_per_trial: Annotated[
        float | None,
        typer.Option(
            "--gpus-per-trial",
            min=0,
            help="GPUs Ray reserves for each trial on --device cuda (a fraction shares one; "
            "default 1).",
        ),
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Run a grid of recipe overrides as parallel trials on Ray Tune; summarise the metric."""

    def _sweep() -> None:
        from .runs import fresh_run_dir  # lazy: torch stays off --help, recipes, show
        from .sweep import parse_grid, run_sweep

        name = Path(recipe).stem
        target = out or fresh_run_dir(Path("sweeps") / name)
        with console.status("running trials on Ray Tune …"):
            res = run_sweep(
                recipe,
                parse_grid(grid or []),
                target,
                trials=trials,
                metric=metric,
                mode=mode,
                address=address,
                cpus=cpus,
                device=device,
                gpus_per_trial=gpus_per_trial,
            )
        table = Table(title=f"sweep — {recipe} ({res['metric']})")
        for col in ("trial", "overrides", res["metric"], "seconds"):
            table.add_column(col, justify="right" if col != "overrides" else "left")
        for row in res["rows"]:
            table.add_row(
                row["trial"],
                " ".join(row["sets"]),
                "failed: " + row["error"] if "error" in row else _number(row.get("metric")),
                _number(row.get("seconds")),
            )
        out_console.print(table)
        if res["best"]:
            out_console.print(f"best: {res['best']['trial']} {' '.join(res['best']['sets'])}")
        out_console.print(f"report: {target / 'report.html'}", highlight=False, soft_wrap=True)

    _guard(debug, _sweep)


@app.command()
def recipes() -> None:
    """List the shipped recipes with a one-line description."""
    # lazy: torch stays off --help, recipes, show
    from .config import recipe_description, shipped_recipes

    table = Table(title="shipped recipes")
    table.add_column("name", style="bold")
    table.add_column("description")
    for name, path in shipped_recipes().items():
        table.add_row(name, recipe_description(path))
    out_console.print(table)


@app.command()
def show(
    recipe: Annotated[
        str, typer.Argument(help="A shipped recipe name or a YAML path.")
    ] = "burgers",
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a recipe key: --set model.d=32 (repeatable)."),
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Print the resolved recipe (every key, defaults filled in, overrides applied) as YAML."""

    def _show() -> None:
        from .config import load_recipe  # lazy: torch stays off --help, recipes, show

        out_console.print(
            load_recipe(recipe, set_ or []).to_yaml(),
            end="",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )

    _guard(debug, _show)


@app.command("eval")
def eval_(
    run_dir: Annotated[Path, typer.Argument(help="A run directory made by 'tertulia run'.")],
    device: DeviceOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Re-evaluate a run's checkpoints on the test split; rewrites metrics.json and the report."""

    def _eval() -> None:
        from .jobs import evaluate_run  # lazy: torch stays off --help, recipes, show

        _print_metrics(evaluate_run(run_dir, device=device))
        out_console.print(f"metrics: {run_dir / 'metrics.json'}", highlight=False, soft_wrap=True)

    _guard(debug, _eval)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory with metrics.json.")],
    debug: DebugOpt = False,
) -> None:
    """Rebuild report.html (and its figures) from a run directory."""

    def _report() -> None:
        from .report import build_report  # lazy: torch stays off --help, recipes, show

        if not run_dir.is_dir():
            raise RunDirError(f"{run_dir} does not exist; give a run directory")
        out_console.print(f"report: {build_report(run_dir)}", highlight=False, soft_wrap=True)

    _guard(debug, _report)


def main() -> None:
    app()


@app.command()
def compress(
    run_dir: Annotated[
        Path,
        typer.Argument(help="A run directory to compress (forecast, sequence or velora)."),
    ],
    sparsity: Annotated[
        float, typer.Option("--sparsity", help="Fraction of the weights to prune, in (0, 1).")
    ] = 0.8,
    schedule: Annotated[
        str, typer.Option("--schedule", help="cubic (gradual), oneshot or threshold.")
    ] = "cubic",
    finetune_steps: Annotated[
        int | None,
        typer.Option(
            "--finetune-steps",
            help="Fine-tuning steps with the masks enforced (default: as many as the "
            "model's own training).",
        ),
    ] = None,
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="τ of --schedule threshold: prune |w| < τ.")
    ] = None,
    scope: Annotated[
        str,
        typer.Option(
            "--scope", help="global (one ranking, layers differ) or layer (each to --sparsity)."
        ),
    ] = "global",
    lr: Annotated[
        float | None,
        typer.Option("--lr", help="Fine-tuning learning rate (default: the run's own)."),
    ] = None,
    dtype: Annotated[
        str, typer.Option("--dtype", help="Stored values: fp32, fp16 or int8.")
    ] = "fp16",
    models: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="Compress only this model of the run (repeatable)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="New run directory (default RUN_DIR-compressed)."),
    ] = None,
    device: DeviceOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Prune a run's models, fine-tune with the masks enforced, store them sparse, judge them."""

    def _compress() -> None:
        from .jobs import compress_run  # lazy: torch stays off --help, recipes, show

        target = out or run_dir.with_name(run_dir.name + "-compressed")
        progress = _progress()
        try:
            res = compress_run(
                run_dir,
                target,
                sparsity=sparsity,
                schedule=schedule,
                finetune_steps=finetune_steps,
                threshold=threshold,
                dtype=dtype,
                scope=scope,
                lr=lr,
                models=models,
                device=device,
                on_event=_ProgressEvents(progress),
            )
        finally:
            if progress.live.is_started:
                progress.stop()
        table = Table(title=f"compress — {res['recipe']} ({res['main']})")
        table.add_column("")
        has_cov = any(
            "coverage_90" in e[p]["metrics"] for e in res["models"].values() for p in ("dense",)
        )
        columns = [res["metric"]] + (["coverage_90"] if has_cov else [])
        for col in (*columns, "bytes", "non-zeros", "sparsity"):
            table.add_column(col, justify="right")
        for name, entry in res["models"].items():
            for part in ("dense", "compressed"):
                e = entry[part]
                cells = [_number(e["metric"])]
                if has_cov:
                    cells.append(_number(e["metrics"].get("coverage_90")))
                table.add_row(
                    f"{name} {part}",
                    *cells,
                    str(e["bytes"]),
                    str(e["nonzero"]),
                    _number(e.get("sparsity")),
                )
        out_console.print(table)
        out_console.print(f"report: {target / 'report.html'}", highlight=False, soft_wrap=True)

    _guard(debug, _compress)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (also one made by compress).")],
    onnx: Annotated[bool, typer.Option("--onnx", help="Export to ONNX (the only format).")] = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Folder for the files (default RUN_DIR/onnx)."),
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Export a run's models to ONNX and check them against PyTorch with onnxruntime."""

    def _export() -> None:
        import json  # lazy: torch stays off --help, recipes, show

        import torch  # lazy: torch stays off --help, recipes, show

        # lazy: torch stays off --help, recipes, show
        from .compress.export import check_onnx, export_onnx
        from .compress.sparse_io import load_compressed
        from .jobs import load_run

        if not onnx:
            raise ConfigError("choose a format: --onnx")
        metrics_path = run_dir / "metrics.json"
        compressed = False
        if metrics_path.is_file():
            try:
                compressed = json.loads(metrics_path.read_text()).get("task") == "compress"
            except ValueError:
                compressed = False
        if compressed:
            source = json.loads(metrics_path.read_text())["source"]
            loaded = load_run(source)
            for name, model in loaded.models.items():
                path = run_dir / "checkpoint" / f"{name}.safetensors"
                if path.is_file():
                    model.load_state_dict(load_compressed(path))
        else:
            loaded = load_run(run_dir)
        target = out or run_dir / "onnx"
        d = loaded.recipe.data
        example = torch.randn(4, d.window, d.grid, generator=torch.Generator().manual_seed(0))
        table = Table(title=f"ONNX export — {loaded.recipe.name}")
        for col in ("model", "file", "max |onnx − torch|"):
            table.add_column(col)
        for name, model in loaded.models.items():
            if sum(p.numel() for p in model.parameters()) == 0:
                continue
            wrapped, path = export_onnx(model, example, target / f"{name}.onnx")
            diff = check_onnx(path, wrapped, example)
            table.add_row(name, str(path), f"{diff:.2e}")
            if diff > 1e-5:
                raise UserError(f"{name}: ONNX output differs from PyTorch by {diff:.2e} (> 1e-5)")
        out_console.print(table)

    _guard(debug, _export)
