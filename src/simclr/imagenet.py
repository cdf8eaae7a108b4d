"""ImageNet facts shipped as package data (``simclr/resources/``).

- ``imagenet_classes.tsv``: the 1,000 ILSVRC-2012 synset ids in the official label order (sorted wnids,
  the order of TensorFlow Datasets and of ``head_supervised`` in the SimCLR checkpoints), each with its
  WordNet lemmas. The wnids are those of the official subset lists below; the lemmas are copied from
  ``timm/data/_info/imagenet_synset_to_lemma.txt`` of timm 1.0.31 (PyPI, Apache-2.0; text from WordNet).
- ``imagenet_1percent.txt`` / ``imagenet_10percent.txt``: the official SimCLR label subsets
  (google-research/simclr ``imagenet_subsets/``; 12,811 and 128,116 train file names, SPEC-DETAILS 7.5).
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

OFFICIAL_SUBSETS = {1.0: "imagenet_1percent.txt", 10.0: "imagenet_10percent.txt"}


def resource_path(name: str) -> Path:
    """Path of a file in ``simclr/resources``."""
    return Path(str(resources.files("simclr") / "resources" / name))


@functools.cache
def _classes() -> tuple[tuple[str, str], ...]:
    rows = resource_path("imagenet_classes.tsv").read_text().splitlines()
    return tuple(tuple(r.split("\t", 1)) for r in rows if r)  # type: ignore[misc]


def imagenet_wnids() -> list[str]:
    """The 1,000 synset ids, index = label of the official checkpoints."""
    return [w for w, _ in _classes()]


def imagenet_names() -> list[str]:
    """A short readable name per class (the first WordNet lemma), index = label."""
    return [lemma.split(",")[0].strip() for _, lemma in _classes()]


def class_names(classes: list[str] | None, num_classes: int) -> list[str] | None:
    """Readable names for a classifier's classes: the lemma for ImageNet wnids, else the class names given."""
    wnids = imagenet_wnids()
    if classes is None:
        return imagenet_names() if num_classes == len(wnids) else None
    lookup = dict(zip(wnids, imagenet_names(), strict=True))
    return [lookup.get(c, c) for c in classes]


def official_subset(percent: float) -> Path | None:
    """The official list of train file names for 1 % or 10 % of the ImageNet labels, else None."""
    name = OFFICIAL_SUBSETS.get(float(percent))
    return resource_path(name) if name else None
