"""Build the encoder + projection head from a :class:`~simclr.config.ModelConfig`."""

from __future__ import annotations

from simclr.config import ModelConfig
from simclr.models import create_encoder
from simclr.models.heads import ProjectionHead, SimCLRModel


def resolve_cifar_stem(cfg: ModelConfig, image_size: int) -> bool:
    """The CIFAR stem (3x3 stride 1, no max-pool; v1 appendix B.9) is used for images of 64 px or less."""
    return cfg.cifar_stem if cfg.cifar_stem is not None else image_size <= 64


def build_model(cfg: ModelConfig, image_size: int) -> SimCLRModel:
    """Encoder f and projection head g of section 2 of the v1 paper, sized for ``image_size`` views."""
    encoder = create_encoder(
        cfg.arch,
        width=cfg.width_multiplier,
        sk_ratio=cfg.sk_ratio,
        cifar_stem=resolve_cifar_stem(cfg, image_size),
    )
    head = ProjectionHead(
        encoder.out_dim,
        hidden_dim=cfg.head_hidden_dim or encoder.out_dim,
        out_dim=cfg.projection_dim,
        num_layers=cfg.head_layers,
    )
    return SimCLRModel(encoder, head)
