"""Loading a run's final/ folder back, whatever strategy wrote it, and exporting it as a plain model.

``tunelab.json`` in final/ says which format the strategy wrote:

* ``hf``: a Hugging Face folder (plain transformers loads it);
* ``peft``: a PEFT adapter folder whose ``modules_to_save`` carry the new head (plain
  ``PeftModel.from_pretrained(base, final_dir)`` loads it);
* ``adapters``: a Hugging Face folder whose weights also hold bottleneck adapters, which tunelab rebuilds.

An MLP head (``task.head.hidden``) is recorded under ``head`` and rebuilt before its weights are loaded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from tunelab.errors import RunError
from tunelab.models import load_pretrained
from tunelab.models.heads import replace_head
from tunelab.strategies.adapters import load_adapters
from tunelab.strategies.peft_methods import merge


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a saved Hugging Face folder, whether one safetensors file or shards with an index."""
    single = folder / "model.safetensors"
    if single.is_file():
        return load_file(single)
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        raise RunError(f"{folder}: no model.safetensors (or shard index) to read the trained weights from")
    shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    return {key: value for shard in shards for key, value in load_file(folder / shard).items()}


def load_model(final_dir: Path, info: dict[str, Any], model_cfg: Any, auto: Any) -> nn.Module:
    """The trained model from final/, in eval mode, exactly as it was saved; ``auto`` is the task's transformers
    Auto class and ``model_cfg`` the recipe's model section (the base model a PEFT adapter applies to)."""
    names = info.get("labels")
    labels = {"num_labels": len(names), "id2label": dict(enumerate(names)),
              "label2id": {name: i for i, name in enumerate(names)}} if names else {}
    if info.get("format") == "peft":
        from peft import PeftModel

        base = load_pretrained(model_cfg.name, auto, trust_remote_code=model_cfg.trust_remote_code, **labels)
        _maybe_custom_head(base, info)
        return PeftModel.from_pretrained(base, final_dir).eval()
    model = auto.from_pretrained(final_dir, trust_remote_code=model_cfg.trust_remote_code)
    head = _maybe_custom_head(model, info)
    adapters = info.get("format") == "adapters"
    state = read_weights(final_dir) if head or adapters else {}
    if head:
        missing, _ = model.load_state_dict({k: v for k, v in state.items() if k.startswith(head + ".")}, strict=False)
        if any(key.startswith(head + ".") for key in missing):
            raise RunError(f"{final_dir}: the saved weights lack part of the {head} head ({missing[0]})")
    if adapters:
        load_adapters(model, state, info["adapters"])
    return model.eval()


def _maybe_custom_head(model: nn.Module, info: dict[str, Any]) -> str | None:
    """Rebuild an MLP head (task.head.hidden) so its saved weights have somewhere to go; returns its name."""
    head = info.get("head")
    if not head:
        return None
    return replace_head(model, head["hidden"], head["activation"], head["dropout"], len(info["labels"]))


def export_merged(final: Path, info: dict[str, Any], model_cfg: Any, auto: Any, target: Path) -> Path:
    """Write a text run's model as a plain Hugging Face folder (adapters merged into the weights); returns it.

    Why: a PEFT adapter needs peft and the base model at load time; a merged folder is one self-contained model that
    plain ``AutoModel*.from_pretrained`` loads and that runs as fast as the base model.
    """
    from transformers import AutoTokenizer

    run_dir = final.parent
    if info.get("head"):
        raise RunError(f"{run_dir}: the model has an MLP head (task.head.hidden), which plain transformers cannot "
                       "build; load it with tunelab.load instead")
    if info.get("format") == "adapters":
        raise RunError(f"{run_dir}: bottleneck adapters are non-linear and cannot be merged into the base weights, "
                       "and plain transformers cannot build them; load the run with tunelab.load instead")
    if target.exists():
        raise RunError(f"{target} already exists; remove it or give another --out folder")
    model = load_model(final, info, model_cfg, auto)
    if info.get("format") == "peft":
        model = merge(model, info.get("method", "lora"))
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    AutoTokenizer.from_pretrained(final).save_pretrained(tmp)
    tmp.rename(target)
    return target
