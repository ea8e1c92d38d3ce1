"""Image classification on transformers checkpoints (what a hub id such as microsoft/resnet-50 or
google/vit-base-patch16-224 gives), here tiny config-built ResNet and ViT folders saved with their image processors:
every strategy trains exactly what it should, a run's final/ reloads in plain transformers with tunelab's logits,
and a hub id that cannot be reached offline is a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from transformers import (AutoImageProcessor, AutoModelForImageClassification, ConvNextImageProcessor, ResNetConfig,
                          ResNetForImageClassification, ViTConfig, ViTForImageClassification, ViTImageProcessor)

from tests.test_vision_task import (COLOURS, STRATEGIES, check_strategy_moves_exactly_what_trains, image_folder,
                                    image_recipe)
from tunelab import api
from tunelab.errors import ModelError, RecipeError
from tunelab.models import vision_hf
from tunelab.strategies import layers

__all__ = ["image_folder"]  # the fixture, shared with the timm tests


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders as from_pretrained reads them: a 5-class checkpoint (a head tunelab must replace) and its processor."""
    root = tmp_path_factory.mktemp("hf-models")
    torch.manual_seed(0)
    made = {
        "resnet": (ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                                             layer_type="basic", num_labels=5)),
                   ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875)),
        "vit": (ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=32, num_labels=5)),
                ViTImageProcessor(size={"height": 32, "width": 32})),
    }
    folders = {}
    for name, (model, processor) in made.items():
        folders[name] = root / name
        model.save_pretrained(folders[name])
        processor.save_pretrained(folders[name])
    return folders


def test_names_route_to_transformers_or_timm(hf_models: dict[str, Path], tmp_path: Path) -> None:
    assert vision_hf.is_transformers_model(str(hf_models["resnet"]))
    assert vision_hf.is_transformers_model("microsoft/resnet-50")
    for timm_name in ("resnet18", "timm/resnet18.a1_in1k", "hf-hub:timm/resnet18.a1_in1k", "efficientnet-lite0"):
        assert not vision_hf.is_transformers_model(timm_name)
    timm.models.save_for_hf(timm.create_model("test_efficientnet", pretrained=False), str(tmp_path / "t"))
    assert not vision_hf.is_transformers_model(str(tmp_path / "t"))  # timm's own save format stays timm's


def test_stages_of_a_transformers_cnn_are_its_blocks(hf_models: dict[str, Path]) -> None:
    resnet = AutoModelForImageClassification.from_pretrained(hf_models["resnet"])
    assert [name for name, _ in layers.ordered_blocks(resnet)] == ["resnet.encoder.stages.0", "resnet.encoder.stages.1"]
    vit = AutoModelForImageClassification.from_pretrained(hf_models["vit"])
    assert [name for name, _ in layers.ordered_blocks(vit)] == ["vit.layers.0", "vit.layers.1"]


@pytest.mark.parametrize("arch", ["resnet", "vit"])
@pytest.mark.parametrize("raw", STRATEGIES, ids=[json.dumps(r, separators=(",", ":")) for r in STRATEGIES])
def test_every_strategy_on_a_transformers_backbone(tmp_path: Path, image_folder: Path, hf_models: dict[str, Path],
                                                   raw: dict, arch: str) -> None:
    check_strategy_moves_exactly_what_trains(tmp_path, image_folder, raw, str(hf_models[arch]))


@pytest.mark.parametrize("arch", ["resnet", "vit"])
def test_final_reloads_in_plain_transformers_with_the_same_logits(tmp_path: Path, image_folder: Path,
                                                                  hf_models: dict[str, Path], arch: str) -> None:
    size = {"resnet": 24, "vit": 32}[arch]  # ViT's position embeddings fit its own size only
    recipe = image_recipe(tmp_path, image_folder, model={"name": str(hf_models[arch])},
                          task={"pretrained": True, "image_size": size}, strategy={"method": "lora", "r": 4})
    run = api.train(recipe, name=arch)
    final = run / "final"
    assert json.loads((final / "tunelab.json").read_text())["format"] == "transformers"
    model = AutoModelForImageClassification.from_pretrained(final).eval()
    processor = AutoImageProcessor.from_pretrained(final)
    assert not any("lora" in name for name, _ in model.named_parameters())  # the adapter is merged in
    assert model.config.id2label == dict(enumerate(sorted(COLOURS)))
    files = [image_folder / label / "13.png" for label in COLOURS]
    pixels = processor(images=[Image.open(f).convert("RGB") for f in files], return_tensors="pt")["pixel_values"]
    assert pixels.shape[-2:] == (size, size)  # task.image_size scaled the processor, and final/ keeps it
    with torch.no_grad():
        probs = model(pixel_values=pixels).logits.softmax(-1)
    ours = torch.tensor([[r["scores"][name] for name in sorted(COLOURS)] for r in run.predict([str(f) for f in files])])
    assert torch.allclose(ours, probs, atol=1e-5)  # stated tolerance: float32 merge of LoRA, batching
    assert api.evaluate(run, "test")["accuracy"] == run.summary["after"]["test"]["accuracy"]


def test_the_checkpoint_head_is_replaced_even_when_its_size_fits(hf_models: dict[str, Path]) -> None:
    stored = AutoModelForImageClassification.from_pretrained(hf_models["resnet"]).classifier[1].weight
    model = vision_hf.create(str(hf_models["resnet"]), list("abcde"), pretrained=True)
    assert model.tunelab_new_params == ["classifier.1.weight", "classifier.1.bias"]
    assert stored.shape == model.classifier[1].weight.shape and not torch.equal(stored, model.classifier[1].weight)
    body = AutoModelForImageClassification.from_pretrained(hf_models["resnet"]).resnet.state_dict()
    assert all(torch.equal(t, model.resnet.state_dict()[k]) for k, t in body.items())  # the backbone is pretrained


def test_an_unreachable_hub_id_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelError, match="microsoft/resnet-50.*(offline|hub)"):
        vision_hf.load_processor("microsoft/resnet-50")


def test_a_size_that_vit_position_embeddings_do_not_fit_is_refused(tmp_path: Path, image_folder: Path,
                                                                    hf_models: dict[str, Path]) -> None:
    recipe = image_recipe(tmp_path, image_folder, model={"name": str(hf_models["vit"])}, task={"image_size": 24})
    with pytest.raises(RecipeError, match=r"task.image_size: ViTForImageClassification .* 32x32 .* not 24x24"):
        api.train(recipe, name="vit24")
