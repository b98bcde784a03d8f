"""ONNX export of a run's models (dense or compressed), checked against PyTorch.

``torch.onnx.export`` with the TorchScript tracer (``dynamo=False``: the dynamo
exporter needs packages this project does not install). A model whose forward
returns a :class:`~tertulia.nn.heads.Prediction` is exported with two outputs,
``mean`` and ``log_var``; the batch axis is dynamic.

Tracing records one path through Python control flow. An orchestra's solver
may stop early when the residual falls below ``tol`` — data-dependent — so the
exported copy runs every round (``tol = 0``, the solver's maximum) and the
check compares the graph with that same copy in PyTorch. Equilibrium (DEQ)
solvers, whose iteration counts are data-dependent by nature, are refused.

:func:`check_onnx` runs the file with onnxruntime and returns the largest
absolute difference to PyTorch.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..nn.heads import Prediction
from ..solvers import Unrolled


class _Outputs(nn.Module):
    """Tensors out: (mean, log_var) for a Prediction, the tensor otherwise."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Any:
        out = self.model(x)
        if isinstance(out, Prediction):
            return out.mean, out.log_var
        return out


def exportable(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with a fixed number of rounds, in eval mode, returning tensors."""
    m = copy.deepcopy(model).eval()
    solver = getattr(m, "solver", None)
    if solver is not None:
        if not isinstance(solver, Unrolled):
            raise ConfigError(
                "ONNX export needs a fixed number of rounds: equilibrium (deq) solvers iterate "
                "a data-dependent number of times; export an unrolled (bptt) model"
            )
        solver.tol = 0.0
    return _Outputs(m).eval()


def export_onnx(
    model: nn.Module, example: torch.Tensor, path: str | os.PathLike
) -> tuple[nn.Module, Path]:
    """Write ``model`` as ONNX (batch axis dynamic); returns (the exported copy, path)."""
    wrapped = exportable(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        probe = wrapped(example)
    names = ["mean", "log_var"] if isinstance(probe, tuple) else ["output"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python floats in traces
        torch.onnx.export(
            wrapped,
            (example,),
            str(path),
            input_names=["x"],
            output_names=names,
            dynamic_axes={n: {0: "batch"} for n in ["x", *names]},
            dynamo=False,
        )
    return wrapped, path


def check_onnx(path: str | os.PathLike, wrapped: nn.Module, example: torch.Tensor) -> float:
    """Largest |onnxruntime − PyTorch| over the outputs for ``example``."""
    import onnxruntime as ort  # lazy: the optional [export] extra

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": example.numpy()})
    with torch.no_grad():
        ref = wrapped(example)
    refs = ref if isinstance(ref, tuple) else (ref,)
    return max(float(abs(g - r.numpy()).max()) for g, r in zip(got, refs, strict=True))
