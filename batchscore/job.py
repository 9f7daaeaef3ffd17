"""One validated description of a run.

Flags, ``BATCHSCORE_<FLAG>`` environment variables and a TOML file all land
here, with that precedence (flags > environment > TOML > defaults). A
:class:`Job` is plain data: it can be serialised (``to_dict``) and handed to
another process, which is what scale-out will do.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError, UsageError

IF_EXISTS = ("fail", "replace", "append", "resume")
PUBLISH = ("per-shard", "at-end")
INPUT_FORMATS = ("auto", "parquet", "csv", "ndjson", "ipc")
LOG_FORMATS = ("text", "json")
ON_ERROR = ("fail", "skip", "quarantine")
DEFAULT_CONFIG = "batchscore.toml"
_DEVICE_RE = re.compile(r"^(auto|cpu|gpu(:(\d+|all))?|cuda(:(\d+|all))?|tpu|mps)$")


@dataclass
class Job:
    """Everything that decides what a run does."""

    inputs: list[str] = field(default_factory=list)
    model: str | None = None
    output: str | None = None
    features: list[str] | None = None
    keep: list[str] | None = None
    device: str = "auto"
    backend: str | None = None
    trust_model: bool = False  # allow model formats that run code when loaded (pickles)
    precision: str | None = None  # fp32, fp16, bf16 where the backend and device support it
    trt: bool = False  # ONNX on a GPU: TensorRT execution provider first (CUDA as fallback)
    where: str | None = None
    batch_size: int | str | None = None  # rows per batch, or "auto" (probe the device)
    prefetch: int = 4
    threads: int | None = None
    report: str | None = None
    quiet: bool = False
    log_format: str = "text"
    if_exists: str = "fail"
    table: str | None = None  # database outputs: [schema.]name
    upsert_key: list[str] | None = None  # database outputs: key columns; writes become upserts
    publish: str | None = None  # "per-shard" or "at-end"; None: per-shard (or what --resume continues)
    input_format: str = "auto"
    prediction_prefix: str = ""
    run_id: str | None = None
    dry_run: bool = False
    allow_empty: bool = False
    on_error: str = "fail"  # bad rows and shards: fail, skip or quarantine
    quarantine: str | None = None  # where quarantined rows go (default: beside the output)
    allow_nan: bool = False  # NaN/inf features are data (tree models read NaN as missing)
    max_errors: int | None = None  # end the run (exit 1) past this many bad rows
    max_error_rate: float | None = None  # ... or past this fraction of the rows read so far
    no_lock: bool = False  # do not lock the output (knowingly parallel appends)
    retries: int = 0  # rerun a run that failed with a retryable error (exit 1) this many times, resuming
    timeout: float | None = None  # seconds one model call or one output write may take
    progress: str | None = None  # "rich", "log", "tqdm", "none"; None picks one
    config_path: str | None = None  # the TOML file that was read, if any

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def backend_options(self) -> dict[str, Any]:
        """Options every backend receives; each uses what applies to it."""
        return {
            "trust_model": self.trust_model,
            "precision": self.precision,
            "batch_size": self.batch_size,
            "threads_explicit": self.threads is not None,
            "trt": self.trt,
        }

    def validate(self) -> "Job":
        if isinstance(self.batch_size, str):
            text = self.batch_size.strip().lower()
            if text == "auto":
                self.batch_size = "auto"
            elif text.isdigit():
                self.batch_size = int(text)
            else:
                raise UsageError(f"--batch-size must be a number of rows or 'auto', got {self.batch_size!r}")
        if isinstance(self.batch_size, int) and self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.prefetch < 1:
            raise UsageError(f"--prefetch must be at least 1, got {self.prefetch}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {self.threads}")
        _choice("--if-exists", self.if_exists, IF_EXISTS)
        if self.publish is not None:
            _choice("--publish", self.publish, PUBLISH)
        if self.upsert_key is not None and not self.upsert_key:
            raise UsageError("--upsert-key is empty: give the key column(s), e.g. --upsert-key id")
        _choice("--input-format", self.input_format, INPUT_FORMATS)
        _choice("--on-error", self.on_error, ON_ERROR)
        if self.retries < 0:
            raise UsageError(f"--retries must be 0 or more, got {self.retries}")
        if self.timeout is not None and self.timeout <= 0:
            raise UsageError(f"--timeout must be a positive number of seconds, got {self.timeout}")
        if self.max_errors is not None and self.max_errors < 0:
            raise UsageError(f"--max-errors must be 0 or more, got {self.max_errors}")
        if self.max_error_rate is not None and not 0 <= self.max_error_rate <= 1:
            raise UsageError(f"--max-error-rate must be a fraction between 0 and 1, got {self.max_error_rate}")
        if self.quarantine and self.on_error != "quarantine":
            raise UsageError("--quarantine is only used with --on-error quarantine: add it, or drop --quarantine")
        _choice("--log-format", self.log_format, LOG_FORMATS)
        if not _DEVICE_RE.match(self.device):
            raise UsageError(
                f"--device {self.device!r} is not a device: use auto, cpu, gpu, gpu:N, cuda:N, tpu or mps"
            )
        if self.features is not None and not self.features:
            raise UsageError("--features is empty: give a comma list of columns, e.g. --features 'f*'")
        if self.where is not None and not self.where.strip():
            raise UsageError("--where is empty: give an SQL predicate, e.g. --where \"ts >= '2026-12-03'\"")
        if not self.model:
            raise UsageError(
                f"no model: pass --model PATH or set model = \"...\" in {DEFAULT_CONFIG}"
            )
        if not self.inputs:
            raise UsageError("no input: pass one or more files, directories or globs")
        return self


def _choice(flag: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UsageError(f"{flag} {value!r} is not one of: {', '.join(allowed)}")


FIELD_NAMES = tuple(f.name for f in fields(Job))
_LIST_FIELDS = {"inputs", "features", "keep", "upsert_key"}
_INT_FIELDS = {"prefetch", "threads", "max_errors", "retries"}
_FLOAT_FIELDS = {"max_error_rate", "timeout"}
_BOOL_FIELDS = {"quiet", "dry_run", "allow_empty", "trust_model", "trt", "allow_nan", "no_lock"}
_PATH_FIELDS = {"model", "output", "report", "quarantine"}
_NOT_CONFIGURABLE = {"dry_run", "config_path"}
# Shorthands accepted in TOML and the environment, as on the command line.
_ALIASES = {"overwrite": ("if_exists", "replace"), "resume": ("if_exists", "resume")}


def split_list(value: str | list[str] | None) -> list[str] | None:
    """Split a comma list (`a,b, c`) into names; `none` means the empty list."""
    if value is None:
        return None
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    else:
        items = [str(v).strip() for v in value]
    items = [v for v in items if v]
    if len(items) == 1 and items[0].lower() == "none":
        return []
    return items


def _coerce(name: str, value: Any, where: str) -> Any:
    try:
        if name in _LIST_FIELDS:
            if name == "inputs" and isinstance(value, str):
                return [value]
            if not isinstance(value, (str, list)):
                raise TypeError
            return split_list(value)
        if name == "batch_size":  # rows, or "auto"
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                raise TypeError
            if isinstance(value, str) and value.strip().lower() != "auto":
                return int(value)
            return value if isinstance(value, int) else "auto"
        if name in _INT_FIELDS:
            if isinstance(value, bool):
                raise TypeError
            return int(value)
        if name in _FLOAT_FIELDS:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if name in _BOOL_FIELDS:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError
        if not isinstance(value, str):
            raise TypeError
        return value
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: invalid value {value!r} for {name!r}") from None


def load_toml(path: Path) -> dict[str, Any]:
    """Read a config file into Job field values; unknown keys are an error."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist: fix --config") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    base = path.parent
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name in _ALIASES:
            if value is True:
                target, v = _ALIASES[name]
                values[target] = v
            continue
        if name not in FIELD_NAMES or name in _NOT_CONFIGURABLE:
            raise ConfigError(
                f"config file {path}: unknown key {key!r}; known keys: "
                + ", ".join(n for n in FIELD_NAMES if n not in _NOT_CONFIGURABLE)
            )
        v = _coerce(name, value, f"config file {path}")
        # Paths in a config file are relative to the file, not to the cwd.
        if name in _PATH_FIELDS and v and not _is_url(v):
            v = str(base / v) if not os.path.isabs(v) else v
        if name == "inputs" and v:
            v = [str(base / p) if not os.path.isabs(p) else p for p in v]
        values[name] = v
    return values


def _is_url(value: str) -> bool:
    return "://" in value


def from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """Job field values from ``BATCHSCORE_<FIELD>`` variables."""
    values: dict[str, Any] = {}
    for name in FIELD_NAMES:
        if name == "inputs" or name in _NOT_CONFIGURABLE:
            continue
        raw = env.get("BATCHSCORE_" + name.upper())
        if raw is not None and raw != "":
            values[name] = _coerce(name, raw, f"environment variable BATCHSCORE_{name.upper()}")
    for alias, (target, v) in _ALIASES.items():
        raw = env.get("BATCHSCORE_" + alias.upper())
        if raw and target not in values and _coerce("quiet", raw, f"BATCHSCORE_{alias.upper()}"):
            values[target] = v
    return values


def build_job(
    flags: Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    config: str | os.PathLike | None = None,
    cwd: str | os.PathLike | None = None,
) -> Job:
    """Merge flags > environment > TOML file > defaults into a validated Job.

    Args:
        flags: values given explicitly (None means "not given").
        env: environment to read ``BATCHSCORE_*`` from (None: none).
        config: a TOML file; when None, ``./batchscore.toml`` is read if present
            (or the file named by ``BATCHSCORE_CONFIG``).
        cwd: where to look for the default config file.
    """
    env = env or {}
    cfg_path: Path | None = None
    if config is not None:
        cfg_path = Path(config)
    elif env.get("BATCHSCORE_CONFIG"):
        cfg_path = Path(env["BATCHSCORE_CONFIG"])
    else:
        candidate = Path(cwd or ".") / DEFAULT_CONFIG
        if candidate.is_file():
            cfg_path = candidate
    merged: dict[str, Any] = {}
    if cfg_path is not None:
        merged.update(load_toml(cfg_path))
    merged.update(from_env(env))
    unknown = [k for k in flags if k not in FIELD_NAMES]
    if unknown:
        raise UsageError(f"unknown option(s): {', '.join(sorted(unknown))}")
    for name, value in flags.items():
        if value is None:
            continue
        if name == "inputs" and not value:
            continue
        if name in _LIST_FIELDS and isinstance(value, str):
            value = split_list(value) if name != "inputs" else [value]
        merged[name] = value
    merged["config_path"] = str(cfg_path) if cfg_path else None
    return Job(**merged).validate()
