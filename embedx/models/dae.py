"""Diffusion autoencoder (Preechakul et al., CVPR 2022), built on diffusers.

Two parts, trained jointly by one loss:
- a **semantic encoder** (the first half of a UNet: diffusers ResNet blocks, downsampled to 4 px, then a
  linear map of the flattened map — DiffAE average-pools instead, `encoder_pool="mean"`, which on 16 px blobs
  gave almost the same code wherever the blob was) turns an image into a 512-d, global code `z_sem`. It sees
  the clean image only and has no time input, so `encode` is deterministic;
- a **conditional denoiser**, diffusers' `UNet2DModel` predicting the noise ε of x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε.
  `z_sem` conditions every ResNet block. Default (`conditioning="adagn"`), DiffAE's AdaGN: each block's second
  GroupNorm is followed by a per-channel scale (1 + Linear(SiLU(z_sem))), and the time embedding scales and
  shifts as usual (`resnet_time_scale_shift="scale_shift"`), giving (GN(h)·(1 + z_s))·(1 + t_s) + t_b.
  Alternative (`"time_embedding"`): a projection of z_sem is added to the time embedding (diffusers'
  `class_embed_type="identity"`). On 16 px blobs the AdaGN code was used after ~200 Adam steps, the other
  not at all, so AdaGN is the default.

The objective is DiffAE's: plain ε-prediction MSE, T = 1000, linear β, uniform t; the encoder learns only
through it (no KL, no reconstruction term). All noise arithmetic lives in diffusers schedulers built from one
config: `DDPMScheduler.add_noise` for training, `DDIMScheduler` (η = 0) for decoding and
`DDIMInverseScheduler` for the stochastic code x_T.

Clipping the predicted x_0 to [-1, 1] (`clip_sample`) is right for *generating* from fresh noise (it keeps an
imperfect model's samples from diverging) and wrong for the *round trip*: clipping is not invertible, and a
briefly trained model predicts x_0 outside [-1, 1] at high t, so clipped inversion loses the image (measured:
round-trip MSE 0.6–0.9 clipped vs 2e-4 unclipped at 20 steps, same model). So `encode_stochastic`,
`reconstruct` and `interpolate` run unclipped; `decode` clips by default (for fresh noise) and takes
`clip=False` to invert `encode_stochastic`.

`z_mean` / `z_std` are persistent buffers (saved in the state dict) with the statistics of z_sem over the
training set, set by `update_latent_stats`; DiffAE's maintainers call them crucial for anything built on the
normalised code. `embed` returns the *unnormalised* z_sem: the probes standardise per feature themselves, and
the decoder takes raw z_sem.

Known failure on new domains (DiffAE issue #54): the denoiser can learn to ignore z_sem. `uses_code_gap`
measures it: the denoising loss with z_sem shuffled across the batch minus the loss with the right z_sem, same
noise and t.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers import DDIMInverseScheduler, DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.models.downsampling import Downsample2D
from diffusers.models.resnet import ResnetBlock2D
from torch import Tensor, nn

from embedx.errors import ConfigError
from embedx.models._layers import group_count, halvings_to, randn_like_on
from embedx.models.dae_config import DAEConfig


class SemanticEncoder(nn.Module):
    """First half of a UNet without time input: ResNet blocks and downsamplings to <= 4 px (<= 8 px for sizes
    such as 224), then GroupNorm, SiLU and a linear map of the flattened (or average-pooled) map to z_sem."""

    def __init__(self, channels: int, image_size: int, widths: Sequence[int], latent_dim: int,
                 layers_per_block: int, groups: int, pool: str = "flatten") -> None:
        super().__init__()
        n_down = halvings_to(image_size, 4, what="DAE semantic encoder")
        level_widths = [widths[min(i, len(widths) - 1)] for i in range(n_down + 1)]
        self.conv_in = nn.Conv2d(channels, level_widths[0], 3, padding=1)
        blocks: list[nn.Module] = []
        c_in = level_widths[0]
        for i, w in enumerate(level_widths):
            for _ in range(layers_per_block):
                blocks.append(ResnetBlock2D(in_channels=c_in, out_channels=w, temb_channels=None,
                                            groups=groups))
                c_in = w
            if i < n_down:
                blocks.append(Downsample2D(c_in, use_conv=True, out_channels=c_in, padding=1))
        self.blocks = nn.ModuleList(blocks)
        final = image_size // 2**n_down
        if pool == "mean":
            head: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, latent_dim)]
        else:
            head = [nn.Flatten(), nn.Linear(c_in * final * final, latent_dim)]
        self.out = nn.Sequential(nn.GroupNorm(groups, c_in), nn.SiLU(), *head)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for block in self.blocks:
            h = block(h, None) if isinstance(block, ResnetBlock2D) else block(h)
        return self.out(h)


class _CodeSlot:
    """The per-block z-scales of the forward pass in progress, shared by the blocks' norms (not a module)."""

    def __init__(self) -> None:
        self.z_sem: Tensor | None = None


class ZScaledGroupNorm(nn.GroupNorm):
    """GroupNorm followed by DiffAE's semantic scale: GN(h)·(1 + Linear(SiLU(z_sem))), per channel.

    It replaces `norm2` of every diffusers ResNet block, so the block computes
    (GN(h)·(1 + z_s))·(1 + t_s) + t_b — DiffAE's AdaGN, except that DiffAE also scales the time shift t_b.
    The code comes from a slot that `DiffusionAutoencoder.predict_noise` fills for the duration of one call.
    """

    def __init__(self, norm: nn.GroupNorm, latent_dim: int, slot: _CodeSlot) -> None:
        super().__init__(norm.num_groups, norm.num_channels, eps=norm.eps, affine=norm.affine)
        self.load_state_dict(norm.state_dict())
        self.z_proj = nn.Sequential(nn.SiLU(), nn.Linear(latent_dim, norm.num_channels))
        self._slot = slot

    def forward(self, h: Tensor) -> Tensor:
        h = super().forward(h)
        z = self._slot.z_sem
        if z is None:
            raise RuntimeError("ZScaledGroupNorm called outside DiffusionAutoencoder.predict_noise")
        return h * (1 + self.z_proj(z).to(h.dtype)[:, :, None, None])


class DiffusionAutoencoder(nn.Module):
    """Semantic encoder + z_sem-conditioned diffusers UNet. Images in [-1, 1], (B, C, S, S)."""

    kind = "dae"

    def __init__(self, config: DAEConfig, image_size: int, channels: int = 1) -> None:
        super().__init__()
        self.config = config
        self.image_size = image_size
        self.channels = channels
        unet_w = list(config.unet_channels)
        enc_w = list(config.encoder_channels or config.unet_channels)
        groups = config.norm_num_groups or group_count(unet_w + enc_w)
        bad = [w for w in unet_w + enc_w if w % groups]
        if bad:
            raise ConfigError(f"DAE: norm_num_groups={groups} does not divide the widths {bad}")
        levels = len(unet_w)
        if image_size % 2 ** (levels - 1):
            raise ConfigError(f"DAE: image size {image_size} px is not divisible by 2^{levels - 1}, "
                              f"which {levels} UNet levels need")
        self.encoder = SemanticEncoder(channels, image_size, enc_w, config.latent_dim,
                                       config.layers_per_block, groups, config.encoder_pool)
        by_time = config.conditioning == "time_embedding"
        self.cond_proj = nn.Linear(config.latent_dim, 4 * unet_w[0]) if by_time else None
        down = ["DownBlock2D"] * levels
        up = ["UpBlock2D"] * levels
        if config.attention:
            down[-1] = "AttnDownBlock2D"
            up[0] = "AttnUpBlock2D"
        self.unet = UNet2DModel(
            sample_size=image_size, in_channels=channels, out_channels=channels,
            block_out_channels=tuple(unet_w), layers_per_block=config.layers_per_block,
            down_block_types=tuple(down), up_block_types=tuple(up), norm_num_groups=groups,
            add_attention=config.attention, attention_head_dim=min(64, unet_w[-1]), dropout=config.dropout,
            class_embed_type="identity" if by_time else None, resnet_time_scale_shift="scale_shift",
        )
        self._slot = _CodeSlot()
        if not by_time:
            for block in self.unet.modules():
                if isinstance(block, ResnetBlock2D):
                    block.norm2 = ZScaledGroupNorm(block.norm2, config.latent_dim, self._slot)
        self.train_scheduler = DDPMScheduler(
            num_train_timesteps=config.num_train_timesteps, beta_schedule="linear",
            beta_start=config.beta_start, beta_end=config.beta_end, prediction_type="epsilon",
            clip_sample=True, clip_sample_range=1.0,
        )
        self.register_buffer("z_mean", torch.zeros(config.latent_dim))
        self.register_buffer("z_std", torch.ones(config.latent_dim))

    # --- the two networks -------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """z_sem, (B, latent_dim). Deterministic (no noise, no batch statistics)."""
        return self.encoder(x)

    def predict_noise(self, x_t: Tensor, t: Tensor | int, z_sem: Tensor) -> Tensor:
        """ε̂(x_t, t, z_sem). `t` is a (B,) tensor of training timesteps or one timestep for the batch."""
        if self.cond_proj is not None:
            return self.unet(x_t, t, class_labels=self.cond_proj(z_sem)).sample
        self._slot.z_sem = z_sem
        try:
            return self.unet(x_t, t).sample
        finally:
            self._slot.z_sem = None

    # --- training -----------------------------------------------------------------------------------
    def _noised(self, x0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.config.num_train_timesteps, (x0.shape[0],), device=x0.device)
        return self.train_scheduler.add_noise(x0, noise, t), noise, t

    def training_loss(self, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        x0 = batch["image"]
        z = self.encode(x0)
        x_t, noise, t = self._noised(x0)
        loss = F.mse_loss(self.predict_noise(x_t, t, z).float(), noise.float())
        value = loss.detach()  # on the device: see _layers.item
        return loss, {"loss": value, "eps_mse": value}

    @torch.no_grad()
    def code_usage(self, batch: dict, generator: torch.Generator | None = None) -> dict[str, float]:
        """Denoising loss with the right z_sem and with z_sem shuffled across the batch, same x_t and t.

        A gap near zero means the denoiser ignores the semantic code (collapse). The shuffle is a cyclic
        shift, so every image gets another image's code; needs at least 2 images.
        """
        x0 = batch["image"]
        if x0.shape[0] < 2:
            raise ValueError("code_usage needs a batch of at least 2 images")
        z = self.encode(x0)
        noise = randn_like_on(tuple(x0.shape), x0, generator)
        t = torch.randint(0, self.config.num_train_timesteps, (x0.shape[0],), generator=generator,
                          device=generator.device if generator is not None else x0.device).to(x0.device)
        x_t = self.train_scheduler.add_noise(x0, noise, t)
        right = F.mse_loss(self.predict_noise(x_t, t, z).float(), noise.float())
        shuffled = F.mse_loss(self.predict_noise(x_t, t, z.roll(1, dims=0)).float(), noise.float())
        return {"loss_right_code": float(right), "loss_shuffled_code": float(shuffled),
                "code_gap": float(shuffled - right)}

    def uses_code_gap(self, batch: dict, generator: torch.Generator | None = None) -> float:
        """`code_usage(...)["code_gap"]`: shuffled-code minus right-code loss (> 0 when z_sem is used)."""
        return self.code_usage(batch, generator)["code_gap"]

    # --- latent statistics -----------------------------------------------------------------------
    @torch.no_grad()
    def update_latent_stats(self, z: Tensor) -> None:
        """Set z_mean / z_std from z_sem of (a sample of) the training set, (N, latent_dim), N >= 2."""
        if z.ndim != 2 or z.shape[1] != self.config.latent_dim or z.shape[0] < 2:
            raise ValueError(f"update_latent_stats needs (N >= 2, {self.config.latent_dim}), "
                             f"got {tuple(z.shape)}")
        z = z.to(self.z_mean.device, torch.float32)
        self.z_mean.copy_(z.mean(0))
        self.z_std.copy_(z.std(0).clamp_min(1e-8))

    def normalize(self, z: Tensor) -> Tensor:
        return (z - self.z_mean) / self.z_std

    def denormalize(self, z: Tensor) -> Tensor:
        return z * self.z_std + self.z_mean

    # --- DDIM -----------------------------------------------------------------------------------------
    def _ddim(self, clip: bool) -> DDIMScheduler:
        return DDIMScheduler.from_config(self.train_scheduler.config, set_alpha_to_one=True, clip_sample=clip)

    def _ddim_inverse(self, clip: bool) -> DDIMInverseScheduler:
        return DDIMInverseScheduler.from_config(self.train_scheduler.config, set_alpha_to_one=True,
                                                clip_sample=clip)

    @torch.no_grad()
    def encode_stochastic(self, x: Tensor, z_sem: Tensor | None = None, steps: int | None = None,
                          clip: bool = False) -> Tensor:
        """x_T by deterministic DDIM inversion (η = 0) conditioned on z_sem, so that `decode(z_sem, x_T,
        clip=False)` ≈ x with the same number of steps.

        Costs `steps` UNet calls per image (DiffAE encodes with 250 and decodes with 20). The error of the
        round trip shrinks with the steps (about as 1/steps² for a smooth ε̂).
        """
        z_sem = self.encode(x) if z_sem is None else z_sem
        sched = self._ddim_inverse(clip)
        sched.set_timesteps(steps or self.config.ddim_steps)
        sample = x
        for t in sched.timesteps:
            eps = self.predict_noise(sample, t.to(x.device), z_sem)
            sample = sched.step(eps, int(t), sample).prev_sample
        return sample

    @torch.no_grad()
    def decode(self, z_sem: Tensor, x_T: Tensor, steps: int | None = None, clip: bool = True) -> Tensor:
        """Deterministic DDIM sampling from x_T conditioned on z_sem; (B, C, S, S) clamped to [-1, 1].

        `clip` clips the predicted x_0 at every step: keep it for fresh noise, turn it off to invert
        `encode_stochastic` (see the module docstring).
        """
        sched = self._ddim(clip)
        sched.set_timesteps(steps or self.config.ddim_steps)
        sample = x_T
        for t in sched.timesteps:
            eps = self.predict_noise(sample, t.to(x_T.device), z_sem)
            sample = sched.step(eps, int(t), sample, eta=0.0).prev_sample
        return sample.clamp(-1, 1)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, steps: int | None = None) -> Tensor:
        """decode(encode(x), encode_stochastic(x)), unclipped: the DiffAE round trip."""
        z = self.encode(x)
        return self.decode(z, self.encode_stochastic(x, z, steps), steps, clip=False)

    @torch.no_grad()
    def interpolate(self, x1: Tensor, x2: Tensor, alphas: Sequence[float] | Tensor,
                    steps: int | None = None) -> Tensor:
        """Images along the path from x1 to x2: lerp of z_sem, slerp of x_T (which is ~Gaussian).

        x1, x2: one image each, (C, S, S) or (1, C, S, S). Returns (len(alphas), C, S, S); alphas 0 and 1 give
        the round-trip reconstructions of x1 and x2.
        """
        x = torch.cat([x1.reshape(1, *x1.shape[-3:]), x2.reshape(1, *x2.shape[-3:])])
        z = self.encode(x)
        xT = self.encode_stochastic(x, z, steps)
        a = torch.as_tensor(alphas, dtype=x.dtype, device=x.device).reshape(-1, 1)
        z_path = torch.lerp(z[:1], z[1:], a)
        xT_path = slerp(xT[0], xT[1], a.flatten())
        return self.decode(z_path, xT_path, steps, clip=False)

    # --- contract -------------------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        """Unnormalised z_sem (see the module docstring)."""
        return self.encode(images)

    @torch.no_grad()
    def eval_images(self, images: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """Rows of the eval grid, each (N, C, S, S) in [-1, 1]: inputs, reconstructions from the inverted x_T,
        and decodings of the same z_sem from fresh noise (what z_sem alone keeps)."""
        z = self.encode(images)
        x_T = self.encode_stochastic(images, z)
        fresh = randn_like_on(tuple(images.shape), images, generator)
        return {"input": images.clamp(-1, 1), "reconstruction": self.decode(z, x_T, clip=False),
                "decoded_fresh_noise": self.decode(z, fresh, clip=True)}


def slerp(a: Tensor, b: Tensor, alphas: Tensor) -> Tensor:
    """Spherical interpolation between two tensors of one shape; returns (len(alphas), *a.shape)."""
    af, bf = a.flatten().double(), b.flatten().double()
    cos = torch.dot(af, bf) / (af.norm() * bf.norm()).clamp_min(1e-12)
    theta = torch.arccos(cos.clamp(-1.0, 1.0))
    al = alphas.double().reshape(-1, 1)
    if float(theta) < 1e-6:
        out = (1 - al) * af + al * bf
    else:
        out = (torch.sin((1 - al) * theta) * af + torch.sin(al * theta) * bf) / math.sin(float(theta))
    return out.to(a.dtype).reshape(-1, *a.shape)
