"""The three models (VAE with Hessian penalty, diffusion autoencoder, site CNN) and their builder.

Every model is an `nn.Module` with `kind`, `training_loss(batch) -> (loss, metrics)` (metrics as detached
0-d tensors left on the device, read by the loop once per log row),
`embed(images) -> (B, D)` and `eval_images(images, generator) -> {name: (N, C, S, S) in [-1, 1]}`;
no optimiser, I/O or logging here.
"""

from embedx._lazy import lazy_getattr
from embedx.models.cnn import CNN, CNNConfig
from embedx.models.dae_config import DAEConfig
from embedx.models.hessian import hessian_penalty
from embedx.models.registry import MODEL_CONFIGS, RECOMMENDED_TRAINING, build_model, model_config
from embedx.models.vae import VAE, VAEConfig

__all__ = [
    "CNN",
    "MODEL_CONFIGS",
    "RECOMMENDED_TRAINING",
    "VAE",
    "CNNConfig",
    "DAEConfig",
    "DiffusionAutoencoder",
    "VAEConfig",
    "build_model",
    "hessian_penalty",
    "model_config",
]

# the DAE module imports diffusers (seconds): only when it is used
__getattr__ = lazy_getattr(__name__, {"DiffusionAutoencoder": "embedx.models.dae"})
