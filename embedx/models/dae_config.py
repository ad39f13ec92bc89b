"""The diffusion autoencoder's hyper-parameters, apart from the model.

Kept out of `embedx.models.dae` so that reading or validating a training config does not import diffusers
(about 5 s on a 2-core machine, paid by every `embedx train vae`, `encode` and `report` otherwise).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DAEConfig(BaseModel):
    """Diffusion-autoencoder hyper-parameters.

    The defaults are a CPU-sized demo net (4.9 M parameters at 32 px, 5.4 M at 64 px). DiffAE's own nets,
    for a poster-scale run on GPUs: 128 px `unet_channels=(128, 128, 256, 384, 512)`, `layers_per_block=2`,
    `attention=True`; 256 px adds a level. Optimiser settings live in the training config (poster: lr 1e-3
    GNC, 5e-4 CheXpert; DiffAE: 1e-4, EMA 0.9999, grad clip 1).
    """

    model_config = ConfigDict(extra="forbid")

    latent_dim: int = Field(512, ge=1, description="size of z_sem (the embedding)")
    unet_channels: tuple[int, ...] = Field((32, 64, 128), min_length=2, description="UNet level widths")
    layers_per_block: int = Field(1, ge=1, description="ResNet blocks per UNet level")
    attention: bool = Field(False, description="self-attention at the lowest UNet level and the mid block")
    encoder_channels: tuple[int, ...] | None = Field(
        None, description="semantic-encoder level widths (the last repeats down to 4 px); "
        "default: unet_channels")
    norm_num_groups: int | None = Field(None, ge=1, description="GroupNorm groups; default: largest <= 32 "
                                        "that divides every width")
    encoder_pool: Literal["flatten", "mean"] = Field(
        "flatten", description="how the encoder's 4 px map becomes a vector: 'flatten' keeps where things "
        "are (a linear map of the whole map), 'mean' is DiffAE's global average pool (translation invariant; "
        "on 16 px blobs it gave nearly the same z_sem for every image)")
    conditioning: Literal["adagn", "time_embedding"] = Field(
        "adagn", description="'adagn': DiffAE's per-block multiplicative z-scale of the normalised features; "
        "'time_embedding': a projection of z_sem added to the time embedding (diffusers' identity class "
        "embedding)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    num_train_timesteps: int = Field(1000, ge=10)
    beta_start: float = Field(1e-4, gt=0.0)
    beta_end: float = Field(0.02, gt=0.0, lt=1.0)
    ddim_steps: int = Field(20, ge=1, description="default DDIM steps for decoding and inversion")

    @model_validator(mode="after")
    def _check(self) -> DAEConfig:
        if self.beta_end <= self.beta_start:
            raise ValueError("beta_end must be larger than beta_start")
        if self.ddim_steps > self.num_train_timesteps:
            raise ValueError("ddim_steps cannot exceed num_train_timesteps")
        return self
