"""New layers on top of a pretrained model: the course's 'add new layers' (an MLP head instead of one linear layer)."""

from __future__ import annotations

from torch import nn

from tunelab.errors import ModelError

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}


def replace_head(model: nn.Module, hidden: list[int], activation: str, dropout: float, num_labels: int) -> str:
    """Swap the single linear classifier for a small MLP (the course's 'add new layers'); returns the head's name.

    The head is the model's linear ``classifier`` (BERT-like) or ``score`` (decoder models); the MLP is
    Linear-activation-dropout per hidden size, then the output Linear.
    """
    name = next((n for n in ("classifier", "score") if isinstance(getattr(model, n, None), nn.Linear)), None)
    if name is None:
        raise ModelError(f"task.head.hidden: {type(model).__name__} has no single linear classification head "
                         "(classifier or score) to replace with an MLP; remove task.head.hidden for this model")
    width = getattr(model, name).in_features
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(width, size), _ACTIVATIONS[activation](), nn.Dropout(dropout)]
        width = size
    layers.append(nn.Linear(width, num_labels))
    setattr(model, name, nn.Sequential(*layers))
    return name
