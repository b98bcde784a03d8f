"""Sequential MNIST with S4D stacks: HiPPO-LegS init vs a random diagonal A at equal budget.

Tests, at small CPU scale, the claim that HiPPO initialisation is what lets
SSMs learn pixel-by-pixel MNIST (~60 % → ~98 % in the HiPPO/S4 papers). Data:
the real MNIST test set shipped in ``../shared/data/mnist`` (10,000 images),
split as its README says: first 8,000 = train (a share held for validation,
then the first ``--n-train`` kept), last 2,000 = test. Not comparable with
published full-MNIST numbers.

Two settings:

* ``rows``    28 steps × 28 channels (one image row per step)
* ``pixels``  784 steps × 1 channel (one pixel per step, row-major)

For each setting, two S4D stacks (``tertulia.jobs.sequence.build_sequence_model``)
identical in every hyper-parameter and seed except ``model.init`` — ``legs``
(S4D-LegS: the diagonal of HiPPO-LegS's normal part, LegS B) and ``random``
(Re Λ ~ −U(0.1, 1), Im Λ ~ U(0, πN/2), B = 1) — are trained the way
``tertulia run`` trains a ``task: sequence`` recipe (``ClassifyTask`` +
``runs.fit_in_run``: the shared Trainer, warm-up + cosine, clipping, EMA
weights, checkpoints into a temporary directory). Pooling is the last step by
default, so the classifier must carry the whole image through the recurrence.

Measured per setting × init: test accuracy, test NLL (cross-entropy, nats),
parameters, and wall seconds (training + test evaluation).

Usage::

    python benchmarks/seq_mnist.py                      # table + key figures
    python benchmarks/seq_mnist.py --json               # one JSON object
    python benchmarks/seq_mnist.py --settings rows --steps 200 --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from tertulia.build import count_parameters
from tertulia.config import SequenceDataConfig, SequenceModelConfig, SequenceRecipe, TrainConfig
from tertulia.data.sequences import SequenceSplit
from tertulia.jobs.sequence import build_sequence_model, load_splits
from tertulia.runs import fit_in_run
from tertulia.train.tasks import ClassifyTask

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PATH = (ROOT / ".." / "shared" / "data" / "mnist").resolve()
SETTINGS = ("rows", "pixels")
INITS = ("legs", "random")
FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: faster than 2 on a shared 2-core machine)",
    )
    p.add_argument("--settings", default="rows,pixels", help="comma list of rows, pixels")
    p.add_argument("--steps", type=int, default=None, help="training steps (both settings)")
    p.add_argument("--rows-steps", type=int, default=500, help="steps for rows (no --steps)")
    p.add_argument("--pixels-steps", type=int, default=600, help="steps for pixels (no --steps)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument("--ssm-lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--d-state", type=int, default=32, help="state size N per channel")
    p.add_argument("--dt-min", type=float, default=1e-3)
    p.add_argument("--dt-max", type=float, default=1e-1)
    p.add_argument("--pool", choices=("last", "mean"), default="last")
    p.add_argument("--n-train", type=int, default=7600, help="training images (≤ 7,600)")
    p.add_argument("--n-test", type=int, default=2000, help="test images (≤ 2,000)")
    p.add_argument("--val-fraction", type=float, default=0.05, help="of the 8,000 train images")
    p.add_argument("--path", type=Path, default=DEFAULT_PATH, help="directory of MNIST IDX files")
    p.add_argument("--seed", type=int, default=0)
    return p


def _check_path(path: Path) -> str | None:
    if not path.is_dir():
        return f"MNIST directory {path} not found (see ../shared/data/mnist/README.md; --path)"
    for stem in FILES:
        if not any((path / (stem + ext)).is_file() for ext in ("", ".gz")):
            return f"MNIST directory {path} lacks {stem}[.gz] (--path)"
    return None


def _recipe(a: argparse.Namespace, setting: str) -> SequenceRecipe:
    steps = a.steps or (a.rows_steps if setting == "rows" else a.pixels_steps)
    return SequenceRecipe(
        name=f"seq-mnist-{setting}",
        seed=a.seed,
        data=SequenceDataConfig(
            kind="mnist", path=str(a.path), pixels=setting == "pixels", val_fraction=a.val_fraction
        ),
        model=SequenceModelConfig(
            kind="s4d",
            d_model=a.d_model,
            layers=a.layers,
            d_state=a.d_state,
            init="legs",
            compare_init="random",
            dt_min=a.dt_min,
            dt_max=a.dt_max,
            ssm_lr=a.ssm_lr,
            pool=a.pool,
        ),
        train=TrainConfig(
            steps=steps,
            batch_size=a.batch_size,
            lr=a.lr,
            warmup=min(a.warmup, steps - 1),
            checkpoint_every=steps,  # validate and checkpoint once, at the end
            log_every=max(1, min(50, steps)),
            threads=a.threads,
        ),
    )


def _head(split: SequenceSplit, n: int) -> SequenceSplit:
    n = min(n, len(split))
    return SequenceSplit(split.x[:n], split.y[:n], split.classes)


def run_setting(a: argparse.Namespace, setting: str, out: Path) -> list[dict[str, Any]]:
    """Train the legs and random twins of one setting; one result row per init."""
    recipe = _recipe(a, setting)
    splits = load_splits(recipe)
    splits["train"] = _head(splits["train"], a.n_train)
    splits["test"] = _head(splits["test"], a.n_test)
    train = splits["train"]
    d_in, classes = int(train.x.shape[-1]), train.classes
    run_dir = out / setting
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    # the same order, names and seeds as tertulia.jobs.sequence.run_sequence
    for index, init in enumerate(INITS):
        name = f"s4d_{init}"
        t0 = time.perf_counter()
        torch.manual_seed(recipe.seed)  # equal seeds: the twins differ by their init only
        model = build_sequence_model(recipe, d_in, classes, init)
        task = ClassifyTask(model, splits, batch_size=recipe.train.batch_size)
        summary = fit_in_run(
            task,
            recipe.train,
            name=name,
            seed=recipe.seed + 1000 + index,
            out=run_dir,
            recipe_name=recipe.name,
        )
        model.eval()
        scores = task.scores("test")
        wall = time.perf_counter() - t0
        rows.append(
            {
                "setting": setting,
                "init": init,
                "seq_len": int(train.x.shape[1]),
                "channels": d_in,
                "steps": summary["steps"],
                "skipped_steps": summary["skipped_steps"],
                "n_train": len(train),
                "n_test": len(splits["test"]),
                "params": count_parameters(model),
                "test_acc": scores["accuracy"],
                "test_nll": scores["nll"],
                "train_s": summary["seconds"],
                "wall_s": wall,
            }
        )
        print(
            f"[seq_mnist] {setting}/{init}: acc {scores['accuracy']:.4f} "
            f"nll {scores['nll']:.4f} ({wall:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    return rows


def key_figures(rows: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    by = {(r["setting"], r["init"]): r for r in rows}
    for setting in SETTINGS:
        if (setting, "legs") not in by:
            continue
        legs, rand = by[(setting, "legs")], by[(setting, "random")]
        out[f"{setting}_legs_acc"] = round(legs["test_acc"], 4)
        out[f"{setting}_random_acc"] = round(rand["test_acc"], 4)
        out[f"{setting}_legs_minus_random"] = round(legs["test_acc"] - rand["test_acc"], 4)
        out[f"{setting}_legs_nll"] = round(legs["test_nll"], 4)
        out[f"{setting}_random_nll"] = round(rand["test_nll"], 4)
        out[f"{setting}_wall_s"] = round(legs["wall_s"] + rand["wall_s"], 1)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = _parser().parse_args(argv)
    settings = [s.strip() for s in a.settings.split(",") if s.strip()]
    bad = [s for s in settings if s not in SETTINGS]
    if bad or not settings:
        print(
            f"error: --settings must be a comma list of rows, pixels; got {a.settings!r}",
            file=sys.stderr,
        )
        raise SystemExit(2)
    a.path = a.path.expanduser().resolve()
    problem = _check_path(a.path)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    torch.set_num_threads(a.threads)

    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="seq_mnist_") as tmp:
        for setting in settings:
            rows.extend(run_setting(a, setting, Path(tmp)))
    total = time.perf_counter() - started

    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items() if k != "json"}
    config["settings"] = settings
    config["torch_threads"] = torch.get_num_threads()
    res: dict[str, Any] = {
        **key_figures(rows),
        "total_wall_s": round(total, 1),
        "chance_acc": 0.1,
        "config": config,
        "runs": [
            {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows
        ],
    }
    if a.json:
        print(json.dumps(res))
        return res

    print(
        f"sequential MNIST (real t10k: train first {rows[0]['n_train']} of 8,000 after "
        f"val, test {rows[0]['n_test']} of the last 2,000), S4D d_model={a.d_model} "
        f"layers={a.layers} N={a.d_state} pool={a.pool}, batch {a.batch_size}, lr {a.lr} "
        f"(SSM {a.ssm_lr}), dt [{a.dt_min}, {a.dt_max}], {torch.get_num_threads()} thread(s)"
    )
    head = f"{'setting':8s}{'L×C':>8s}{'init':>8s}{'steps':>7s}{'params':>8s}"
    print(head + f"{'test acc':>10s}{'test NLL':>10s}{'wall s':>8s}")
    for r in rows:
        print(
            f"{r['setting']:8s}{str(r['seq_len']) + '×' + str(r['channels']):>8s}"
            f"{r['init']:>8s}{r['steps']:7d}{r['params']:8d}"
            f"{r['test_acc']:10.4f}{r['test_nll']:10.4f}{r['wall_s']:8.1f}"
        )
    print()
    for k, v in res.items():
        if k not in ("config", "runs"):
            print(f"{k:28s} {v:10.4g}")
    return res


if __name__ == "__main__":
    main()
