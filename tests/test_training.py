"""Tests of medrecon.training: folds, dataset, DiffAugment, the StyleGAN2 loop, DDP, CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medrecon.errors import MedreconInputError
from medrecon.training.augment import diff_augment, parse_policy
from medrecon.training.folds import (
    ImageFolderDataset,
    brain_folds,
    load_folds,
    make_folds,
    save_folds,
    xray_folds,
    xray_patient_id,
)

XRAY_NAMES = [
    "PNEUMONIA/person1_virus_6.jpeg", "PNEUMONIA/person1_bacteria_1.jpeg",
    "PNEUMONIA/person447_virus_921_1.jpeg", "PNEUMONIA/person447_bacteria_2.jpeg",
    "PNEUMONIA/person12_virus_30.jpeg", "PNEUMONIA/person13_bacteria_31.jpeg",
    "NORMAL/IM-0629-0001-0001.jpeg", "NORMAL/IM-0629-0001-0002.jpeg", "NORMAL/IM-0629-0001.jpeg",
    "NORMAL/IM-0115-0001.jpeg", "NORMAL/NORMAL2-IM-0629-0001.jpeg",
    "NORMAL/NORMAL2-IM-0012-0001.jpeg", "NORMAL/NORMAL2-IM-0012-0002.jpeg",
    "NORMAL/IM-0700-0001.jpeg", "PNEUMONIA/person99_virus_1.jpeg",
]


def _write_png(path: Path, value: int, size: int = 20) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size, size + 3), value, dtype=np.uint8)
    arr[: size // 2] = 255 - value
    Image.fromarray(arr, mode="L").convert("RGB").save(path)


# --------------------------------------------------------------------------------------- folds

@pytest.mark.parametrize("name, pid", [
    ("person447_virus_921_1.jpeg", "person447"),
    ("PNEUMONIA/person1_bacteria_1.jpeg", "person1"),
    ("IM-0629-0001-0002.jpeg", "IM-0629"),
    ("IM-0115-0001.jpeg", "IM-0115"),
    ("NORMAL2-IM-0012-0001.jpeg", "NORMAL2-IM-0012"),
])
def test_xray_patient_id(name, pid):
    assert xray_patient_id(name) == pid


def test_xray_patient_id_rejects_unknown_names():
    with pytest.raises(MedreconInputError, match="patient id"):
        xray_patient_id("scan_001.png")


def test_xray_folds_keep_patients_together_and_are_deterministic():
    folds = xray_folds(XRAY_NAMES, 3, seed=1)
    by_patient: dict[str, set[int]] = {}
    for f, k in zip(folds.files, folds.folds):
        by_patient.setdefault(xray_patient_id(f), set()).add(k)
    assert all(len(v) == 1 for v in by_patient.values())
    assert set(folds.folds) == {0, 1, 2}
    assert xray_folds(list(reversed(XRAY_NAMES)), 3, seed=1) == folds
    counts = np.bincount(folds.folds)
    assert counts.max() - counts.min() <= 3  # greedy balance by image count
    train, held = folds.split(0)
    assert set(train).isdisjoint(held) and len(train) + len(held) == len(XRAY_NAMES)
    assert {xray_patient_id(f) for f in train}.isdisjoint({xray_patient_id(f) for f in held})


def test_xray_folds_depend_on_seed_and_check_k():
    a, b = xray_folds(XRAY_NAMES, 3, seed=0), xray_folds(XRAY_NAMES, 3, seed=5)
    assert a.files == b.files
    with pytest.raises(MedreconInputError, match="folds"):
        xray_folds(XRAY_NAMES[:2], 5)
    with pytest.raises(MedreconInputError, match="out of range"):
        a.split(3)


def test_brain_folds_are_contiguous_index_blocks():
    names = [f"glioma/{i}.jpg" for i in range(1, 31)] + [f"pituitary/{i}.jpg" for i in range(31, 51)]
    names += [f"meningioma/{i}.jpg" for i in range(51, 101)]
    folds = brain_folds(names, 4)
    idx = [int(Path(f).stem) for f in folds.files]
    assert idx == sorted(idx)
    assert list(folds.folds) == sorted(folds.folds)  # monotone: contiguous blocks
    counts = np.bincount(folds.folds)
    assert len(counts) == 4 and counts.min() >= 20
    # Ideal cuts at 25, 50, 75: the class change 50|51 is kept as a fold boundary.
    assert folds.folds[idx.index(50)] != folds.folds[idx.index(51)]
    ranges = folds.meta["index_ranges"]
    assert ranges[0][0] == 1 and ranges[-1][1] == 100


def test_brain_folds_reject_non_numeric_names():
    with pytest.raises(MedreconInputError, match="running index"):
        brain_folds(["a/x.jpg", "a/2.jpg"], 2)


def test_make_folds_auto_save_load_roundtrip(tmp_path):
    for i, name in enumerate(XRAY_NAMES):
        _write_png(tmp_path / "xr" / name.replace(".jpeg", ".png"), 10 * i)
    folds = make_folds(tmp_path / "xr", k=3)
    assert folds.scheme == "xray"
    path = save_folds(folds, tmp_path / "folds.json")
    assert load_folds(path) == folds
    data = json.loads(path.read_text())
    assert sum(data["images_per_fold"]) == len(XRAY_NAMES)
    data["files"][folds.files[0]]["fold"] = (folds.folds[0] + 1) % 3
    path.write_text(json.dumps(data))
    with pytest.raises(MedreconInputError, match="sha256"):
        load_folds(path)


def test_make_folds_errors(tmp_path):
    with pytest.raises(MedreconInputError, match="does not exist"):
        make_folds(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedreconInputError, match="no images"):
        make_folds(tmp_path / "empty")
    _write_png(tmp_path / "odd" / "scan_a.png", 3)
    _write_png(tmp_path / "odd" / "scan_b.png", 4)
    with pytest.raises(MedreconInputError, match="scheme"):
        make_folds(tmp_path / "odd")
    assert make_folds(tmp_path / "odd", scheme="image", k=2).scheme == "image"


def test_image_folder_dataset(tmp_path):
    for i in range(3):
        _write_png(tmp_path / "c" / f"{i + 1}.jpg", 40 * i)
    ds = ImageFolderDataset(tmp_path, [f"c/{i + 1}.jpg" for i in range(3)], resolution=16)
    assert len(ds) == 3 and ds.data.dtype == torch.uint8
    x = ds[1]
    assert x.shape == (1, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert ds.batch(torch.tensor([0, 2])).shape == (2, 1, 16, 16)
    with pytest.raises(MedreconInputError, match="power of two"):
        ImageFolderDataset(tmp_path, ["c/1.jpg"], resolution=20)
    with pytest.raises(MedreconInputError, match="cannot read"):
        ImageFolderDataset(tmp_path, ["c/nope.jpg"], resolution=16)


# ------------------------------------------------------------------------------------ augment

def test_diff_augment_is_seeded_differentiable_and_leaves_global_rng():
    x = torch.linspace(-1, 1, 2 * 16 * 16).view(2, 1, 16, 16).requires_grad_(True)
    state = torch.random.get_rng_state()
    a = diff_augment(x, generator=torch.Generator().manual_seed(3))
    b = diff_augment(x, generator=torch.Generator().manual_seed(3))
    c = diff_augment(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == x.shape
    a.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_translation_shifts_and_cutout_zeroes_a_square():
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0)) + 1.0
    g = torch.Generator().manual_seed(1)
    y = diff_augment(x, policy="cutout", generator=g)
    zeros = (y == 0).flatten(1).sum(1)
    assert torch.all(zeros > 0) and torch.all(zeros <= 16)  # a 4x4 hole, maybe clipped
    t = diff_augment(x, policy="translation", generator=torch.Generator().manual_seed(2))
    # A shift keeps the values, only moves them (and fills zeros at the border).
    for i in range(4):
        vals = t[i][t[i] != 0]
        assert torch.isin(vals, x[i]).all()
    assert parse_policy("none") == ()
    with pytest.raises(MedreconInputError, match="unknown augmentation"):
        parse_policy("brightness,hue")
