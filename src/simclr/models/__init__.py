"""Encoders f(.) (ResNets by name), the projection head g(.) and the SimCLR model (v1 section 2.1)."""

from __future__ import annotations

from simclr.models.heads import ProjectionHead, SimCLRModel
from simclr.models.resnet import ResNet, create_encoder, encoder_from_spec, encoder_spec, list_encoders

__all__ = [
    "ProjectionHead",
    "ResNet",
    "SimCLRModel",
    "create_encoder",
    "encoder_from_spec",
    "encoder_spec",
    "list_encoders",
]
