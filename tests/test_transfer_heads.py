"""replace_head, freeze and the TransferFreeze plug-in on the shared engine."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from art_generalist.transfer import (
    HeadNotFoundError,
    TransferFreeze,
    build_architecture,
    find_head,
    freeze,
    load_source,
    replace_head,
)


@pytest.mark.parametrize("arch, name, width", [
    ("resnet18", "fc", 512), ("resnet50", "fc", 2048), ("wide_resnet50_2", "fc", 2048),
    ("registry:resnet18", None, 512), ("preact_resnet18", None, 512), ("wrn34_10", None, 640),
    ("smallcnn", None, None), ("digits_net", None, None)])
def test_head_swap_every_architecture(arch, name, width):
    with torch.device("meta"):  # no weights are materialised: cheap for ResNet-50 / WRN-50-2
        model = build_architecture(arch, 1000, 3, 32)
    old_name, old = find_head(model)
    assert name is None or old_name == name
    replace_head(model, 7)
    new_name, new = find_head(model)
    assert new_name == old_name and new.out_features == 7 and new.in_features == (width or old.in_features)
    replace_head(model, 5, hidden=(16,))
    assert find_head(model)[1].out_features == 5


def test_head_attributes_and_errors():
    vgg_like = nn.Sequential()
    vgg_like.features = nn.Conv2d(3, 4, 3)
    vgg_like.classifier = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    assert find_head(vgg_like)[0] == "classifier.2"
    with pytest.raises(HeadNotFoundError, match="no nn.Linear"):
        replace_head(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), 3)
    with pytest.raises(ValueError, match="num_classes"):
        replace_head(vgg_like, 0)
    with pytest.raises(ValueError, match="hidden"):
        replace_head(vgg_like, 3, hidden=(0,))


def test_freeze_levels():
    model = torchvision.models.resnet18(num_classes=4)
    head = {id(p) for p in model.fc.parameters()}
    assert {id(p) for p in freeze(model)} == head
    assert {id(p) for p in freeze(model, level=4)} == head  # the paper's fixed-feature level
    level3 = {id(p) for p in freeze(model, level=3)}
    assert level3 == head | {id(p) for p in model.layer4.parameters()}
    assert len(freeze(model, "full")) == len(list(model.parameters()))
    assert len(freeze(model, level=-1)) == len(list(model.parameters()))
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match=r"no module 'layer5'.*\[1, 2, 3, 4\]"):
        freeze(model, level=5)
    with pytest.raises(ValueError, match="`mode` must be one of"):
        freeze(model, "linear-probe")
    with pytest.raises(ValueError, match="contradicts"):
        freeze(model, "full", level=2)
    replace_head(model, 3, hidden=(8,))
    assert {id(p) for p in freeze(model)} == {id(p) for p in model.fc.parameters()}  # the hidden layer trains too


@pytest.mark.parametrize("update", [False, True])
def test_frozen_bn_statistics(update):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)
    freeze(model, update_bn_stats=update)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    model(torch.rand(4, 3, 32, 32))
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert bool(changed) is update  # the paper code's behaviour only on request


def _classifier(model, preprocessing=None):
    from art.estimators.classification import PyTorchClassifier

    preprocessing = preprocessing or (np.zeros(3, np.float32), np.ones(3, np.float32))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    return PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), optimizer=opt, input_shape=(3, 16, 16),
                             nb_classes=3, clip_values=(0.0, 1.0), preprocessing=preprocessing)


@pytest.mark.parametrize("mode", ["fixed-feature", "full"])
def test_plugin_on_the_engine(mode):
    from art_generalist import SingleLearnerTrainer

    torch.manual_seed(0)
    src = torchvision.models.resnet18(num_classes=1000)
    src = load_source(src.state_dict(), "resnet18", num_classes=3).model
    before = {k: v.clone() for k, v in src.state_dict().items()}
    trainer = SingleLearnerTrainer(_classifier(src), objective="natural", plugins=[TransferFreeze(mode)],
                                   copy_classifier=True)
    rng = np.random.default_rng(0)
    x, y = rng.random((16, 3, 16, 16), dtype=np.float32), rng.integers(0, 3, 16)
    trainer.fit(x, y, nb_epochs=1, batch_size=8)
    after = trainer.get_classifier().model.state_dict()
    backbone = [k for k in before if not k.startswith("fc.")]
    changed = [k for k in backbone if not torch.equal(before[k], after[k])]
    if mode == "fixed-feature":
        assert changed == []  # every backbone tensor, buffers included, bit-identical
    else:
        assert any(k.endswith("running_mean") for k in changed) and any(k.endswith("conv1.weight") for k in changed)
    assert not torch.equal(before["fc.weight"], after["fc.weight"])
    assert all(torch.equal(before[k], v) for k, v in src.state_dict().items())  # the user's model is untouched


def test_source_normalisation_reaches_the_classifier():
    from art_generalist import SingleLearnerTrainer

    torch.manual_seed(0)
    sd = torchvision.models.resnet18().state_dict()
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.25, 0.3])
    ckpt = {"model": {"module.normalizer.new_mean": mean.reshape(3, 1, 1), "module.normalizer.new_std":
                      std.reshape(3, 1, 1), **{f"module.model.{k}": v for k, v in sd.items()}}}
    src = load_source(ckpt, "resnet18", num_classes=3)
    trainer = SingleLearnerTrainer(_classifier(src.model, src.preprocessing), objective="natural",
                                   plugins=[TransferFreeze()])
    clf = trainer.get_classifier()
    op = clf.preprocessing_operations[0]
    assert np.allclose(np.asarray(op.mean).reshape(-1), mean.numpy())
    assert np.allclose(np.asarray(op.std).reshape(-1), std.numpy())
