"""scikit-learn (and XGBoost / LightGBM sklearn-API) models saved as pickles.

A .joblib or .pkl file is a pickle: loading it runs whatever code the file
names. batchscore loads one only with --trust-model; the safe path is to
convert it once, where the pickle is trusted, with
``batchscore convert MODEL.joblib OUT.onnx --trust-model`` and run the ONNX
file through onnxruntime.

Classifiers yield ``label`` and ``probabilities`` (one value per class, in the
order recorded as ``class_labels`` in the output's metadata); regressors and
other estimators yield ``prediction``. NaN feature values reach the model, so
tree models that read NaN as missing see it as missing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import MissingDependencyError, ModelError, UsageError
from . import Backend, Device, TensorSpec

INPUT = "features"


def refusal(model_path: str) -> str:
    return (
        f"model {model_path} is a pickle: loading it runs arbitrary code stored in the file, so batchscore "
        "refuses it by default; pass --trust-model if you trust where it came from, or convert it once to "
        f"ONNX where it is trusted: batchscore convert {model_path} MODEL.onnx --trust-model"
    )


class UntrustedModelError(UsageError):
    """The model is a pickle and --trust-model was not given."""


def load_pickle(model_path: str, trust_model: bool):
    """Unpickle a model (joblib or plain pickle), only when trusted."""
    if not trust_model:
        raise UntrustedModelError(refusal(model_path))
    try:
        import joblib
    except ImportError:
        raise MissingDependencyError("joblib is not installed: pip install 'batchscore[sklearn]'") from None
    try:
        return joblib.load(model_path)
    except ModuleNotFoundError as exc:
        raise MissingDependencyError(
            f"model {model_path} needs the Python package {exc.name!r}, which is not installed"
        ) from None
    except Exception as exc:  # noqa: BLE001 - unpickling raises anything
        msg = " ".join(str(exc).split())[:300]
        raise ModelError(f"model {model_path} cannot be unpickled: {type(exc).__name__}: {msg}") from None


def _n_features(model, model_path: str) -> int | None:
    n = getattr(model, "n_features_in_", None)
    if n is None and hasattr(model, "steps"):
        n = getattr(model.steps[0][1], "n_features_in_", None)
    return int(n) if n is not None else None


def _plain(values) -> list:
    return [v.item() if isinstance(v, np.generic) else v for v in values]


class SklearnBackend(Backend):
    """An unpickled estimator's predict / predict_proba, on the CPU."""

    name = "sklearn"
    extensions = (".joblib", ".pkl", ".pickle")
    #: Packages this backend imports lazily (``batchscore devices`` checks them).
    requires = ("sklearn", "joblib")
    device_kinds = ("cpu",)
    default_batch_size = 16384

    def __init__(self, model_path: str, device: Device, *, threads: int, options: dict[str, Any] | None = None):
        super().__init__(model_path, device, threads=threads, options=options)
        precision = self.options.get("precision")
        if precision not in (None, "fp32"):
            raise UsageError(f"--precision {precision}: the sklearn backend computes in the model's own precision")
        self.model = load_pickle(model_path, bool(self.options.get("trust_model")))
        if not hasattr(self.model, "predict"):
            raise ModelError(f"model {model_path} holds a {type(self.model).__name__}, which has no predict method")
        self.threads = threads
        n = _n_features(self.model, model_path)
        self.inputs = [TensorSpec(INPUT, "float64", (None, n))]
        self.classes = getattr(self.model, "classes_", None)
        self.is_classifier = self.classes is not None and hasattr(self.model, "predict_proba")
        if self.is_classifier:
            classes = np.asarray(self.classes)
            label_dtype = "string" if classes.dtype.kind in "OUS" else classes.dtype.name
            self.outputs = [
                TensorSpec("label", label_dtype, (None,)),
                TensorSpec("probabilities", "float64", (None, len(classes))),
            ]
            self.output_metadata["probabilities"] = {"class_labels": _plain(classes)}
        else:
            self.outputs = [TensorSpec("prediction", "float64", None)]

    def predict(self, feeds: dict[str, Any]) -> dict[str, Any]:
        x = np.asarray(feeds[INPUT])
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover - a scikit-learn dependency
            return self._predict(x)
        with threadpool_limits(limits=max(1, self.threads)):
            return self._predict(x)

    def _predict(self, x: np.ndarray) -> dict[str, Any]:
        if self.is_classifier:
            proba = np.asarray(self.model.predict_proba(x), dtype=np.float64)
            # predict(), not the argmax of proba: they differ for some models (SVC).
            labels = np.asarray(self.model.predict(x))
            if labels.dtype.kind in "US":
                labels = labels.astype(object)
            return {"label": labels, "probabilities": proba}
        return {"prediction": np.asarray(self.model.predict(x), dtype=np.float64)}

    def close(self) -> None:
        self.model = None


def convert(model_path: str, out_path: str, *, trust_model: bool, opset: int | None = None) -> dict[str, Any]:
    """Convert a pickled scikit-learn / XGBoost / LightGBM model to ONNX.

    The ONNX file has one input ``features`` (float32 [N, F]) and the outputs
    ``label`` and ``probabilities`` (classifiers) or ``prediction``.

    Returns:
        What was written: ``{"model": class name, "inputs": [...], "outputs": [...]}``.
    """
    model = load_pickle(model_path, trust_model)
    n = _n_features(model, model_path)
    if n is None:
        raise ModelError(f"model {model_path}: cannot tell how many features it takes (no n_features_in_)")
    module = type(model).__module__.split(".")[0]
    is_classifier = hasattr(model, "classes_") and hasattr(model, "predict_proba")
    try:
        if module in ("xgboost", "lightgbm"):
            try:
                import onnxmltools
                from onnxmltools.convert.common.data_types import FloatTensorType
            except ImportError:
                raise MissingDependencyError(
                    f"converting a {module} model needs onnxmltools: pip install onnxmltools"
                ) from None
            fn = onnxmltools.convert_xgboost if module == "xgboost" else onnxmltools.convert_lightgbm
            onx = fn(model, initial_types=[(INPUT, FloatTensorType([None, n]))], target_opset=opset)
        else:
            try:
                from skl2onnx import to_onnx
                from skl2onnx.common.data_types import FloatTensorType
            except ImportError:
                raise MissingDependencyError("converting needs skl2onnx: pip install 'batchscore[sklearn]'") from None
            onx = to_onnx(model, initial_types=[(INPUT, FloatTensorType([None, n]))], target_opset=opset)
    except (UsageError, ModelError):
        raise
    except Exception as exc:  # noqa: BLE001 - converters raise many types for unsupported models
        msg = " ".join(str(exc).split())[:300]
        raise ModelError(f"model {model_path} ({type(model).__name__}) cannot be converted to ONNX: {msg}") from None
    _rename_outputs(onx, ["label", "probabilities"] if is_classifier else ["prediction"])
    with open(out_path, "wb") as fh:
        fh.write(onx.SerializeToString())
    return {
        "model": type(model).__name__,
        "inputs": [f"{INPUT} float32[N,{n}]"],
        "outputs": [o.name for o in onx.graph.output],
    }


def _rename_outputs(onx, names: list[str]) -> None:
    """Give the converter's outputs batchscore's names (label, probabilities, prediction)."""
    graph = onx.graph

    def rename(old: str, new: str) -> None:
        for node in graph.node:
            for i, name in enumerate(node.output):
                if name == old:
                    node.output[i] = new
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new

    for out, new in zip(list(graph.output), names):
        old = out.name
        if old == new:
            continue
        used = {n for node in graph.node for n in [*node.input, *node.output]}
        if new in used:  # an intermediate already has the name (skl2onnx's ZipMap input)
            k = 0
            while f"{new}_{k}" in used:
                k += 1
            rename(new, f"{new}_{k}")
        rename(old, new)
        out.name = new
