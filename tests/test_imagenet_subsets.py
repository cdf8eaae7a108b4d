"""ImageNet package data and the official 1 % / 10 % label lists (simclr.imagenet, simclr.eval.subsets)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simclr.errors import SimCLRError
from simclr.eval.subsets import select_labels
from simclr.imagenet import class_names, imagenet_names, imagenet_wnids, official_subset


def read(path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def test_class_list_and_official_lists():
    wnids = imagenet_wnids()
    assert len(wnids) == 1000 and wnids == sorted(wnids) and wnids[0] == "n01440764"
    assert imagenet_names()[0] == "tench" and class_names(None, 1000)[1] == "goldfish"
    one, ten = read(official_subset(1)), read(official_subset(10))
    assert (len(one), len(ten)) == (12811, 128116) and set(one) <= set(ten)  # SPEC-DETAILS 7.5
    assert sorted({n.split("_")[0] for n in one}) == wnids
    per_class = np.bincount([wnids.index(n.split("_")[0]) for n in one])
    assert set(per_class.tolist()) == {12, 13}
    assert official_subset(5) is None


def imagenet_like(extra_per_class: int = 2) -> tuple[list[str], torch.Tensor]:
    """File names of a train folder holding the official 1 % images plus a few others per class."""
    wnids = imagenet_wnids()
    names = [f"{n.split('_')[0]}/{n}" for n in read(official_subset(1))]
    names += [f"{w}/{w}_{900000 + i}.JPEG" for w in wnids for i in range(extra_per_class)]
    labels = torch.tensor([wnids.index(n.split("/")[0]) for n in names])
    return names, labels


def test_one_percent_on_imagenet_folder_is_the_official_list():
    names, labels = imagenet_like()
    idx = select_labels(labels, "1%", seed=3, names=names)
    assert len(idx) == 12811 and sorted(names[i].split("/")[1] for i in idx) == sorted(read(official_subset(1)))
    balanced = select_labels(labels, "1%-balanced", seed=3, names=names)  # the seeded draw, by name
    assert len(balanced) == round(0.01 * len(names)) and not torch.equal(balanced, idx)


def test_missing_files_of_the_official_list_are_counted_and_named():
    names, labels = imagenet_like()
    keep = [i for i, n in enumerate(names) if not n.startswith("n01440764/")]  # drop one class
    with pytest.raises(SimCLRError, match=r"13 of the 12811 images .*\(e\.g\. n01440764_\d+\.JPEG\).*1%-balanced"):
        select_labels(labels[keep], "1%", names=[names[i] for i in keep])


def test_other_folders_keep_the_balanced_draw():
    labels = torch.arange(200) % 4
    names = [f"c{int(c)}/img{i}.png" for i, c in enumerate(labels)]
    assert torch.equal(select_labels(labels, "10%", 0, names), select_labels(labels, "10%-balanced", 0, names))
