"""The seed's compression experiment on real MNIST: gradual pruning vs torch's one-shot L1.

Data: the MNIST test set shipped in ``../shared/data/mnist`` split as its
README says (first 8,000 images train, last 2,000 test). Model: the seed's MLP
784-128-Dropout(0.3)-64-10 (109,386 parameters).

1. Dense: trained ``--dense-steps`` steps (Adam, batch 128); its reported accuracy
   (``dense_acc``) is after the same ``--finetune-steps`` the pruned models get, so
   no method wins by training longer (``dense_acc_before_finetune`` is also printed).
2. Ours, at 70 % and 90 % sparsity: from the dense weights, ``--finetune-steps``
   steps in which :class:`tertulia.compress.Pruner` raises the sparsity of the
   weight matrices along the cubic schedule (Zhu & Gupta) over the first 70 %
   of the budget, masks enforced (pruned weights and their Adam moments stay 0),
   then fine-tunes with the final mask.
3. Peer: ``torch.nn.utils.prune.global_unstructured`` one-shot L1 to 90 %, then
   the same ``--finetune-steps`` of fine-tuning (torch keeps pruned weights at 0
   through its ``weight_orig * weight_mask`` reparametrisation).

Sizes: the dense state_dict as fp32 safetensors vs
:func:`tertulia.compress.sparse_io.save_compressed` (bitmask + packed non-zeros in
fp32 / fp16 / int8 with a per-tensor scale), bytes on disk; accuracy is
re-measured on the weights loaded back from each compressed file.

Every accuracy is the mean over ``--seeds`` repetitions (default 3: dense
initialisation and batch order change); ``<key>_per_seed`` lists them. Sizes are
the first seed's.

Usage: ``python benchmarks/compress.py [--json] [--threads 2] [--seeds 3] [--data-dir DIR]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import prune as torch_prune

from tertulia.compress import Pruner, load_compressed, save_compressed
from tertulia.data.sequences import read_mnist_idx
from tertulia.errors import DataError
from tertulia.nn.mlp import MLPClassifier

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = (ROOT / ".." / "shared" / "data" / "mnist").resolve()


ROW_KEYS = ("acc_70", "acc_90", "torch_prune_acc_90")


def seed_mlp() -> MLPClassifier:
    """The seed's MLP: 784-128-Dropout(0.3)-64-10 (the recipe compress-mnist's model)."""
    return MLPClassifier(784, 10, (128, 64), dropout=0.3)


def _train(model, x, y, steps, *, lr, gen, pruner=None) -> torch.optim.Optimizer:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    if pruner is not None:
        pruner.attach(opt)
    model.train()
    for step in range(steps):
        if pruner is not None:
            pruner.step(step)
        rows = torch.randint(len(y), (128,), generator=gen)
        loss = F.cross_entropy(model(x[rows]), y[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return opt


@torch.no_grad()
def _accuracy(model, x, y) -> float:
    model.eval()
    return float((model(x).argmax(-1) == y).float().mean())


def _weights(model) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, nn.Linear)]


def _bytes(model, directory: Path, x, y) -> dict[str, Any]:
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    dense = directory / "dense.safetensors"
    save_file(sd, str(dense))
    out: dict[str, Any] = {"dense_bytes": dense.stat().st_size}
    for dtype in ("fp32", "fp16", "int8"):
        path = directory / f"model-{dtype}.safetensors"
        save_compressed(path, sd, dtype=dtype)
        back = copy.deepcopy(model)
        back.load_state_dict(load_compressed(path))
        out[dtype] = {"bytes": path.stat().st_size, "acc": _accuracy(back, x, y)}
    return out


def _one(seed: int, args: argparse.Namespace, xtr, ytr, xte, yte) -> tuple[dict[str, Any], list]:
    """Dense training, our cubic pruning at 70 / 90 % and torch's one-shot L1, one seed."""
    torch.manual_seed(seed)
    dense = seed_mlp()
    t0 = time.perf_counter()
    _train(
        dense,
        xtr,
        ytr,
        args.dense_steps,
        lr=args.lr,
        gen=torch.Generator().manual_seed(1 + 10 * seed),
    )
    res: dict[str, Any] = {
        "params": sum(q.numel() for q in dense.parameters()),
        "dense_acc": _accuracy(dense, xte, yte),
        "dense_seconds": time.perf_counter() - t0,
    }
    ft = args.finetune_steps
    # the fair dense reference gets the same extra steps the pruned models fine-tune with
    res["dense_acc_before_finetune"] = res.pop("dense_acc")
    tuned = copy.deepcopy(dense)
    _train(tuned, xtr, ytr, ft, lr=args.lr / 2, gen=torch.Generator().manual_seed(2 + 10 * seed))
    res["dense_acc"] = _accuracy(tuned, xte, yte)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for sparsity in (0.7, 0.9):
            model = copy.deepcopy(dense)
            pruner = Pruner(
                model,
                final=sparsity,
                schedule="cubic",
                start=0,
                end=int(0.7 * ft),
                every=max(ft // 30, 1),
                scope="global",
            )
            t0 = time.perf_counter()
            _train(
                model,
                xtr,
                ytr,
                ft,
                lr=args.lr / 2,
                gen=torch.Generator().manual_seed(2 + 10 * seed),
                pruner=pruner,
            )
            acc = _accuracy(model, xte, yte)
            sizes = _bytes(model, Path(tmp), xte, yte)
            tag = f"{int(sparsity * 100)}"
            res[f"acc_{tag}"] = acc
            res[f"sparsity_{tag}"] = pruner.masks.sparsity()
            for dtype in ("fp32", "fp16", "int8"):
                res[f"bytes_ratio_{tag}_{dtype}"] = sizes[dtype]["bytes"] / sizes["dense_bytes"]
                res[f"acc_{tag}_{dtype}_loaded"] = sizes[dtype]["acc"]
            rows.append(("tertulia cubic", tag, acc, time.perf_counter() - t0, sizes))
        # peer: torch one-shot global L1 to 90 %, same fine-tuning budget
        model = copy.deepcopy(dense)
        torch_prune.global_unstructured(
            _weights(model), pruning_method=torch_prune.L1Unstructured, amount=0.9
        )
        t0 = time.perf_counter()
        _train(
            model, xtr, ytr, ft, lr=args.lr / 2, gen=torch.Generator().manual_seed(2 + 10 * seed)
        )
        res["torch_prune_acc_90"] = _accuracy(model, xte, yte)
        for module, name in _weights(model):
            torch_prune.remove(module, name)
        sizes = _bytes(model, Path(tmp), xte, yte)
        rows.append(
            ("torch one-shot L1", "90", res["torch_prune_acc_90"], time.perf_counter() - t0, sizes)
        )
    return res, rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--dense-steps", type=int, default=3000)
    p.add_argument("--finetune-steps", type=int, default=1500)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=3, help="repeat with seeds seed … seed+N−1")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        splits = read_mnist_idx(args.data_dir, as_rows=False, train=8000)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    xtr, ytr = splits["train"].x.reshape(8000, 784), splits["train"].y
    xte, yte = splits["test"].x.reshape(-1, 784), splits["test"].y

    per_seed = [_one(args.seed + k, args, xtr, ytr, xte, yte) for k in range(args.seeds)]
    res, rows = per_seed[0]  # sizes and the table's bytes: the first seed
    for key in [k for k, v in res.items() if k.startswith(("acc_", "dense_acc", "torch_"))]:
        values = [r[key] for r, _ in per_seed]
        res[key] = sum(values) / len(values)
        if key in ("dense_acc", "acc_70", "acc_90", "torch_prune_acc_90"):
            res[f"{key}_per_seed"] = values
    rows = [(n, t, res[k], sec, sz) for (n, t, _, sec, sz), k in zip(rows, ROW_KEYS, strict=True)]
    res["acc_drop_70"] = res["dense_acc"] - res["acc_70"]
    res["acc_drop_90"] = res["dense_acc"] - res["acc_90"]
    res["ours_minus_torch_90"] = res["acc_90"] - res["torch_prune_acc_90"]
    res["config"] = vars(args) | {"data_dir": str(args.data_dir)}
    if args.json:
        print(json.dumps(res, indent=2))
        return res
    print(
        f"MNIST (t10k: first 8000 train, last 2000 test), MLP 784-128-64-10, "
        f"{res['params']} parameters; dense {args.dense_steps} steps, fine-tuning "
        f"{args.finetune_steps} steps; accuracies: mean of {args.seeds} seeds"
    )
    print(
        f"dense accuracy {res['dense_acc']:.4f} (after the same fine-tuning budget; "
        f"{res['dense_acc_before_finetune']:.4f} before it)"
    )
    print(
        f"{'method':<20}{'sparsity':>9}{'acc':>8}{'fp32 B':>9}{'fp16 B':>9}{'int8 B':>9}"
        f"{'int8 acc':>9}{'s':>7}"
    )
    for name, tag, acc, sec, sizes in rows:
        print(
            f"{name:<20}{tag + ' %':>9}{acc:>8.4f}{sizes['fp32']['bytes']:>9}"
            f"{sizes['fp16']['bytes']:>9}{sizes['int8']['bytes']:>9}{sizes['int8']['acc']:>9.4f}"
            f"{sec:>7.1f}"
        )
    print(f"dense fp32 safetensors: {rows[0][4]['dense_bytes']} bytes\n")
    for k, v in res.items():
        if isinstance(v, float):
            print(f"{k:<32}{v:>10.4g}")
    return res


if __name__ == "__main__":
    main()
