"""Build a model from its kind and typed config: the one door that training and encode go through."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError
from torch import nn

from embedx.errors import ConfigError
from embedx.models.cnn import CNN, CNNConfig
from embedx.models.dae_config import DAEConfig
from embedx.models.vae import VAE, VAEConfig

MODEL_CONFIGS: dict[str, type[BaseModel]] = {"vae": VAEConfig, "dae": DAEConfig, "cnn": CNNConfig}

# Optimiser settings the sources used, for the training config's defaults (the models own no optimiser).
# VAE / DAE: the poster's table (GNC / CheXpert, 256 px); CNN: seed 000.
RECOMMENDED_TRAINING: dict[str, dict[str, Any]] = {
    "vae": {"lr": 5e-3, "batch_size": 64, "lr_chexpert": 2.5e-3, "batch_size_chexpert": 128},
    "dae": {"lr": 1e-3, "batch_size": 5, "lr_chexpert": 5e-4, "batch_size_chexpert": 64,
            "ema_decay": 0.9999, "grad_clip": 1.0},
    "cnn": {"lr": 5e-3, "batch_size": 32},
}


def model_config(kind: str, values: BaseModel | dict[str, Any] | None = None) -> BaseModel:
    """Validate `values` into the config class of `kind`; an unknown or mistyped key is a ConfigError."""
    if kind not in MODEL_CONFIGS:
        raise ConfigError(f"unknown model kind {kind!r}; choose one of {sorted(MODEL_CONFIGS)}")
    cls = MODEL_CONFIGS[kind]
    if values is None:
        return cls()
    if isinstance(values, BaseModel):
        if not isinstance(values, cls):
            raise ConfigError(f"model config for {kind!r} must be a {cls.__name__}, "
                              f"got {type(values).__name__}")
        return values
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(f"model.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid {kind} model config: {problems}") from None


def build_model(kind: str, model_config_: BaseModel | dict[str, Any] | None, image_size: int, channels: int,
                num_classes: int | None = None) -> nn.Module:
    """A fresh, randomly initialised model of `kind` for (channels, image_size, image_size) inputs in [-1, 1].

    `num_classes` is required for the CNN and ignored otherwise.
    """
    cfg = model_config(kind, model_config_)
    if channels < 1:
        raise ConfigError(f"channels must be >= 1, got {channels}")
    if kind == "vae":
        return VAE(cfg, image_size, channels)  # type: ignore[arg-type]
    if kind == "dae":
        from embedx.models.dae import DiffusionAutoencoder  # diffusers: imported only when a DAE is built

        return DiffusionAutoencoder(cfg, image_size, channels)  # type: ignore[arg-type]
    if num_classes is None:
        raise ConfigError("the CNN needs num_classes (the number of classes of the label attribute)")
    return CNN(cfg, image_size, channels, num_classes)  # type: ignore[arg-type]
