"""load_source: every checkpoint format, safe loading, the SHA-256 opt-in and clear errors."""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import pathlib
import struct

import pytest
import torch
import torchvision

from art_generalist.state.files import UnsafeCheckpointError, save_safetensors
from art_generalist.transfer import (
    CheckpointFormatError,
    KeyMismatchError,
    convert_keys,
    load_source,
    sha256_of,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def source():
    """A random torchvision ResNet-18 (eval), its state dict, an input and the reference output."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    with torch.no_grad():  # non-trivial BN statistics, so the buffers are really compared
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    return model.state_dict(), x, ref


def _out(src, x):
    with torch.no_grad():
        return src.model.eval()(x)


def _madry(sd):
    stats = {"new_mean": torch.tensor(MEAN).reshape(3, 1, 1), "new_std": torch.tensor(STD).reshape(3, 1, 1)}
    model = {**{f"module.normalizer.{k}": v for k, v in stats.items()},
             **{f"module.model.{k}": v for k, v in sd.items()},
             **{f"module.attacker.normalize.{k}": v for k, v in stats.items()},
             **{f"module.attacker.model.{k}": v.clone() + 1 for k, v in sd.items()}}  # a wrong copy: must be dropped
    return model


def test_torchvision_state_dict_file_and_memory(source, tmp_path):
    sd, x, ref = source
    torch.save(sd, tmp_path / "tv.pt")
    for src in (load_source(tmp_path / "tv.pt", "resnet18"), load_source(sd, "resnet18")):
        assert src.format == "torchvision" and src.mean is None and src.preprocessing is None
        assert torch.equal(_out(src, x), ref)


@pytest.mark.parametrize("outer", ["model", "state_dict"])
def test_madrylab_checkpoint(source, tmp_path, outer):
    sd, x, ref = source
    ckpt = {outer: _madry(sd), "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}, "schedule": None,
            "epoch": 90, "amp": None}
    torch.save(ckpt, tmp_path / "madry.ckpt")
    src = load_source(tmp_path / "madry.ckpt", "resnet18")
    assert src.format == "madrylab"
    assert src.mean == pytest.approx(MEAN) and src.std == pytest.approx(STD)
    assert src.preprocessing[0].shape == (3, 1, 1)
    assert any(k.startswith("module.attacker.model.") for k in src.dropped_keys)
    assert torch.equal(_out(src, x), ref)


@pytest.mark.parametrize("layout", ["module", "model", "module.model"])
def test_robustbench_state_dicts(source, layout):
    sd, x, ref = source
    state = {f"{layout}.{k}": v for k, v in sd.items()}
    outer = "module." if layout.startswith("module") and layout != "module" else ""
    if layout != "module":
        state[f"{outer}normalize.mean"] = torch.tensor(MEAN).reshape(1, 3, 1, 1)
        state[f"{outer}normalize.std"] = torch.tensor(STD).reshape(1, 3, 1, 1)
    src = load_source(state, "resnet18")
    assert src.format == "robustbench"
    assert torch.equal(_out(src, x), ref)
    if layout != "module":
        assert src.mean == pytest.approx(MEAN) and src.std == pytest.approx(STD)


def test_prefixes_not_substrings():
    t = torch.zeros(1)
    madry = convert_keys({"module.normalizer.new_mean": t, "module.model.layer1.module.model.w": t})
    assert list(madry.state_dict) == ["layer1.module.model.w"]
    generic = convert_keys({"module.a.module.b": t, "module.model.c": t})
    assert sorted(generic.state_dict) == ["a.module.b", "model.c"]  # 'model.' is not every key's prefix
    plain = convert_keys({"encoder.module.weight": t, "head.model.bias": t})
    assert sorted(plain.state_dict) == ["encoder.module.weight", "head.model.bias"] and plain.format == "torchvision"


def test_plain_safetensors_and_package_export(source, tmp_path):
    sd, x, ref = source
    save_safetensors(sd, {"note": "plain"}, tmp_path / "tv.safetensors")
    assert torch.equal(_out(load_source(tmp_path / "tv.safetensors", "resnet18"), x), ref)

    from art.estimators.classification import PyTorchClassifier

    from art_generalist import SingleLearnerTrainer
    from art_generalist.models import get_model

    torch.manual_seed(1)
    model = get_model("digits_net", 1, 10, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    clf = PyTorchClassifier(model, loss=torch.nn.CrossEntropyLoss(), optimizer=opt, input_shape=(1, 8, 8),
                            nb_classes=10, clip_values=(0.0, 1.0), preprocessing=(0.3, 0.37))
    SingleLearnerTrainer(clf, objective="natural").export(tmp_path / "export.safetensors")
    src = load_source(tmp_path / "export.safetensors", None)
    assert src.format == "art-generalist-export" and src.arch == "registry:digits_net"
    assert src.mean == pytest.approx((0.3,)) and src.std == pytest.approx((0.37,))
    u = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        # the trainer put the user's model in channels_last memory format: equal up to the conv kernels' rounding
        torch.testing.assert_close(src.model.eval()(u), model.eval()(u), rtol=1e-6, atol=1e-6)


def test_registry_architectures(source):
    from art_generalist.models import get_model

    torch.manual_seed(2)
    own = get_model("resnet18", 3, 10, 32).eval()
    x = torch.rand(2, 3, 32, 32)
    src = load_source(own.state_dict(), "registry:resnet18")
    with torch.no_grad():
        assert torch.equal(src.model.eval()(x), own(x))
    small = get_model("smallcnn", 1, 10, 28)
    assert type(load_source(small.state_dict(), "smallcnn", in_channels=1, input_size=28).model) is type(small)


def test_new_head(source):
    src = load_source(source[0], "resnet18", num_classes=7, hidden=(32,))
    assert src.model.fc[-1].out_features == 7 and src.model.fc[0].out_features == 32


class _Evil:
    """Unpickling this writes a file: the payload the loader must never run."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.write_text, (self.marker, "pwned")


def test_malicious_checkpoint_refused_and_nothing_runs(source, tmp_path):
    marker = tmp_path / "pwned.txt"
    torch.save({"model": source[0], "extra": _Evil(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError, match="pathlib.Path") as err:
        load_source(tmp_path / "evil.pt", "resnet18")
    assert "allow_unsafe_sha256" in str(err.value)
    assert not marker.exists()
    torch.load(tmp_path / "evil.pt", weights_only=False)  # the payload is real: full unpickling runs it
    assert marker.exists()


def test_sha256_opt_in(source, tmp_path, monkeypatch):
    sd, x, ref = source
    path = tmp_path / "madry_dill_like.ckpt"
    torch.save({"model": _madry(sd), "args": argparse.Namespace(arch="resnet18", eps=3.0)}, path)
    with pytest.raises(UnsafeCheckpointError, match="argparse.Namespace"):
        load_source(path, "resnet18")
    converted = tmp_path / "madry_dill_like.ckpt.safetensors"
    with pytest.raises(ValueError, match="not 0{64}"):
        load_source(path, "resnet18", allow_unsafe_sha256="0" * 64)
    assert not converted.exists()
    with pytest.raises(ValueError, match="allow_unsafe_sha256"):
        load_source(path, "resnet18", allow_unsafe_sha256="abc")
    digest = sha256_of(path)
    src = load_source(path, "resnet18", allow_unsafe_sha256=digest.upper())
    assert converted.is_file() and src.format == "madrylab" and src.mean == pytest.approx(MEAN)
    assert torch.equal(_out(src, x), ref)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load called on the second load")

    monkeypatch.setattr(torch, "load", no_unpickling)
    again = load_source(path, "resnet18", allow_unsafe_sha256=digest)
    assert torch.equal(_out(again, x), ref)
    other = tmp_path / "elsewhere" / "w.safetensors"
    monkeypatch.undo()
    load_source(path, "resnet18", allow_unsafe_sha256=digest, converted_path=other)
    assert other.is_file()


def test_mismatched_keys_and_shapes_listed(source):
    sd = dict(source[0])
    sd.pop("layer1.0.conv1.weight")
    sd["extra.weight"] = torch.zeros(1)
    sd["layer2.0.bn1.bias"] = torch.zeros(5)
    with pytest.raises(KeyMismatchError) as err:
        load_source(sd, "resnet18")
    msg = str(err.value)
    assert "layer1.0.conv1.weight" in msg and "extra.weight" in msg and "layer2.0.bn1.bias" in msg


def test_checkpoint_for_another_architecture(source):
    with pytest.raises(KeyMismatchError, match=r"fits \['resnet18'\]"):
        load_source(source[0], "resnet50")


def test_unknown_architecture_html_and_missing_file(source, tmp_path):
    with pytest.raises(ValueError, match="unknown architecture 'vgg11'"):
        load_source(source[0], "vgg11")
    page = tmp_path / "download.pt"
    page.write_text("\n<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head></html>")
    with pytest.raises(CheckpointFormatError, match="HTML page.*invalid load key"):
        load_source(page, "resnet18")
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        load_source(tmp_path / "absent.pt", "resnet18")
    with pytest.raises(ValueError, match="`arch`"):
        load_source(source[0], None)
    with pytest.raises(ValueError, match="num_classes"):
        load_source(source[0], "resnet18", num_classes=0)


def _trusted_unsafe_file(sd, tmp_path):
    path = tmp_path / "trusted.ckpt"
    torch.save({"model": _madry(sd), "args": argparse.Namespace(arch="resnet18")}, path)  # needs full unpickling
    return path, sha256_of(path)


def test_unsafe_load_unpickles_the_bytes_it_hashed(source, tmp_path, monkeypatch):
    """A file swapped in right after its SHA-256 was checked is never unpickled (TOCTOU): the verified
    bytes are loaded, and the copy is not used for the swapped source either."""
    sd, x, ref = source
    path, digest = _trusted_unsafe_file(sd, tmp_path)
    swapped, marker = tmp_path / "swapped.ckpt", tmp_path / "pwned.txt"
    torch.save({"model": _madry({k: v + 1 for k, v in sd.items()}), "extra": _Evil(marker)}, swapped)
    real = hashlib.sha256

    class SwapAfterHashing:  # hashlib.sha256 whose digest of the trusted bytes lets the attacker swap the file
        def __init__(self, *data):
            self._h = real(*data)

        def update(self, data):
            self._h.update(data)

        def hexdigest(self):
            out = self._h.hexdigest()
            if out == digest and swapped.exists():
                os.replace(swapped, path)
            return out

    monkeypatch.setattr(hashlib, "sha256", SwapAfterHashing)
    src = load_source(path, "resnet18", allow_unsafe_sha256=digest)
    monkeypatch.undo()
    assert not swapped.exists() and sha256_of(path) != digest  # the swap happened
    assert not marker.exists()  # the swapped file was not unpickled
    assert torch.equal(_out(src, x), ref)  # the verified weights were loaded
    with pytest.raises(ValueError, match="refusing to unpickle"):  # the copy is bound to the source's SHA-256
        load_source(path, "resnet18", allow_unsafe_sha256=digest)
    assert not marker.exists()


def test_altered_safetensors_copy_is_not_trusted(source, tmp_path, caplog):
    """A planted copy recording the source's SHA-256 (and size) but holding other tensors is rebuilt."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    sd, x, ref = source
    path, digest = _trusted_unsafe_file(sd, tmp_path)
    load_source(path, "resnet18", allow_unsafe_sha256=digest)
    copy = tmp_path / "trusted.ckpt.safetensors"
    with safe_open(str(copy), framework="pt") as fh:
        record = fh.metadata()
    tensors = load_file(str(copy))
    tensors["module.model.fc.weight"] = torch.zeros_like(tensors["module.model.fc.weight"])
    save_file(tensors, str(copy), metadata=record)  # the genuine record, altered weights
    with caplog.at_level(logging.WARNING, logger="art_generalist.transfer.formats"):
        src = load_source(path, "resnet18", allow_unsafe_sha256=digest)
    assert torch.equal(_out(src, x), ref)
    assert "not using the safetensors copy" in caplog.text and "altered" in caplog.text
    assert torch.equal(load_file(str(copy))["module.model.fc.weight"], sd["fc.weight"])  # rebuilt


def test_oversized_safetensors_metadata_of_a_source_is_refused_before_parsing(tmp_path):
    from safetensors.torch import save_file

    from art_generalist.transfer.formats import read_file

    path = tmp_path / "big.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"art_generalist": "[" + "0," * 2**20 + "0]"})
    with pytest.raises(ValueError, match=r"big\.safetensors: its metadata is \d+ bytes, over the cap"):
        read_file(path)
    data = bytearray(path.read_bytes())
    data[:8] = (2**40).to_bytes(8, "little")  # a header length past the end of the file
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError):  # not read as safetensors, and refused as a pickle: nothing parsed
        read_file(path)


@pytest.mark.parametrize("header, message", [(b"{not json", "header is not JSON"),
                                             (b'{"__metadata__": 5}', "metadata is not a JSON object")])
def test_a_damaged_safetensors_header_is_a_format_error_naming_the_file(tmp_path, header, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(CheckpointFormatError, match=f"bad.safetensors.*{message}"):
        load_source(path, "resnet18")
