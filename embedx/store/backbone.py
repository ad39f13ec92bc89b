"""Pretrained image encoders from local weights (`embedx encode --backbone PATH`), nothing downloaded.

Users audit the embeddings they will actually use: a foundation model (RAD-DINO, BiomedCLIP's vision tower,
a DINOv2) or their own network. Two local forms are read:

- a Hugging Face `transformers` model folder (`config.json` + weights, and `preprocessor_config.json` when
  the model has one): loaded with `local_files_only`, so a missing file is an error, never a download;
- a TorchScript file (`.pt` / `.ts` / `.torchscript`): anything the user exported with `torch.jit.save`.

Images are read and scaled as for every embedx model (robust percentile scaling of the native image), then
the backbone's own input convention is applied on the device, batched: [-1, 1] -> [0, 1], grey -> RGB,
resize to its input size, normalise with its mean / std (ImageNet's when it declares none). The embedding
is the model's pooled output, else its [CLS] token, else the mean over tokens / the spatial average.

Like the pixel reference, the backbone is wrapped as an encoder, so `embedx encode` gives it resume,
multi-process sharding, identity checks and failure lists unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from embedx.data.preprocess import PreprocessConfig
from embedx.errors import EmbedxError
from embedx.store.encoder import Encoder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ts", ".torchscript", ".jit")
HOW_TO_GET = (
    "embedx downloads nothing. On a machine with internet, save the model to a folder, e.g. "
    "`huggingface-cli download microsoft/rad-dino --local-dir rad-dino` (or `model.save_pretrained(DIR)` "
    "and `processor.save_pretrained(DIR)`), copy that folder here and pass it to --backbone; or export "
    "your own network with `torch.jit.save(torch.jit.trace(model, example), 'model.pt')`."
)


class BackboneFeatures(nn.Module):
    """Embedx's [-1, 1] grey batch -> the backbone's input convention -> one vector per image."""

    def __init__(self, net: nn.Module, size: int, mean: tuple[float, ...], std: tuple[float, ...],
                 channels: int, hf: bool) -> None:
        super().__init__()
        self.net = net
        self.size = int(size)
        self.channels = int(channels)
        self.hf = hf
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float().mean(dim=1, keepdim=True) + 1.0) / 2.0
        x = x.expand(-1, self.channels, -1, -1)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.size)
        return (x - self.mean) / self.std

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        x = self.prepare(images)
        out = self.net(pixel_values=x) if self.hf else self.net(x)
        return pooled_vector(out)


def pooled_vector(out: Any) -> torch.Tensor:
    """One vector per image from whatever the network returns."""
    pooled = getattr(out, "pooler_output", None)
    if pooled is None and isinstance(out, dict):
        pooled = out.get("pooler_output")
    if pooled is not None:
        return pooled.flatten(1).float()
    hidden = getattr(out, "last_hidden_state", None)
    if hidden is None and isinstance(out, dict):
        hidden = out.get("last_hidden_state")
    if hidden is None:
        hidden = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(hidden, torch.Tensor):
        raise EmbedxError(f"the backbone returned {type(hidden).__name__}; expected a tensor")
    if hidden.ndim < 2:
        raise EmbedxError(f"the backbone returned a tensor of shape {tuple(hidden.shape)}; embedx needs one "
                          "vector (or feature map, or token sequence) per image, batch first")
    if hidden.ndim == 4:  # (B, C, H, W) feature map
        return hidden.float().mean(dim=(2, 3))
    if hidden.ndim == 3:  # (B, tokens, D): the [CLS] token
        return hidden[:, 0].float()
    return hidden.flatten(1).float()


@dataclass
class Backbone(Encoder):
    """Shaped like a loaded run for `embedx encode`."""

    model: BackboneFeatures
    source: Path
    form: str  # "transformers" or "torchscript"
    weights_hash: str
    preprocess: PreprocessConfig
    kind: ClassVar[str] = "backbone"

    @property
    def checkpoint_hash(self) -> str:
        return self.weights_hash

    def describe(self) -> dict[str, Any]:
        return {"what": "pretrained backbone from local weights", "form": self.form,
                "source": self.source.name, "input_size": self.model.size,
                "mean": [round(float(v), 4) for v in self.model.mean.flatten()],
                "std": [round(float(v), 4) for v in self.model.std.flatten()]}



def _hash_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for block in iter(lambda h=handle: h.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _hf_input(folder: Path, size: int | None) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """Input size, mean and std from `preprocessor_config.json` (ImageNet's and 224 px when absent)."""
    mean, std, declared = IMAGENET_MEAN, IMAGENET_STD, 224
    config_path = folder / "preprocessor_config.json"
    if config_path.is_file():
        spec = json.loads(config_path.read_text(encoding="utf-8"))
        mean = tuple(spec.get("image_mean") or mean)
        std = tuple(spec.get("image_std") or std)
        crop = spec.get("crop_size") if spec.get("do_center_crop") else None
        sizes = crop or spec.get("size") or {}
        if isinstance(sizes, dict):
            declared = int(sizes.get("height") or sizes.get("shortest_edge") or declared)
        elif isinstance(sizes, int):
            declared = sizes
    return int(size or declared), mean, std


def _scripted_features(net: nn.Module, source: Path, size: int) -> BackboneFeatures:
    """A TorchScript file says nothing about its input: try RGB, then one channel, on a trial batch."""
    errors = []
    for channels in (3, 1):
        mean = IMAGENET_MEAN if channels == 3 else (0.5,)
        std = IMAGENET_STD if channels == 3 else (0.25,)
        features = BackboneFeatures(net, size, mean, std, channels, hf=False)
        try:
            with torch.no_grad():
                vector = features.embed(torch.zeros(2, 1, size, size))
        except (RuntimeError, IndexError, ValueError) as err:
            errors.append(f"{channels} channel(s): {str(err).splitlines()[0]}")
            continue
        if vector.shape[0] != 2:
            raise EmbedxError(f"--backbone {source}: a batch of 2 images gave output of shape "
                              f"{tuple(vector.shape)}; the first dimension must be the batch")
        return features
    raise EmbedxError(f"--backbone {source}: a trial batch at {size} x {size} px failed "
                      f"({'; '.join(errors)}); give the input size it expects with --backbone-size")


def load_backbone(path: str | Path, size: int | None = None, image_size: int = 256) -> Backbone:
    """A local transformers folder or TorchScript file, ready to embed; `size` overrides its input size."""
    source = Path(path)
    if not source.exists():
        raise EmbedxError(f"--backbone {source} does not exist. {HOW_TO_GET}")
    pre = PreprocessConfig(size=image_size, channels=1, intensity="percentile")
    if source.is_dir():
        if not (source / "config.json").is_file():
            raise EmbedxError(f"--backbone {source} is a folder without config.json, so not a Hugging Face "
                              f"model folder. {HOW_TO_GET}")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from transformers import AutoModel
        except ImportError as err:
            raise EmbedxError("a Hugging Face model folder needs the `transformers` package: "
                              "pip install 'embedx[backbones]'") from err
        try:
            net = AutoModel.from_pretrained(str(source), local_files_only=True)
        except (OSError, ValueError) as err:
            raise EmbedxError(f"--backbone {source}: cannot load the model ({err}). {HOW_TO_GET}") from err
        input_size, mean, std = _hf_input(source, size)
        channels = int(getattr(net.config, "num_channels", 3) or 3)
        weights = [p for p in source.iterdir() if p.suffix in WEIGHT_SUFFIXES]
        features = BackboneFeatures(net.eval(), input_size, mean, std, channels, hf=True)
        return Backbone(features, source, "transformers", _hash_files(weights), pre)
    if source.suffix.lower() in TORCHSCRIPT_SUFFIXES:
        try:
            net = torch.jit.load(str(source), map_location="cpu")
        except RuntimeError as err:
            raise EmbedxError(f"--backbone {source}: not a TorchScript file ({err}). Export the network with "
                              "torch.jit.save; plain state dicts hold no architecture to run.") from err
        features = _scripted_features(net.eval(), source, size or 224)
        return Backbone(features, source, "torchscript", _hash_files([source]), pre)
    raise EmbedxError(f"--backbone {source}: give a Hugging Face model folder or a TorchScript file "
                      f"({', '.join(TORCHSCRIPT_SUFFIXES)}). {HOW_TO_GET}")
