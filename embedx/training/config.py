"""Typed training configs: per-model defaults <- a YAML file <- `--set key.sub=value` overrides.

The defaults live here, in code (one source of truth, so an installed `embedx train` has them without any
data file); `configs/<kind>.yaml` in the repository are dumps of them, kept equal by a test. Experiment files
(`configs/demo_dae.yaml`, `configs/gnc_vae.yaml`, ...) hold only what differs. Every section forbids
unknown keys, and a bad key or value is a `ConfigError` that names its dotted path and the expected type,
so a typo never silently trains the wrong model.

Schedules are counted in samples seen (DiffAE's convention), not steps or epochs, so a config means the
same thing whatever the number of processes; `optim.batch_size` is the global batch, split evenly across
processes.
"""

from __future__ import annotations

import copy
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from embedx.data.preprocess import PreprocessConfig
from embedx.errors import ConfigError
from embedx.models.cnn import CNNConfig
from embedx.models.dae_config import DAEConfig
from embedx.models.vae import VAEConfig

Kind = Literal["vae", "dae", "cnn"]
KINDS: tuple[str, ...] = ("vae", "dae", "cnn")
MODEL_CONFIGS: dict[str, type[BaseModel]] = {"vae": VAEConfig, "dae": DAEConfig, "cnn": CNNConfig}


class DataConfig(BaseModel):
    """What the loop reads from a manifest; nothing here names a file, so one config serves many cohorts."""

    model_config = ConfigDict(extra="forbid")

    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    label: str | None = None  # the CNN's target attribute (categorical), e.g. site or manufacturer
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)  # of subjects, held out for the validation loss
    split_seed: int = 0
    stratify: str | None = None  # attribute balanced across train/val (defaults to the label for the CNN)
    workers: int = Field(0, ge=0)  # DataLoader worker processes per training process
    # Keep the preprocessed training images in memory when all of them fit in this many MB (per training
    # process; only with workers: 0): a pilot cohort is then decoded once, not once per epoch. 0: off.
    cache_mb: float = Field(1024.0, ge=0.0)


class OptimConfig(BaseModel):
    """Optimisation and schedule; every count is in samples (images), summed over all processes."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(32, ge=1)  # global: split across processes
    total_samples: int = Field(100_000, ge=1)
    eval_every_samples: int = Field(20_000, ge=1)
    checkpoint_every_samples: int = Field(20_000, ge=1)
    log_every_samples: int = Field(1_000, ge=1)  # training-loss rows in metrics.csv / TensorBoard
    keep_checkpoints: int = Field(2, ge=1)  # older resumable checkpoints are deleted
    grad_clip: float | None = Field(1.0, gt=0)  # max global gradient norm; None = off
    weight_decay: float = Field(0.0, ge=0)  # AdamW's decoupled decay; 0 makes it Adam
    warmup_samples: int = Field(0, ge=0)  # linear LR warm-up
    schedule: Literal["constant", "cosine"] = "constant"  # after warm-up
    # EMA of the weights (None = off). Decay ramps up as 1 - (1 + step)^(-2/3) and is capped here, so a
    # short CPU run still gets a useful average; 0.9999 (DiffAE's) only bites after ~10^6 steps.
    ema_decay: float | None = Field(None, gt=0, lt=1)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # auto: bf16 on a GPU, no on CPU
    # GPU speed options; neither changes what is learnt, so both may change when a run is resumed.
    # channels_last: NHWC layout for the 2-D convolutions (tensor cores read it without a transpose).
    # compile: torch.compile the training step; costs minutes of compiling, so it pays on long runs only.
    # bench/gpu.py measures both per model and size.
    channels_last: bool = False
    compile: bool = False
    seed: int = 0

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value: Any) -> Any:
        """YAML 1.1 reads an unquoted `no` as false; `mixed_precision: no` means "no" here."""
        return "no" if value is False else value


class EvalConfig(BaseModel):
    """How much each evaluation costs: kept small so that evaluating does not dominate a CPU run."""

    model_config = ConfigDict(extra="forbid")

    images: int = Field(8, ge=1)  # images in each eval PNG grid
    max_val_samples: int = Field(2048, ge=1)  # cap on the validation images per evaluation
    latent_stats_samples: int = Field(10_000, ge=1)  # DAE: training images used for z_sem statistics


class TrainConfig(BaseModel):
    """Everything a run needs besides the manifest; saved resolved as `config.yaml` in the run folder."""

    model_config = ConfigDict(extra="forbid")

    model: Kind
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    vae: VAEConfig | None = None
    dae: DAEConfig | None = None
    cnn: CNNConfig | None = None

    @model_validator(mode="after")
    def _one_model_section(self) -> TrainConfig:
        """Exactly the chosen model's section is present (filled with its defaults when not given)."""
        for kind in KINDS:
            if kind != self.model and getattr(self, kind) is not None:
                raise ValueError(f"section {kind!r} does not apply to model {self.model!r}; remove it")
        if getattr(self, self.model) is None:
            setattr(self, self.model, MODEL_CONFIGS[self.model]())
        return self

    @property
    def model_section(self) -> BaseModel:
        section = getattr(self, self.model)
        assert section is not None  # filled by the validator
        return section

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json", exclude_none=False)
        for kind in KINDS:
            if kind != self.model:
                data.pop(kind, None)
        return yaml.safe_dump(data, sort_keys=False)


# Per-model defaults: only what differs from the field defaults above. Sources: the poster's table and
# seed 000 (CNN: Adam lr 5e-3, batch 32), DiffAE's templates (DAE: lr 1e-4, grad-clip 1, EMA 0.9999,
# warm-up 5000 steps of 64 = 320k samples).
_KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "vae": {
        "optim": {
            "lr": 2.5e-3,
            "batch_size": 64,
            "total_samples": 2_000_000,
            "eval_every_samples": 100_000,
            "checkpoint_every_samples": 100_000,
            "log_every_samples": 6_400,
        },
    },
    "dae": {
        "optim": {
            "lr": 1e-4,
            "batch_size": 64,
            "total_samples": 10_000_000,
            "eval_every_samples": 500_000,
            "checkpoint_every_samples": 500_000,
            "log_every_samples": 6_400,
            "warmup_samples": 320_000,
            "ema_decay": 0.9999,
        },
    },
    "cnn": {
        "optim": {
            "lr": 5e-3,
            "batch_size": 32,
            "total_samples": 200_000,
            "eval_every_samples": 20_000,
            "checkpoint_every_samples": 20_000,
            "log_every_samples": 3_200,
            "grad_clip": None,
        },
    },
}


def _sparse_defaults(kind: str) -> dict[str, Any]:
    if kind not in KINDS:
        raise ConfigError(f"unknown model kind {kind!r}; expected one of {', '.join(KINDS)}")
    data = copy.deepcopy(_KIND_DEFAULTS[kind])
    data["model"] = kind
    data.setdefault(kind, {})
    return data


def default_config(kind: str) -> TrainConfig:
    """The defaults for one model kind (what `configs/<kind>.yaml` holds)."""
    return TrainConfig.model_validate(_sparse_defaults(kind))


# ---------------------------------------------------------------- merging and error messages


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any], sources: dict[str, str], origin: str,
                prefix: str = "") -> None:
    for key, value in extra.items():
        key = str(key)
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value, sources, origin, f"{path}.")
        else:
            base[key] = copy.deepcopy(dict(value)) if isinstance(value, Mapping) else value
            _record_sources(value, path, sources, origin)


def _record_sources(value: Any, path: str, sources: dict[str, str], origin: str) -> None:
    """Remember where each leaf came from, so an error can say which file or --set to fix."""
    sources[path] = origin
    if isinstance(value, Mapping):
        for key, child in value.items():
            _record_sources(child, f"{path}.{key}", sources, origin)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`optim.lr=1e-3` -> (['optim', 'lr'], 0.001); the value is read as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key.sub=value")
    key, raw = text.split("=", 1)
    parts = [p.strip() for p in key.strip().split(".")]
    if not all(parts):
        raise ConfigError(f"--set {text!r}: empty part in the key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({err})") from err
    return parts, value


def _apply_override(data: dict[str, Any], parts: list[str], value: Any, sources: dict[str, str],
                    text: str) -> None:
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"--set {text!r}: {where!r} is a value, not a section")
        node = child
    node[parts[-1]] = value
    _record_sources(value, ".".join(parts), sources, "--set")


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"a section ({', '.join(annotation.model_fields)})"
    return getattr(annotation, "__name__", str(annotation))


def _section_class(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _section_class(arg)
        if found is not None:
            return found
    return None


def _describe(loc: Sequence[Any]) -> tuple[str, str | None, list[str]]:
    """(dotted key, expected type, sibling keys) for an error location, walking the config classes."""
    cls: type[BaseModel] | None = TrainConfig
    keys: list[str] = []
    expected: str | None = None
    siblings: list[str] = []
    for part in loc:
        if cls is None or not isinstance(part, str):
            if isinstance(part, int):
                keys.append(str(part))
            break
        siblings = list(cls.model_fields)
        keys.append(part)
        field = cls.model_fields.get(part)
        if field is None:
            expected = None
            cls = None
            continue
        expected = _type_name(field.annotation)
        cls = _section_class(field.annotation)
    return ".".join(keys), expected, siblings


def _config_error(error: ValidationError, sources: Mapping[str, str]) -> ConfigError:
    lines = []
    for item in error.errors():
        loc = [p for p in item["loc"] if not (isinstance(p, str) and p.startswith(("function-", "tagged")))]
        dotted, expected, siblings = _describe(loc)
        origin = sources.get(dotted)
        where = f" (from {origin})" if origin else ""
        if item["type"] == "extra_forbidden":
            lines.append(f"unknown key {dotted!r}{where}; known keys here: {', '.join(siblings)}")
        elif not dotted:
            lines.append(item["msg"].removeprefix("Value error, "))
        else:
            want = f"expected {expected}, " if expected else ""
            got = item.get("input")
            shown = "" if item["type"] == "missing" else f"got {got!r}: "
            lines.append(f"{dotted}{where}: {want}{shown}{item['msg'].removeprefix('Value error, ')}")
    return ConfigError("invalid training config:\n  " + "\n  ".join(lines))


def validate_config(data: Mapping[str, Any], sources: Mapping[str, str] | None = None) -> TrainConfig:
    """Parse a config dict; any problem becomes one `ConfigError` listing every bad key."""
    try:
        return TrainConfig.model_validate(dict(data))
    except ValidationError as err:
        raise _config_error(err, sources or {}) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file ({err.strerror})") from err
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not a text file (byte {err.start} is not UTF-8); a config is a YAML file"
        ) from err
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of sections, got {type(loaded).__name__}")
    return loaded


def merge_config(base: Mapping[str, Any], file: str | Path | None = None,
                 overrides: Iterable[str] = (), kind: str | None = None) -> TrainConfig:
    """`base` (a config dict) <- `file` <- `overrides`, validated; `kind` must agree with the file."""
    data = copy.deepcopy(dict(base))
    sources: dict[str, str] = {}
    if file is not None:
        loaded = read_yaml(file)
        if kind is not None and loaded.get("model", kind) != kind:
            raise ConfigError(f"{file}: model {loaded['model']!r} does not match the requested {kind!r}")
        _deep_merge(data, loaded, sources, str(file))
    for text in overrides:
        parts, value = parse_override(text)
        if parts == ["model"] and kind is not None and value != kind:
            raise ConfigError(f"--set {text!r}: the model kind is given on the command line ({kind!r})")
        _apply_override(data, parts, value, sources, text)
    return validate_config(data, sources)


def load_config(kind: str, file: str | Path | None = None, overrides: Iterable[str] = ()) -> TrainConfig:
    """Defaults for `kind` <- YAML `file` <- `--set key.sub=value` overrides (YAML-typed values)."""
    return merge_config(_sparse_defaults(kind), file, overrides, kind=kind)


def save_config(config: TrainConfig, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(config.to_yaml())
    return path


def read_config(path: str | Path) -> TrainConfig:
    """A saved (resolved) config, e.g. a run's `config.yaml`."""
    data = read_yaml(path)
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{path}: {_config_error(err, {})}") from None


def config_differences(a: TrainConfig, b: TrainConfig) -> list[str]:
    """Dotted keys whose values differ (used to refuse resuming a run under a different config)."""
    out: list[str] = []

    def walk(x: Any, y: Any, prefix: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for key in sorted(set(x) | set(y)):
                walk(x.get(key), y.get(key), f"{prefix}{key}.")
        elif x != y:
            out.append(prefix.rstrip("."))

    walk(a.model_dump(mode="json"), b.model_dump(mode="json"), "")
    return out


def write_default_configs(folder: str | Path) -> list[Path]:
    """Write `configs/<kind>.yaml` from the code defaults (the test keeps the shipped copies equal)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in KINDS:
        header = (f"# Defaults for `embedx train {kind}`, generated from embedx/training/config.py\n"
                  "# (python -m embedx.training.config configs/). Edit the code, not this file.\n")
        path = folder / f"{kind}.yaml"
        path.write_text(header + default_config(kind).to_yaml())
        written.append(path)
    return written


if __name__ == "__main__":
    import sys

    for written_path in write_default_configs(sys.argv[1] if len(sys.argv) > 1 else "configs"):
        print(written_path)
