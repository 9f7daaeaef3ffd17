"""Commands about models and hardware: ``devices``, ``inspect`` and ``convert``.

Heavy libraries are imported inside the commands, so ``--help`` stays fast.
"""

from __future__ import annotations

import json
import os
from typing import Any, List, Optional

import typer


def inspect_model(
    model: str,
    data: list[str] | None = None,
    *,
    backend: str | None = None,
    features: list[str] | None = None,
    trust_model: bool = False,
) -> dict[str, Any]:
    """The backend, inputs and outputs of a model, and which columns of ``data`` feed it.

    Returns:
        ``{"model", "backend", "inputs", "outputs", "output_metadata"}`` plus, with data,
        ``"features"`` (input → columns), ``"keep"`` and ``"output_schema"``.
    """
    from .backends import Device, pick_backend

    cls = pick_backend(model, backend)
    info: dict[str, Any] = {"model": model, "backend": cls.name}
    if data:
        from .job import build_job
        from .plan import make_plan

        flags = dict(inputs=list(data), model=model, backend=backend, features=features,
                     trust_model=trust_model or None, device="cpu", quiet=True)
        plan = make_plan(build_job(flags))
        be = plan.backend
        if plan.features is not None:
            info["features"] = {f.spec.name: f.columns for f in plan.features.feeds}
            info["chosen_by"] = plan.features.chosen_by
            info["keep"] = plan.features.keep
            info["output_schema"] = [f"{f.name}: {f.type}" for f in plan.output_schema]
    else:
        be = cls(model, Device("cpu", None, "CPU"), threads=1, options={"trust_model": trust_model})
    info["inputs"] = [{"name": s.name, "dtype": s.dtype, "shape": _dims(s.shape)} for s in be.inputs]
    info["outputs"] = [{"name": s.name, "dtype": s.dtype, "shape": _dims(s.shape)} for s in be.outputs]
    info["output_metadata"] = be.output_metadata
    be.close()
    return info


def _dims(shape) -> list | None:
    return None if shape is None else ["N" if d is None else d for d in shape]


def _shape_text(shape) -> str:
    return "?" if shape is None else "[" + ",".join(str(d) for d in shape) + "]"


def _fail(exc: BaseException, show_traceback: bool) -> None:
    from .cli import _fail as fail

    fail(exc, show_traceback, "text")


def devices(
    as_json: bool = typer.Option(False, "--json", help="Print the listing as JSON."),
) -> None:
    """List this machine's CPU cores, GPUs, TPUs and MPS, and which backends can use each."""
    from .devices import survey

    info = survey()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    cpu = info["cpu"]
    lines = [f"cpu: {cpu['cores']} cores usable" + (f" (of {cpu['os_cpus']})" if cpu["os_cpus"] != cpu["cores"] else "")]
    if info["gpus"]:
        for g in info["gpus"]:
            mem = f", {g['memory_mib'] / 1024:.0f} GiB" if g["memory_mib"] else ""
            lines.append(f"gpu:{g['index']}: {g['name']}{mem}")
    else:
        lines.append("gpu: none")
    lines.append(f"tpu: {len(info['tpus'])} chip(s)" if info["tpus"] else "tpu: none")
    lines.append("mps: available" if info["mps"] else "mps: none")
    lines.append("backends:")
    for name, entry in info["backends"].items():
        if "install" in entry:
            lines.append(f"  {name}: not installed ({entry['install']})")
            continue
        lines.append(f"  {name}: {', '.join(entry['usable']) or 'nothing'}")
        for kind, why in entry["problems"].items():
            lines.append(f"    not {kind}: {why}")
    for w in info["warnings"]:
        lines.append(f"warning: {w}")
    typer.echo("\n".join(lines))


def inspect(
    model: str = typer.Argument(..., metavar="MODEL", help="The model file."),
    data: Optional[List[str]] = typer.Argument(None, metavar="[DATA...]", help="Files, directories or globs: show which columns would feed the model."),
    backend: Optional[str] = typer.Option(None, "--backend", help="Model runtime (default: from the model file)."),
    features: Optional[str] = typer.Option(None, "--features", help="Columns fed to the model, as for run."),
    trust_model: bool = typer.Option(False, "--trust-model", help="Allow loading pickled models (.joblib, .pkl): they run code when loaded."),
    as_json: bool = typer.Option(False, "--json", help="Print the description as JSON."),
    show_traceback: bool = typer.Option(False, "--traceback", help="Show a traceback with errors."),
) -> None:
    """Print a model's backend, inputs and outputs (shapes, dtypes), and which DATA columns feed them."""
    from .errors import BatchscoreError
    from .job import split_list

    try:
        info = inspect_model(model, data or None, backend=backend, features=split_list(features), trust_model=trust_model)
    except typer.Exit:
        raise
    except (BatchscoreError, Exception) as exc:
        _fail(exc, show_traceback)
    if as_json:
        typer.echo(json.dumps(info, indent=2, default=str))
        return
    lines = [f"model: {model}", f"backend: {info['backend']}", "inputs:"]
    lines += [f"  {i['name']}: {i['dtype']}{_shape_text(i['shape'])}" for i in info["inputs"]]
    lines.append("outputs:")
    for o in info["outputs"]:
        extra = info["output_metadata"].get(o["name"], {})
        labels = f" (classes: {', '.join(map(str, extra['class_labels']))})" if "class_labels" in extra else ""
        lines.append(f"  {o['name']}: {o['dtype']}{_shape_text(o['shape'])}{labels}")
    if "features" in info:
        lines.append(f"features ({info['chosen_by']}):")
        lines += [f"  {name} <- {', '.join(cols)}" for name, cols in info["features"].items()]
        lines.append(f"keep: {', '.join(info['keep']) or '(none)'}")
        lines.append("output schema:")
        lines += [f"  {f}" for f in info["output_schema"]]
    typer.echo("\n".join(lines))


def convert(
    model: str = typer.Argument(..., metavar="MODEL", help="A pickled scikit-learn, XGBoost or LightGBM model (.joblib, .pkl)."),
    out: str = typer.Argument(..., metavar="OUT", help="The ONNX file to write."),
    trust_model: bool = typer.Option(False, "--trust-model", help="Required: unpickling the model runs code stored in it."),
    opset: Optional[int] = typer.Option(None, "--opset", help="Target ONNX opset. Default: the converter's."),
    show_traceback: bool = typer.Option(False, "--traceback", help="Show a traceback with errors."),
) -> None:
    """Convert a pickled model to ONNX once, where the pickle is trusted; run the ONNX file anywhere."""
    from .errors import BatchscoreError, ModelError

    try:
        if not os.path.isfile(model):
            raise ModelError(f"model {model} does not exist: fix MODEL")
        from .backends.sklearn import convert as convert_model

        info = convert_model(model, out, trust_model=trust_model, opset=opset)
    except typer.Exit:
        raise
    except (BatchscoreError, Exception) as exc:
        _fail(exc, show_traceback)
    typer.echo(f"wrote {out}: {info['model']}, input {', '.join(info['inputs'])}, outputs {', '.join(info['outputs'])}")


def register(app: typer.Typer) -> None:
    """Add the commands to the batchscore app."""
    app.command("devices")(devices)
    app.command("inspect")(inspect)
    app.command("convert")(convert)
