"""What bf16 autocast buys: training throughput in fp32 and in bf16, on one device.

Two models, each trained by the shared trainer for ``--steps`` timed steps after
``--warmup`` steps, once per precision, from the same seed on the same batches:

* ``orchestra`` — the Burgers recipe's orchestra (4 cells, d = 64, 6 rounds,
  batch 64): many small matrix products, launch- and latency-bound;
* ``transformer`` — the hope-lm recipe's Transformer LM (4 layers, d = 128, batch
  16 × 128 characters): fewer, larger matrix products.

Throughput is training examples per second of wall time over the timed steps;
``loss`` is the mean training loss of the timed steps, so the two precisions can be
compared on what they learn as well as on speed. ``--device auto`` (default) takes
the GPU when there is one. On a CPU without bfloat16 matrix units bf16 is usually
*slower* (oneDNN converts and falls back); it pays on GPUs and on recent x86 / ARM
cores. The ratio is printed either way.

Usage: ``python benchmarks/precision.py [--json] [--device auto] [--steps 30] [--warmup 5]
[--models orchestra,transformer] [--set KEY=VALUE …]`` (``--set`` changes the Burgers recipe).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch


def _orchestra(precision: str, device: str, sets: list[str]) -> tuple[Any, int]:
    from tertulia.config import load_recipe
    from tertulia.data import load_dataset
    from tertulia.jobs.forecast import build_models, make_task

    recipe = load_recipe(
        "burgers", [*sets, f"runtime.precision={precision}", f"runtime.device={device}"]
    )
    splits = load_dataset(recipe.data)
    model = build_models(recipe, splits)["orchestra"]
    return make_task(recipe, model, splits), recipe.train.batch_size


def _transformer(precision: str, device: str, sets: list[str]) -> tuple[Any, int]:
    from tertulia.config import load_recipe
    from tertulia.jobs.lm import LMTask, build_lm, load_corpus
    from tertulia.runtime import Runtime

    recipe = load_recipe("hope-lm", [f"runtime.precision={precision}", f"runtime.device={device}"])
    corpus = load_corpus(recipe)
    torch.manual_seed(recipe.seed)
    model = build_lm("transformer", recipe.models["transformer"], corpus.size, recipe.data.context)
    task = LMTask(
        model,
        corpus,
        context=recipe.data.context,
        batch_size=recipe.train.batch_size,
        runtime=Runtime.of(recipe),
    )
    return task, recipe.train.batch_size


MODELS = {"orchestra": _orchestra, "transformer": _transformer}


def _measure(
    name: str, precision: str, device: str, steps: int, warmup: int, sets: list[str]
) -> dict[str, float]:
    from tertulia.config import TrainConfig
    from tertulia.train import Trainer

    task, batch = MODELS[name](precision, device, sets)
    cfg = TrainConfig(steps=warmup + steps, batch_size=batch, warmup=0, checkpoint_every=10**9)
    marks: dict[int, float] = {}
    losses: list[float] = []
    sync = torch.cuda.synchronize if task.runtime.is_cuda else (lambda: None)

    def on_step(step: int, total: int, logs: dict) -> None:
        if step > warmup:
            losses.append(logs["loss"])
        if step in (warmup, warmup + steps):
            sync()
            marks[step] = time.perf_counter()

    Trainer(task, cfg, seed=1, on_step=on_step).fit()
    seconds = marks[warmup + steps] - marks[warmup]
    return {"examples_per_s": steps * batch / seconds, "loss": sum(losses) / len(losses)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--models", default="orchestra,transformer")
    p.add_argument(
        "--set", action="append", default=[], help="override of the Burgers recipe (repeatable)"
    )
    args = p.parse_args(argv)
    from tertulia.runtime import Runtime

    runtime = Runtime.resolve(args.device)
    res: dict[str, Any] = {"runtime": runtime.describe(), "steps": args.steps, "models": {}}
    if runtime.device.type == "cpu":
        res["threads"] = torch.get_num_threads()
    for name in args.models.split(","):
        rows = {
            prec: _measure(
                name,
                prec,
                args.device,
                args.steps,
                args.warmup,
                args.set if name == "orchestra" else [],
            )
            for prec in ("fp32", "bf16")
        }
        rows["throughput_ratio_bf16_vs_fp32"] = (
            rows["bf16"]["examples_per_s"] / rows["fp32"]["examples_per_s"]
        )
        res["models"][name] = rows
    if args.json:
        print(json.dumps(res, indent=2))
        return res
    where = res["runtime"]["device_name"]
    threads = f", {res['threads']} threads" if "threads" in res else ""
    print(f"training throughput on {where}{threads}, {args.steps} timed steps")
    print(
        f"{'model':<13}{'fp32 ex/s':>11}{'bf16 ex/s':>11}{'ratio':>8}"
        f"{'fp32 loss':>11}{'bf16 loss':>11}"
    )
    for name, r in res["models"].items():
        print(
            f"{name:<13}{r['fp32']['examples_per_s']:>11.1f}{r['bf16']['examples_per_s']:>11.1f}"
            f"{r['throughput_ratio_bf16_vs_fp32']:>8.2f}"
            f"{r['fp32']['loss']:>11.4f}{r['bf16']['loss']:>11.4f}"
        )
    return res


if __name__ == "__main__":
    main()
