"""The "Name that manufacturer!" CNN (seed 000): a deliberately simple supervised classifier.

Three blocks of 3x3 conv + batch-norm + ReLU + 2x2 max-pool (32/64/128 filters), global average pooling, a
dense hidden layer and a linear head. If such a small net names the scanner, site or view from the pixels, the
cohort carries acquisition bias; it is also the supervised upper bound that the probes on unsupervised
embeddings are compared with. Trained with softmax cross-entropy over K classes (K = 2 is the seed's binary
case). The seed's optimiser, which the training config should default to for this model: Adam, lr 5e-3,
batch 32 (see `RECOMMENDED_TRAINING` in `embedx.models.registry`).

Global pooling (rather than the flatten of a 256 px map) keeps the head small at any image size and still
passes texture and noise statistics, which is what acquisition signatures mostly are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from embedx.errors import ConfigError


class CNNConfig(BaseModel):
    """CNN hyper-parameters (seed 000: filters 32/64/128; Adam lr 5e-3, batch 32 in the training config)."""

    model_config = ConfigDict(extra="forbid")

    filters: tuple[int, ...] = Field((32, 64, 128), min_length=1, description="one conv block per entry")
    hidden: int = Field(128, ge=1, description="width of the dense layer whose output `embed` returns")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before the output layer")


class CNN(nn.Module):
    """Classifier over `num_classes` classes; `forward` returns logits (B, K), `embed` the hidden features."""

    kind = "cnn"

    def __init__(self, config: CNNConfig, image_size: int, channels: int = 1, num_classes: int = 2) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"CNN: num_classes must be at least 2, got {num_classes}")
        if image_size < 2 ** len(config.filters):
            raise ConfigError(
                f"CNN: image size {image_size} px is too small for {len(config.filters)} 2x2 pooling blocks")
        self.config = config
        self.num_classes = num_classes
        blocks: list[nn.Module] = []
        c_in = channels
        for f in config.filters:
            blocks += [nn.Conv2d(c_in, f, 3, padding=1, bias=False), nn.BatchNorm2d(f), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c_in = f
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.hidden = nn.Sequential(nn.Linear(c_in, config.hidden), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(config.hidden, num_classes))

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.hidden(self.features(images)))

    def training_loss(self, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        if "label" not in batch:
            raise ConfigError("CNN training needs a label attribute to train on (the batch has no 'label')")
        labels = batch["label"].long()
        logits = self(batch["image"])
        loss = F.cross_entropy(logits.float(), labels)
        acc = (logits.argmax(1) == labels).float().mean()
        return loss, {"loss": loss.detach(), "accuracy": acc.detach()}  # on the device: see _layers.item

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        """Penultimate (hidden-layer) features, (B, hidden). Deterministic in eval mode."""
        return self.hidden(self.features(images))

    @torch.no_grad()
    def predict_proba(self, images: Tensor) -> Tensor:
        return self(images).softmax(1)

    @torch.no_grad()
    def eval_images(self, images: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """The CNN makes no images; the eval grid shows its inputs (the confusion matrix is the loop's)."""
        return {"input": images.clamp(-1, 1)}
