"""Denoisers behind one signature: ``model(x, t, y=None) -> prediction`` with x's shape.

Image models are diffusers modules (UNet2DModel as in ADM/DDPM, DiTTransformer2DModel as in
DiT, Peebles & Xie 2023); 2-D points use a small residual MLP. Class-conditional models embed
``num_classes + 1`` labels: index ``num_classes`` is the null label of classifier-free guidance
(Ho & Salimans 2022). Label dropout is the trainer's job, never the model's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers import DiTTransformer2DModel, ModelMixin, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

from antdiff.errors import AntError


class PointMLP(ModelMixin, ConfigMixin):
    """Residual MLP denoiser for flat inputs (2-D points) with a sinusoidal timestep embedding.

    h <- h + W_i silu(LayerNorm(h) + e(t, y)),  e = MLP(sinusoid(t)) + Embed(y).
    A diffusers ModelMixin, so ``save_pretrained``/``from_pretrained`` work.
    """

    @register_to_config
    def __init__(self, in_dim: int = 2, hidden: int = 128, depth: int = 4, num_classes: int = 0):
        super().__init__()
        self.time_proj = Timesteps(hidden, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_emb = TimestepEmbedding(hidden, hidden)
        self.class_emb = nn.Embedding(num_classes + 1, hidden) if num_classes > 0 else None
        self.inp = nn.Linear(in_dim, hidden)
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(depth))
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, in_dim))

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        e = self.time_emb(self.time_proj(t).to(x.dtype))
        if self.class_emb is not None:  # y=None -> the null label num_classes
            y = torch.full_like(t, self.config.num_classes) if y is None else y
            e = e + self.class_emb(y)
        h = self.inp(x.flatten(1))
        for norm, block in zip(self.norms, self.blocks, strict=True):
            h = h + block(nn.functional.silu(norm(h) + e))
        return self.out(h).view_as(x)


class Denoiser(nn.Module):
    """The one interface the trainer sees; ``.net`` is the diffusers model (for export)."""

    def __init__(self, net: nn.Module, spec: dict[str, Any]):
        super().__init__()
        self.net = net
        self.spec = spec  # build_model(**spec) rebuilds an identical architecture

    @property
    def num_classes(self) -> int:
        return int(self.spec["num_classes"])

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    @property
    def family(self) -> str:
        return _REGISTRY[self.spec["name"]][0]

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        t = _as_batch(t, x)
        if self.conditional:
            y = torch.full_like(t, self.num_classes) if y is None else y.to(x.device).long()
        elif y is not None:
            raise ValueError("this model is unconditional (num_classes=0); pass y=None")
        if self.family == "unet":
            return self.net(x, t, class_labels=y).sample
        if self.family == "dit":
            y = torch.zeros_like(t) if y is None else y
            return self.net(x, timestep=t, class_labels=y).sample
        return self.net(x, t, y)


def _as_batch(t: torch.Tensor | int, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, device=x.device).long()
    return t.expand(x.shape[0]) if t.ndim == 0 else t


# ----------------------------------------------------------------------------- builders
def _unet(channels: int, size: int, num_classes: int, **cfg: Any) -> UNet2DModel:
    levels = len(cfg["block_out_channels"])
    if size < 1 or size % 2 ** (levels - 1):
        raise AntError(f"image size {size} must be a positive multiple of {2 ** (levels - 1)}")
    base = {"layers_per_block": 1, "norm_num_groups": 8, "attention_head_dim": 8}
    return UNet2DModel(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        num_class_embeds=num_classes + 1 if num_classes > 0 else None,
        **{**base, **cfg},
    )


def dit_patch_size(size: int) -> int:
    """Patch 2 up to 16 px (<= 64 tokens), 4 above (28 px -> 49 tokens, 32 px -> 64)."""
    for p in (2, 4) if size <= 16 else (4, 2, 8):
        if size % p == 0:
            return p
    return 1


def _dit(channels: int, size: int, num_classes: int, **cfg: Any) -> DiTTransformer2DModel:
    if size < 1:
        raise AntError(f"DiT needs an image size, got {size}")
    cfg.setdefault("patch_size", dit_patch_size(size))
    if size % cfg["patch_size"]:
        raise AntError(f"DiT patch size {cfg['patch_size']} does not divide image size {size}")
    # diffusers' label table always has num_embeds_ada_norm + 1 rows (its last row = null label).
    net = DiTTransformer2DModel(
        in_channels=channels,
        out_channels=channels,
        sample_size=size,
        num_embeds_ada_norm=max(num_classes, 1),
        **cfg,
    )
    return disable_label_dropout(net)


def disable_label_dropout(net: DiTTransformer2DModel) -> DiTTransformer2DModel:
    """Turn off diffusers' built-in DiT label dropout (p=0.1 in train mode): the trainer owns it."""
    for block in net.transformer_blocks:
        block.norm1.emb.class_embedder.dropout_prob = 0.0
    return net


def _mlp(channels: int, size: int, num_classes: int, **cfg: Any) -> PointMLP:
    in_dim = channels * size * size if size > 0 else channels
    for key, low in (("hidden", 1), ("depth", 0)):  # 0 hidden units trained on silently
        value = cfg.get(key, low)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{key} must be an integer >= {low}, got {value!r}")
    return PointMLP(in_dim=in_dim, num_classes=num_classes, **cfg)


_DOWN2, _UP2 = ("DownBlock2D", "AttnDownBlock2D"), ("AttnUpBlock2D", "UpBlock2D")
_DOWN3 = ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D")
_UP3 = ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D")
_DOWN3B = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
_UP3B = ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")

# name -> (family, builder, default config, description)
_REGISTRY: dict[str, tuple[str, Callable[..., nn.Module], dict[str, Any], str]] = {
    "unet-tiny": (
        "unet",
        _unet,
        {"block_out_channels": (32, 64), "down_block_types": _DOWN2, "up_block_types": _UP2},
        "UNet2DModel ~0.7M, 8x8 digits, attention at 4x4",
    ),
    "unet-small": (
        "unet",
        _unet,
        {"block_out_channels": (32, 64, 64), "down_block_types": _DOWN3, "up_block_types": _UP3},
        "UNet2DModel ~1.1M, 28/32 px, attention at 1/4 resolution",
    ),
    "unet-base": (
        "unet",
        _unet,
        {
            "block_out_channels": (64, 128, 256),
            "layers_per_block": 2,
            "norm_num_groups": 32,
            "attention_head_dim": 32,
            "down_block_types": _DOWN3B,
            "up_block_types": _UP3B,
        },
        "UNet2DModel ~16M (GPU), attention at 1/2 and 1/4",
    ),
    "dit-tiny": (
        "dit",
        _dit,
        {"num_layers": 4, "num_attention_heads": 4, "attention_head_dim": 32},
        "DiTTransformer2DModel d=128, depth 4 (~1.4M)",
    ),
    "dit-s": (
        "dit",
        _dit,
        {"num_layers": 12, "num_attention_heads": 6, "attention_head_dim": 64},
        "DiTTransformer2DModel DiT-S: d=384, depth 12 (~35M)",
    ),
    "mlp": ("mlp", _mlp, {"hidden": 128, "depth": 4}, "residual MLP ~0.1M for 2-D points"),
}


def list_models() -> dict[str, str]:
    """Registered model names and a one-line description of each."""
    return {name: entry[3] for name, entry in _REGISTRY.items()}


def build_model(
    name: str, *, channels: int, size: int, num_classes: int = 0, **overrides: Any
) -> Denoiser:
    """Build a named denoiser; points use ``channels=2, size=0``.

    ``overrides`` replace entries of the diffusers config (e.g. ``block_out_channels``).
    """
    if name not in _REGISTRY:
        raise AntError(f"unknown model {name!r}; choose from {', '.join(_REGISTRY)}")
    if channels < 1 or size < 0 or num_classes < 0:
        raise AntError(f"bad model shape: channels={channels}, size={size}, classes={num_classes}")
    family, builder, defaults, _ = _REGISTRY[name]
    if family != "mlp" and size == 0:
        raise AntError(f"{name} is an image model; 2-D points need the 'mlp' model")
    try:
        net = builder(channels, size, num_classes, **{**defaults, **overrides})
    except (TypeError, ValueError, RuntimeError) as exc:  # e.g. {"hidden": -5}
        raise AntError(f"cannot build {name}: {exc}".splitlines()[0]) from exc
    spec = {
        "name": name,
        "channels": channels,
        "size": size,
        "num_classes": num_classes,
        **overrides,
    }
    return Denoiser(net, spec)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP / torch.compile wrappers (any nesting), e.g. the Denoiser."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
