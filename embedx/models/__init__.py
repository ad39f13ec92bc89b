"""The three models (VAE with Hessian penalty, diffusion autoencoder, site CNN) and their builder.

Every model is an `nn.Module` with `kind`, `training_loss(batch) -> (loss, metrics)`,
`embed(images) -> (B, D)` and `eval_images(images, generator) -> {name: (N, C, S, S) in [-1, 1]}`;
no optimiser, I/O or logging here.
"""

from embedx.models.cnn import CNN, CNNConfig
from embedx.models.dae import DAEConfig, DiffusionAutoencoder
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
