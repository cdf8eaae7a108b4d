"""Export and embeddings: the exported encoder reproduces the run's h exactly, loads with torch (+ safetensors)
alone, never executes code from its files, and ``simclr embed`` writes one row per image with its name and label.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import simclr
import simclr.export as export_mod
from simclr.augment import EvalTransform
from simclr.checkpoint import file_sha256, load_pretrained, save_checkpoint
from simclr.config import config_to_dict, load_config
from simclr.embed import embed_command, embed_dataset
from simclr.errors import SimCLRError
from simclr.export import export_command, export_encoder, load_encoder, save_encoder

SIZE = 16
MEAN, STD = (0.4, 0.45, 0.5), (0.2, 0.25, 0.3)


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    images = rng.integers(0, 80, (n, SIZE, SIZE, 3), dtype=np.uint8)
    for i, c in enumerate(labels):
        images[i, :, :, c] += 150  # a class is a dominant colour channel
    return images, labels


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A pretraining run folder as the engine leaves it, built directly (no training: these tests are about files)."""
    root = tmp_path_factory.mktemp("export")
    train, train_labels = _images(24, 0)
    test, test_labels = _images(9, 1)
    np.savez(root / "data.npz", images=train, labels=train_labels, test_images=test, test_labels=test_labels,
             classes=np.array(["red", "green", "blue"]))  # fmt: skip
    cfg = load_config(
        overrides=[f"data.path={root / 'data.npz'}", "data.dataset=npz", "model.arch=resnet18",
                   "model.width_multiplier=0.125", "model.projection_dim=8"]
    )  # fmt: skip
    from simclr.models.build import build_model

    torch.manual_seed(0)
    model = build_model(cfg.model, SIZE)
    with torch.no_grad():  # non-trivial BN running statistics, so eval mode differs from train mode
        model(torch.randn(8, 3, SIZE, SIZE) * 2 + 1)
    state = {"kind": "pretrain", "config": config_to_dict(cfg), "model": model.state_dict(), "image_size": SIZE,
             "data_stats": {"mean": list(MEAN), "std": list(STD)}, "run_state": {"step": 7}}  # fmt: skip
    save_checkpoint(state, root / "run" / "checkpoints" / "last.pt")
    return root / "run"


def _reference_h(run: Path, x: torch.Tensor) -> torch.Tensor:
    pre = load_pretrained(run)
    return pre.model.encoder.eval()(x)


# ---- export / load --------------------------------------------------------------------------------------------


def test_export_round_trip_reproduces_h(run, tmp_path, capsys):
    out = tmp_path / "exp"
    assert export_command(str(run), str(out)) == 0
    assert "encoder.json" in capsys.readouterr().out
    meta = json.loads((out / "encoder.json").read_text())
    assert meta["architecture"] == {"name": "resnet18", "width": 0.125, "sk_ratio": 0.0, "cifar_stem": True,
                                    "se_ratio": 0.0, "first_block_projection": True}  # fmt: skip
    pre = meta["preprocessing"]
    assert pre["image_size"] == SIZE and pre["eval_crop_fraction"] == 1.0 and pre["input_value_range"] == [0.0, 1.0]
    assert pre["mean"] == list(MEAN) and pre["std"] == list(STD)
    assert meta["source"]["step"] == 7 and len(meta["source"]["checkpoint_sha256"]) == 64
    assert oct(os.stat(out / "encoder.json").st_mode & 0o044) != "0o0"  # shareable, not 0600

    x = torch.rand(5, 3, SIZE, SIZE)
    want = _reference_h(run, x)
    for where in (out, out / "encoder.json", out / "encoder.safetensors", out / "encoder.pt"):
        enc = load_encoder(where)
        assert not enc.training and enc.preprocessing["image_size"] == SIZE
        assert torch.equal(enc(x), want), where
    assert simclr.load_encoder(out).out_dim == want.shape[1]


def test_encoder_exported_before_the_shortcut_rule_loads_with_its_layout(tmp_path):
    # encoder.json written before `first_block_projection` existed: ResNet-18 without group 1's projection
    torch.manual_seed(0)
    old = simclr.create_encoder("resnet18", width=0.125, cifar_stem=True, first_block_projection=False).eval()
    path = save_encoder(old, tmp_path / "old", image_size=SIZE)
    meta = json.loads(path.read_text())
    del meta["architecture"]["first_block_projection"]
    path.write_text(json.dumps(meta))
    x = torch.rand(3, 3, SIZE, SIZE)
    assert torch.equal(load_encoder(path)(x), old(x))


def test_export_default_folder_and_pipeline_folder(run, tmp_path):
    path = export_encoder(run)
    assert path == run / "export" / "encoder.json"
    pipeline = tmp_path / "pipe"
    pipeline.mkdir()
    (pipeline / "pretrain").symlink_to(run, target_is_directory=True)
    assert export_encoder(pipeline, tmp_path / "p").is_file()


def test_load_falls_back_to_pt_without_safetensors(run, tmp_path, monkeypatch):
    out = export_encoder(run, tmp_path / "exp").parent
    x = torch.rand(2, 3, SIZE, SIZE)
    want = _reference_h(run, x)
    monkeypatch.setattr(export_mod, "_has", lambda name: name != "safetensors")
    assert torch.equal(load_encoder(out)(x), want)
    monkeypatch.undo()
    (out / "encoder.safetensors").unlink()
    assert torch.equal(load_encoder(out)(x), want)


def test_export_without_safetensors_writes_pt_only(run, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(export_mod, "_has", lambda name: name != "safetensors")
    export_command(str(run), str(tmp_path / "exp"))
    assert "only encoder.pt" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["encoder.json", "encoder.pt"]


def test_tampered_weights_are_refused(run, tmp_path):
    out = export_encoder(run, tmp_path / "exp").parent
    data = bytearray((out / "encoder.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (out / "encoder.safetensors").write_bytes(bytes(data))
    with pytest.raises(SimCLRError, match="SHA-256 differs"):
        load_encoder(out)


class _Evil:
    """Unpickling this calls os.system: what a malicious .pt file does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running_it(run, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "simclr-checkpoint", "kind": "encoder", "state_dict": _Evil(marker)}, evil)
    with pytest.raises(SimCLRError, match="refused to load") as info:
        load_encoder(evil)
    assert "\n" not in str(info.value)
    # The same file inside an export folder whose JSON vouches for it (matching SHA-256): still refused.
    out = export_encoder(run, tmp_path / "exp").parent
    (out / "encoder.safetensors").unlink()
    (out / "encoder.pt").write_bytes(evil.read_bytes())
    meta = json.loads((out / "encoder.json").read_text())
    meta["weights"]["pt"]["sha256"] = file_sha256(out / "encoder.pt")
    (out / "encoder.json").write_text(json.dumps(meta))
    with pytest.raises(SimCLRError, match="refused to load"):
        load_encoder(out)
    assert not marker.exists()


def test_description_is_checked(run, tmp_path):
    out = export_encoder(run, tmp_path / "exp").parent
    meta = json.loads((out / "encoder.json").read_text())
    meta["architecture"]["__class__"] = "os.system"
    (out / "encoder.json").write_text(json.dumps(meta))
    with pytest.raises(SimCLRError, match="architecture"):
        load_encoder(out)
    meta["architecture"] = {"name": ["resnet18"], "width": 1.0}
    (out / "encoder.json").write_text(json.dumps(meta))
    with pytest.raises(SimCLRError, match="architecture"):
        load_encoder(out)
    meta = json.loads(json.dumps(meta).replace('["resnet18"]', '"resnet18"'))
    meta["weights"]["safetensors"]["file"] = "../../etc/passwd"
    (out / "encoder.json").write_text(json.dumps(meta))
    with pytest.raises(SimCLRError, match="same folder"):
        load_encoder(out)
    (out / "encoder.json").write_text("{not json")
    with pytest.raises(SimCLRError, match="not a readable encoder description"):
        load_encoder(out)
    with pytest.raises(SimCLRError, match="no exported encoder"):
        load_encoder(tmp_path / "nowhere")
    with pytest.raises(SimCLRError, match="ResNet"):
        save_encoder(torch.nn.Linear(2, 2), tmp_path / "x", image_size=8)


@pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="the onnx package is not installed")
def test_onnx_export_matches_pytorch(run, tmp_path):
    out = export_encoder(run, tmp_path / "exp", onnx=True).parent
    assert json.loads((out / "encoder.json").read_text())["onnx"]["file"] == "encoder.onnx"
    x = torch.rand(3, 3, SIZE, SIZE)  # another batch size than the export's: the batch axis is dynamic
    want = _reference_h(run, x).detach().numpy()
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out / "encoder.onnx"), providers=["CPUExecutionProvider"])
        got = session.run(["h"], {"images": x.numpy()})[0]
    else:
        import onnx
        from onnx.reference import ReferenceEvaluator

        model = onnx.load(str(out / "encoder.onnx"))
        onnx.checker.check_model(model)
        got = ReferenceEvaluator(model).run(["h"], {"images": x.numpy()})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_onnx_without_the_package_is_a_clear_error(run, tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "_has", lambda name: name != "onnx")
    with pytest.raises(SimCLRError, match="pip install onnx"):
        export_command(str(run), str(tmp_path / "exp"), onnx=True)


# ---- embed --------------------------------------------------------------------------------------------------


def _expected(run: Path, images: torch.Tensor, which: str) -> np.ndarray:
    pre = load_pretrained(run)
    x = EvalTransform(SIZE, None, pre.mean, pre.std)(images)
    h, z = pre.model.eval()(x)
    return (h if which == "h" else z).detach().numpy()


@pytest.mark.parametrize("which", ["h", "z"])
def test_embed_run_dataset(run, tmp_path, which, capsys):
    assert embed_command(str(run), out=str(tmp_path / "emb.npy"), which=which, batch_size=4, device="cpu",
                         split="test") == 0  # fmt: skip
    assert "9 x" in capsys.readouterr().out
    emb = np.load(tmp_path / "emb.npy")
    test, labels = _images(9, 1)
    want = _expected(run, torch.from_numpy(test).permute(0, 3, 1, 2).contiguous(), which)
    np.testing.assert_allclose(emb, want, rtol=1e-5, atol=1e-5)
    with open(tmp_path / "emb.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == [str(i) for i in range(9)]
    assert [int(r["label"]) for r in rows] == labels.tolist()
    assert rows[1]["class"] == "green"


def test_embed_image_folder_with_names(run, tmp_path):
    folder = tmp_path / "mine"
    images, _ = _images(5, 2)
    for i, img in enumerate(images):
        sub = folder / ("cats" if i % 2 else "dogs")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(sub / f"img{i}.png")
    written = embed_dataset(run, tmp_path / "out" / "emb", data=str(folder), batch_size=2, device="cpu")
    emb = np.load(written["npy"])
    assert emb.shape == (5, 64) and np.isfinite(emb).all()
    with open(written["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["cats/img1.png", "cats/img3.png", "dogs/img0.png", "dogs/img2.png",
                                         "dogs/img4.png"]  # fmt: skip
    assert [r["class"] for r in rows] == ["cats", "cats", "dogs", "dogs", "dogs"]
    if importlib.util.find_spec("pyarrow") is not None:
        assert written["parquet"].is_file()


def test_embed_rejects_bad_options(run, tmp_path):
    with pytest.raises(SimCLRError, match="--which"):
        embed_dataset(run, tmp_path / "e", which="w")
    with pytest.raises(SimCLRError, match="--out"):
        embed_command(str(run), out=None)
