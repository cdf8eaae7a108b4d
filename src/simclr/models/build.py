"""Build the encoder + projection head from a :class:`~simclr.config.ModelConfig`."""

from __future__ import annotations

from simclr.config import ModelConfig
from simclr.models import create_encoder
from simclr.models.heads import ProjectionHead, SimCLRModel


def resolve_cifar_stem(cfg: ModelConfig, image_size: int) -> bool:
    """Whether to use the CIFAR stem (3x3 stride 1, no max-pool; v1 appendix B.9): ``model.cifar_stem``, or
    when it is None, views of at most ``model.cifar_stem_max_side`` px (32 by default: the official rule
    ``image_size <= 32``, SPEC-DETAILS 1.5; runs saved before that key was added used 64)."""
    return cfg.cifar_stem if cfg.cifar_stem is not None else image_size <= cfg.cifar_stem_max_side


def build_model(cfg: ModelConfig, image_size: int) -> SimCLRModel:
    """Encoder f and projection head g of section 2 of the v1 paper, sized for ``image_size`` views."""
    encoder = create_encoder(
        cfg.arch,
        width=cfg.width_multiplier,
        sk_ratio=cfg.sk_ratio,
        cifar_stem=resolve_cifar_stem(cfg, image_size),
        first_block_projection=cfg.first_block_projection,
    )
    head = ProjectionHead(
        encoder.out_dim,
        hidden_dim=cfg.head_hidden_dim or encoder.out_dim,
        out_dim=cfg.projection_dim,
        num_layers=cfg.head_layers,
    )
    return SimCLRModel(encoder, head)
