"""Convolutional VAE with an optional Hessian penalty on its decoder (the poster's VAE).

Loss per image, averaged over the batch (the convention of pythae's "mse" VAE):
    recon = Σ_pixels (x − x̂)²,  kl = Σ_latent KL(q(z|x) ‖ N(0, I)),  loss = recon + β·kl + λ·HP(decoder, z).
Summing over pixels keeps β meaningful across image sizes. The Hessian penalty (λ = `hessian_weight`; the
poster used 5e-6 on GNC and 5e-7 on CheXpert) is evaluated on the decoder G at the same reparameterised
sample z used for the reconstruction, detached: it regularises the generator, and the encoder is not pushed
towards latents where the generator happens to be flat. The decoder has no dropout and only GroupNorm
(per-sample, identical in train and eval mode), so G is deterministic, which the finite differences require.

Depth follows the image size: strided 4x4 convolutions halve the side until it is at most 8 px (4 px for
powers of two), widths double from `base_channels` up to `max_channels`. At 64 px with defaults:
32-64-128-256, z 128, about 3 M parameters.
"""

from __future__ import annotations

import itertools
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from embedx.models._layers import group_count, halvings_to, randn_like_on
from embedx.models._layers import item as _item
from embedx.models.hessian import hessian_penalty


class VAEConfig(BaseModel):
    """VAE hyper-parameters. The optimiser's settings live in the training config (poster: lr 5e-3 GNC,
    2.5e-3 CheXpert; batch 64 / 128)."""

    model_config = ConfigDict(extra="forbid")

    latent_dim: int = Field(128, ge=1, description="size of z (the embedding)")
    base_channels: int = Field(32, ge=4, description="width of the first conv layer; doubles per level")
    max_channels: int = Field(256, ge=4, description="cap on the width of deeper levels")
    beta: float = Field(1.0, ge=0.0, description="weight of the KL term (beta-VAE)")
    hessian_weight: float = Field(
        0.0, ge=0.0, description="weight of the Hessian penalty on the decoder; 0 turns it off "
        "(poster: 5e-6 GNC, 5e-7 CheXpert)")
    hessian_k: int = Field(2, ge=2, description="Rademacher directions per step")
    hessian_epsilon: float = Field(0.1, gt=0.0, description="finite-difference step")
    hessian_reduction: Literal["max", "mean"] = "max"


class _Encoder(nn.Module):
    def __init__(self, channels: int, widths: list[int], final: int, latent_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = channels
        for w in widths:
            layers += [nn.Conv2d(c_in, w, 4, stride=2, padding=1), nn.GroupNorm(group_count([w], 8), w),
                       nn.SiLU()]
            c_in = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in * final * final, 2 * latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.head(self.features(x).flatten(1)).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)


class _Decoder(nn.Module):
    def __init__(self, channels: int, widths: list[int], final: int, latent_dim: int) -> None:
        super().__init__()
        rev = widths[::-1]
        self.final = final
        self.top = rev[0]
        self.fc = nn.Linear(latent_dim, rev[0] * final * final)
        layers: list[nn.Module] = [nn.SiLU()]
        for c_in, c_out in itertools.pairwise(rev):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1),
                       nn.GroupNorm(group_count([c_out], 8), c_out), nn.SiLU()]
        layers.append(nn.ConvTranspose2d(rev[-1], channels, 4, stride=2, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        h = self.fc(z).view(z.shape[0], self.top, self.final, self.final)
        return self.body(h)


class VAE(nn.Module):
    """Gaussian VAE on C-channel images in [-1, 1]. `embed` returns the posterior mean."""

    kind = "vae"

    def __init__(self, config: VAEConfig, image_size: int, channels: int = 1) -> None:
        super().__init__()
        self.config = config
        self.image_size = image_size
        self.channels = channels
        smallest = 4 if image_size & (image_size - 1) == 0 else 8
        depth = halvings_to(image_size, smallest, what="VAE")
        widths = [min(config.base_channels * 2**i, config.max_channels) for i in range(depth)]
        final = image_size // 2**depth
        self.encoder = _Encoder(channels, widths, final, config.latent_dim)
        self.decoder = _Decoder(channels, widths, final, config.latent_dim)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior parameters (mu, logvar), each (B, latent_dim)."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """The generator G(z): deterministic, (B, C, S, S), unbounded (trained towards [-1, 1])."""
        return self.decoder(z)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(reconstruction, mu, logvar, z) with one reparameterised sample z."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar, z

    def training_loss(self, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        x = batch["image"]
        recon, mu, logvar, z = self(x)
        rec = F.mse_loss(recon.float(), x.float(), reduction="none").flatten(1).sum(1).mean()
        kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).float().sum(1).mean()
        loss = rec + self.config.beta * kl
        metrics = {"recon": _item(rec), "kl": _item(kl), "mse": _item(rec) / x[0].numel()}
        if self.config.hessian_weight > 0:
            # float32 even under bf16/fp16 autocast: the second difference divides a cancellation by
            # ε² = 0.01, which in bf16 (3 significant digits) is noise
            with torch.autocast(device_type=x.device.type, enabled=False):
                hp = hessian_penalty(self.decode, z.detach().float(), k=self.config.hessian_k,
                                     epsilon=self.config.hessian_epsilon,
                                     reduction=self.config.hessian_reduction)
            loss = loss + self.config.hessian_weight * hp.float()
            metrics["hessian"] = _item(hp)
        metrics["loss"] = _item(loss)
        return loss, metrics

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        return self.encode(images)[0]

    @torch.no_grad()
    def reconstruct(self, images: Tensor) -> Tensor:
        """Decoded posterior mean, clamped to [-1, 1]."""
        return self.decode(self.encode(images)[0]).clamp(-1, 1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n images decoded from z ~ N(0, I), the noise drawn on `generator`."""
        z = randn_like_on((n, self.config.latent_dim), next(self.parameters()), generator)
        return self.decode(z).clamp(-1, 1)

    @torch.no_grad()
    def eval_images(self, images: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """Rows of the eval grid, each (N, C, S, S) in [-1, 1]: inputs, reconstructions, prior samples."""
        return {"input": images.clamp(-1, 1), "reconstruction": self.reconstruct(images),
                "samples": self.sample(images.shape[0], generator)}
