"""Image backbones: the packaged EfficientNet-Lite0, its preprocessing, saving for plain timm, and block groups."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import constants as hub_constants
from PIL import Image
from sklearn.datasets import load_sample_images

from tunelab.errors import ModelError
from tunelab.models.vision import (
    LITE0,
    LITE0_ARCH,
    Preprocessing,
    block_groups,
    create_image_model,
    eval_transform,
    lite0_state_dict,
    lite0_weights_file,
    load_image_model,
    load_packaged_lite0,
    save_image_model,
    train_transform,
)

HALF = (0.5, 0.5, 0.5)


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    """sklearn's two real photos: a Chinese palace and a flower."""
    data = load_sample_images()
    return {Path(name).stem: Image.fromarray(array) for name, array in zip(data.filenames, data.images)}


@pytest.fixture(scope="module")
def packaged_weights() -> dict[str, torch.Tensor]:
    """The lukemelas-style state dict as shipped in the pip package."""
    return torch.load(lite0_weights_file(), map_location="cpu", weights_only=True)


def test_lite0_preprocessing_is_the_packaged_weights_own(photos: dict[str, Image.Image]) -> None:
    model, prep = create_image_model(LITE0, 3, pretrained=False)
    assert prep == Preprocessing((3, 224, 224), "bicubic", HALF, HALF, 0.875, "center")
    assert model.pretrained_cfg["architecture"] == LITE0_ARCH
    image = eval_transform(prep)(photos["flower"])
    assert image.shape == (3, 224, 224) and image.min() >= -1.0 and image.max() <= 1.0
    assert torch.equal(image, eval_transform(prep)(photos["flower"]))


def test_train_transform_is_random_resized_crop_and_flip_only(photos: dict[str, Image.Image]) -> None:
    _, prep = create_image_model(LITE0, 3, pretrained=False)
    transform = train_transform(prep)
    steps = [type(step).__name__ for step in transform.transforms]
    assert steps == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "MaybeToTensor", "Normalize"]
    assert transform.transforms[1].p == 0.5
    torch.manual_seed(0)
    first, second = transform(photos["china"]), transform(photos["china"])
    assert first.shape == second.shape == (3, 224, 224) and not torch.equal(first, second)


def test_new_head_is_named_and_sized(packaged_weights: dict[str, torch.Tensor]) -> None:
    model, _ = create_image_model(LITE0, 7)
    assert model.tunelab_new_params == ["classifier.bias", "classifier.weight"]
    assert model.get_classifier().out_features == 7
    assert torch.equal(model.conv_stem.weight, packaged_weights["_conv_stem.weight"])
    assert torch.equal(model.blocks[6][0].conv_pwl.weight, packaged_weights["_blocks.15._project_conv.weight"])
    scratch, _ = create_image_model(LITE0, 7, pretrained=False)
    assert not torch.equal(scratch.conv_stem.weight, packaged_weights["_conv_stem.weight"])
    assert scratch.tunelab_new_params == model.tunelab_new_params
    assert scratch.eval()(torch.zeros(2, 3, 64, 64)).shape == (2, 7)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda sd: sd.pop("_blocks.3._bn1.running_var"), "blocks.2.0.bn2.running_var"),
        (lambda sd: sd.__setitem__("_blocks.3._bn1.weight", torch.zeros(7)), "_blocks.3._bn1.weight"),
        (lambda sd: sd.__setitem__("_blocks.3._se_reduce.weight", torch.zeros(1)), "_blocks.3._se_reduce.weight"),
        (lambda sd: sd.__setitem__("_blocks.16._bn1.weight", torch.zeros(1)), "_blocks.16._bn1.weight"),
    ],
    ids=["missing", "wrong-shape", "unknown-layer", "extra-block"],
)
def test_weight_map_names_the_key_at_fault(packaged_weights: dict[str, torch.Tensor], change, named: str) -> None:
    model, _ = create_image_model(LITE0, 1000, pretrained=False)
    source = dict(packaged_weights)
    assert set(lite0_state_dict(source, model)) == set(model.state_dict())
    change(source)
    with pytest.raises(ModelError, match=named.replace(".", r"\.")):
        lite0_state_dict(source, model)


def test_unknown_name_suggests_close_ones() -> None:
    with pytest.raises(ModelError, match="efficientnet_lite0"):
        create_image_model("efficientnet_lite00", 3)


def test_unreachable_hub_says_what_works_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelError, match=f"HF_HUB_OFFLINE.*'{LITE0}'.*offline"):
        create_image_model("resnet18", 3)
    model, _ = create_image_model("resnet18", 3, pretrained=False)
    assert model.tunelab_new_params == ["fc.bias", "fc.weight"]


def test_saved_model_reloads_in_plain_timm(tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    torch.manual_seed(0)
    model, prep = create_image_model(LITE0, 3, pretrained=False)
    batch = torch.stack([eval_transform(prep)(image) for image in photos.values()])
    small = batch[:, :, :96, :96]  # the network takes any size; small inputs keep the test fast
    model.train()(small)  # move BatchNorm running statistics off their defaults, so they are checked too
    model.eval()
    with torch.no_grad():
        before = model(small)
    save_image_model(model, prep, tmp_path / "final", label_names=["cat", "dog", "fox"])

    config = json.loads((tmp_path / "final" / "config.json").read_text())
    assert (config["architecture"], config["num_classes"]) == (LITE0_ARCH, 3)
    assert config["label_names"] == ["cat", "dog", "fox"]
    assert config["pretrained_cfg"]["mean"] == config["pretrained_cfg"]["std"] == list(HALF)
    plain = timm.create_model(f"local-dir:{tmp_path / 'final'}", pretrained=True).eval()
    plain_transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=plain))
    assert torch.equal(torch.stack([plain_transform(image) for image in photos.values()]), batch)
    reloaded, reloaded_prep = load_image_model(tmp_path / "final")
    assert reloaded_prep == prep
    with torch.no_grad():  # tolerance 0: same weights, same CPU kernels, same inputs
        assert torch.equal(plain(small), before)
        assert torch.equal(reloaded.eval()(small), before)


def test_load_needs_a_saved_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no config.json"):
        load_image_model(tmp_path)


def test_block_groups_cover_every_parameter_in_depth_order() -> None:
    model, _ = create_image_model(LITE0, 3, pretrained=False)
    groups = block_groups(model)
    labels = [label for label, _ in groups]
    assert labels[0] == "conv_stem+bn1" and labels[1:3] == ["blocks.0.0", "blocks.1.0"]
    assert labels[-2:] == ["blocks.6.0+conv_head+bn2", "classifier"] and len(groups) == 18  # stem, 16 blocks, head
    assert groups[-1][1] == sorted(model.tunelab_new_params, reverse=True)
    names = [name for _, group in groups for name in group]
    assert sorted(names) == sorted(name for name, _ in model.named_parameters()) and len(set(names)) == len(names)
    stages = [label for label, _ in block_groups(model, coarse=True)]
    assert stages[1:7] == ["blocks.0.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4", "blocks.5"]
    with pytest.raises(ModelError, match="group_matcher"):
        block_groups(torch.nn.Linear(2, 2))


def _top1(model: torch.nn.Module, prep: Preprocessing, images: list[Image.Image]) -> list[tuple[str, float]]:
    """ImageNet class description and probability of the model's top prediction, per image."""
    with torch.no_grad():
        probs = model(torch.stack([eval_transform(prep)(image) for image in images])).softmax(-1)
    info = timm.data.ImageNetInfo()
    return [(info.index_to_description(int(row.argmax())), float(row.max())) for row in probs]


@pytest.mark.real
def test_packaged_lite0_recognises_the_sample_photos(photos: dict[str, Image.Image]) -> None:
    """Top-1 'palace' (p 0.30) and 'daisy' (p 0.32) here. The p > 0.25 bar catches a wrong map or architecture:
    on timm's efficientnet_lite0 (symmetric padding) the daisy gets 0.19; ImageNet mean/std make it a lampshade."""
    model, prep = create_image_model(LITE0, 1000, pretrained=False)
    load_packaged_lite0(model)
    model.eval()
    (palace, p_palace), (daisy, p_daisy) = _top1(model, prep, [photos["china"], photos["flower"]])
    assert (palace, daisy) == ("palace", "daisy") and p_palace > 0.25 and p_daisy > 0.25
    imagenet_stats = dataclasses.replace(prep, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    assert _top1(model, imagenet_stats, [photos["flower"]])[0][0] != "daisy"
