"""Command-line interface: parse, call the library, print. Nothing else lives here.

Every user mistake arrives as a :class:`~tertulia.errors.UserError` and leaves
as one line ``error: …`` on stderr with exit code 2 (a traceback only with
``--debug``).
"""

from __future__ import annotations

import errno
import sys
import warnings
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

from .errors import ConfigError, RunDirWarning, UserError

try:  # typer >= 0.22 carries its own copy of click; older ones use click itself
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as click_errors  # type: ignore[no-redef]
from .events import Event

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


def _warn(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    console.print(f"[bold yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def _guard(debug: bool, fn: Callable[[], T]) -> T:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", RunDirWarning)
            shown = warnings.showwarning

            def show(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
                if issubclass(category, RunDirWarning):
                    _warn(message, category)
                else:
                    shown(message, category, *args, **kwargs)

            warnings.showwarning = show
            return fn()
    except UserError as exc:
        if debug:
            raise
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except OSError as exc:  # the filesystem said no: a full disk, a read-only folder …
        if debug:
            raise
        console.print(f"[bold red]error:[/] {_os_error(exc)}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        console.print("interrupted", highlight=False)
        raise typer.Exit(130) from None


def _os_error(exc: OSError) -> str:
    """One line for a filesystem failure: what failed, where, and what to do."""
    what = exc.strerror or str(exc) or type(exc).__name__
    where = f": {exc.filename}" if exc.filename else ""
    advice = {
        errno.ENOSPC: "; free some space, then continue with --resume",
        errno.EDQUOT: "; free some space, then continue with --resume",
        errno.EROFS: "; choose a folder you can write to",
        errno.EACCES: "; choose a folder you can write to",
        errno.ENAMETOOLONG: "; choose a shorter name",
        errno.ENOTDIR: "; a file stands where a folder should be",
    }.get(exc.errno or 0, "")
    return f"{what}{where}{advice}"


class _ProgressEvents:
    """Turns job events into a rich progress bar (one task per model)."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.tasks: dict[str, Any] = {}

    def __call__(self, event: Event, payload: dict[str, Any]) -> None:
        p = self.progress
        if event == Event.DATA_GENERATE:
            p.console.print(
                f"generating {payload['equation']} data: {payload['count']} trajectories "
                "(cached for next time) …",
                highlight=False,
            )
        elif event == Event.DATA:
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
        elif event == Event.TRAIN_START:
            p.start()  # the bar appears with the first training, not before
            name = payload["model"]
            self.tasks[name] = p.add_task(f"train {name}", total=payload["total"], info="")
        elif event == Event.STEP:
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
        elif event == Event.TRAIN_END:
            name = payload["model"]
            if payload.get("resumed_from"):
                p.console.print(f"{name}: resumed from step {payload['resumed_from']}")
            if payload.get("skipped_steps"):
                p.console.print(f"{name}: skipped {payload['skipped_steps']} non-finite steps")
        elif event == Event.EVALUATE:
            if p.live.is_started:
                p.stop()  # training is over: freeze the bars above what follows
            p.console.print("evaluating on the test split …")
        elif event == Event.ROBUSTNESS:
            if payload["what"] == "ood":
                p.console.print(
                    "out-of-distribution sets: " + ", ".join(payload["conditions"]) + " …"
                )
            else:
                eps = ", ".join(f"{e:g}" for e in payload["eps"])
                p.console.print(f"FGSM/PGD attacks, ε = {eps} …")
        elif event == Event.FIT:
            p.console.print(f"fitting {payload['model']} …", highlight=False)
        elif event == Event.NOTE:
            p.console.print(payload["text"], highlight=False)
        elif event == Event.SIMULATE:
            p.console.print(f"simulating {payload['what']} …", highlight=False)
        elif event == Event.COMPRESS_END:
            p.console.print(f"{payload['model']}: pruned, stored and judged", highlight=False)
        elif event == Event.REPORT:
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
        from . import jobs  # lazy: torch stays off --help, recipes, show

        plan = jobs.plan_run(
            recipe,
            out=out,
            sets=set_ or [],
            resume=resume,
            data_dir=data_dir,
            device=device,
            precision=precision,
            phase=phase,
            nproc=nproc,
        )
        progress = _progress()
        try:
            metrics = jobs.start_run(plan, on_event=_ProgressEvents(progress))
        except KeyboardInterrupt:
            if progress.live.is_started:
                progress.stop()
            console.print(
                "interrupted; continue from the last checkpoint with: "
                f"tertulia run {plan.recipe.name} --resume {plan.out}",
                highlight=False,
                soft_wrap=True,  # a wrapped path could not be copied
            )
            raise typer.Exit(130) from None
        finally:
            if progress.live.is_started:
                progress.stop()
        if metrics is None:  # the launcher of --nproc workers, or a worker of rank > 0
            return
        _print_metrics(metrics)
        out_console.print(f"report: {plan.out / 'report.html'}", highlight=False, soft_wrap=True)

    _guard(debug, _run)


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
        if res["best"] is None:
            raise UserError(
                f"no trial of the sweep finished ({res['failed']} failed); "
                f"their errors are in the table above and in {target / 'sweep.json'}"
            )

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
        from .runs import rebuild_report  # lazy: torch stays off --help, recipes, show

        out_console.print(f"report: {rebuild_report(run_dir)}", highlight=False, soft_wrap=True)

    _guard(debug, _report)


def _usage_error(exc: Any) -> str:
    """A usage mistake as one line: click's message, the command it concerns, and where to
    read what is allowed."""
    message = exc.format_message().strip().replace("\n", " ").rstrip(".")
    ctx = exc.ctx
    where = ctx.command_path if ctx is not None else "tertulia"
    if isinstance(exc, click_errors.NoSuchOption) or "Did you mean" in message:
        return f"{message}; see '{where} --help'"
    if message.startswith("No such command") and ctx is not None:
        commands = ", ".join(sorted(ctx.command.list_commands(ctx)))  # type: ignore[attr-defined]
        return f"{message}; commands are: {commands}"
    return f"{message}; see '{where} --help'"


def main() -> None:
    """The ``tertulia`` entry point: a usage mistake (unknown command or option, a missing
    or malformed argument) is one ``error:`` line and exit code 2, like every other."""
    try:
        code = app(standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:
        if exc.ctx is not None:
            out_console.print(exc.ctx.get_help(), markup=False, highlight=False)
        sys.exit(0)
    except click_errors.UsageError as exc:
        console.print(f"[bold red]error:[/] {_usage_error(exc)}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Abort:
        console.print("interrupted", highlight=False)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


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
        from .jobs import export_run  # lazy: torch stays off --help, recipes, show

        if not onnx:
            raise ConfigError("choose a format: --onnx")
        rows = export_run(run_dir, out=out)
        table = Table(title=f"ONNX export — {run_dir}")
        for col in ("model", "file", "max |onnx − torch|"):
            table.add_column(col)
        for row in rows:
            table.add_row(row["model"], str(row["path"]), f"{row['max_abs_diff']:.2e}")
        out_console.print(table)

    _guard(debug, _export)
