"""Loading a run's final/ folder back, whatever strategy wrote it.

Plain strategies write a Hugging Face folder; PEFT strategies write an adapter folder whose ``modules_to_save``
carry the new head. Both are loadable without tunelab; this module is the tunelab side of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import nn

from tunelab.recipe import Recipe


def auto_class_for(task_type: str) -> Any:
    """The transformers Auto class of a task type."""
    import transformers

    return {
        "classification": transformers.AutoModelForSequenceClassification,
        "causal_lm": transformers.AutoModelForCausalLM,
        "seq2seq": transformers.AutoModelForSeq2SeqLM,
    }[task_type]


def load_model(final_dir: Path, info: dict[str, Any], recipe: Recipe) -> nn.Module:
    """The trained model from final/, in eval mode, exactly as it was saved."""
    auto = auto_class_for(recipe.task.type)
    if info.get("format") == "peft":
        from peft import PeftModel

        from tunelab.models import load_pretrained

        extra = {"num_labels": len(info["labels"])} if "labels" in info else {}
        base = load_pretrained(recipe.model.name, auto, trust_remote_code=recipe.model.trust_remote_code, **extra)
        _maybe_custom_head(base, info)
        model = PeftModel.from_pretrained(base, final_dir)
    else:
        model = auto.from_pretrained(final_dir, trust_remote_code=recipe.model.trust_remote_code)
        if _maybe_custom_head(model, info):
            state = load_file(final_dir / "model.safetensors")
            model.load_state_dict({k: v for k, v in state.items() if k.startswith("classifier.")}, strict=False)
    return model.eval()


def _maybe_custom_head(model: nn.Module, info: dict[str, Any]) -> bool:
    """Rebuild an MLP head (task.head.hidden) so its saved weights have somewhere to go."""
    head = info.get("head")
    if not head:
        return False
    from tunelab.tasks.classification import replace_head

    replace_head(model, head["hidden"], head["activation"], head["dropout"], len(info["labels"]))
    return True
