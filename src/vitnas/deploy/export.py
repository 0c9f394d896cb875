"""Export a model directory to ONNX or a torch.export program (`.pt2`), and check that the file
computes what the eager model computes on real input before anyone deploys it."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from vitnas.errors import VitnasError
from vitnas.files import atomic_file

FORMATS = ("onnx", "pt2")
# What every export carries, so `vitnas export` knows a file at --out is one it wrote: a pt2
# archive's extra file, an ONNX model's metadata_props entry.
EXPORT_FORMAT = "vitnas-export/1"
_PT2_EXTRA = "vitnas.json"
_ONNX_KEY = "vitnas"
# The metadata_props entry as protobuf writes it: field 1 (key), field 2 (value), both strings.
_ONNX_MARK = (b"\x0a" + bytes([len(_ONNX_KEY)]) + _ONNX_KEY.encode() + b"\x12" + bytes([len(EXPORT_FORMAT)])
              + EXPORT_FORMAT.encode())
SUFFIX = {"onnx": ".onnx", "pt2": ".pt2"}
ONNX_EXTRA = "pip install 'vitnas[onnx]' (onnx, onnxscript, onnxruntime)"


class ExportError(VitnasError):
    """The exporter failed, a package is missing, or the exported model disagrees with the eager one."""


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float
    runtime: str  # what ran the exported file
    batch: int


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")


def _dynamic(dynamic_batch: bool):
    return {"x": {0: torch.export.Dim("batch", min=1, max=65536)}} if dynamic_batch else None


class _Input(torch.nn.Module):
    """Names the model's input `x` (timm's forward calls it `x` too; explicit for the exporters)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@contextlib.contextmanager
def _quiet():
    """The exporters' progress chatter and deprecation notices are not the user's business."""
    names = ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir", "torch.fx.experimental")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def is_vitnas_export(path: str | Path, chunk: int = 2**20) -> bool:
    """Whether `path` is an export vitnas wrote (its mark found without loading the file)."""
    import zipfile

    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                return any(n.endswith(f"/extra/{_PT2_EXTRA}") for n in z.namelist())
        tail = b""
        with open(path, "rb") as f:
            while block := f.read(chunk):
                if _ONNX_MARK in tail + block:
                    return True
                tail = block[-len(_ONNX_MARK):]
    except (OSError, zipfile.BadZipFile):
        return False
    return False


def export(model: torch.nn.Module, example: torch.Tensor, path: str | Path, fmt: str, *,
           dynamic_batch: bool = False) -> None:
    """Write `model` (eval mode, CPU) traced on `example` to `path` atomically (temp file + rename),
    marked as vitnas's (`is_vitnas_export`)."""
    check_format(fmt)
    wrapped = _Input(model.cpu()).eval()
    try:
        with atomic_file(path) as tmp, torch.no_grad(), _quiet():
            if fmt == "pt2":
                program = torch.export.export(wrapped, (example,), dynamic_shapes=_dynamic(dynamic_batch))
                torch.export.save(program, str(tmp), extra_files={_PT2_EXTRA: f'{{"format": "{EXPORT_FORMAT}"}}'})
            else:
                _need_onnx("onnx", "onnxscript")
                onnx_program = torch.onnx.export(
                    wrapped, (example,), dynamo=True, input_names=["x"], output_names=["logits"],
                    dynamic_shapes=_dynamic(dynamic_batch), verbose=False, report=False)
                onnx_program.model.metadata_props[_ONNX_KEY] = EXPORT_FORMAT
                onnx_program.save(str(tmp))
    except ExportError:
        raise
    except Exception as e:  # the exporters raise many types
        msg = (str(e).strip().splitlines() or [""])[0][:300]
        raise ExportError(f"{fmt} export failed ({type(e).__name__}: {msg})") from None


def _need_onnx(*modules: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"--format onnx needs {', '.join(missing)}: {ONNX_EXTRA}")


def run_exported(path: str | Path, fmt: str, x: torch.Tensor) -> tuple[torch.Tensor, str]:
    """The exported file's output on `x`, and what ran it (onnxruntime, or onnx's reference
    evaluator when onnxruntime is not installed)."""
    if fmt == "pt2":
        with _quiet():
            program = torch.export.load(str(path))
        with torch.no_grad():
            return program.module()(x), f"torch {torch.__version__.split('+')[0]}"
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {"x": x.numpy()})[0]), f"onnxruntime {ort.__version__}"
    _need_onnx("onnx")
    from onnx.reference import ReferenceEvaluator

    return torch.from_numpy(ReferenceEvaluator(str(path)).run(None, {"x": x.numpy()})[0]), "onnx reference evaluator"


def check_parity(model: torch.nn.Module, path: str | Path, fmt: str, x: torch.Tensor) -> Parity:
    """Max |exported - eager| over the logits of `x`."""
    with torch.no_grad():
        want = model.eval().cpu()(x)
    got, runtime = run_exported(path, fmt, x)
    if got.shape != want.shape:
        raise ExportError(f"{path}: output shape {list(got.shape)}, eager model gives {list(want.shape)}")
    return Parity(float((got.float() - want.float()).abs().max()), runtime, len(x))
