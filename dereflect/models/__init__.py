"""Networks: the multi-view teacher, the single-image students, presets and checkpoints."""

from dereflect.models.registry import (
    PRESETS,
    count_gmacs,
    count_params,
    create_model,
    list_models,
    load_checkpoint,
    load_deployable,
    read_checkpoint_info,
    save_checkpoint,
    shipped_weights,
)

__all__ = [
    "PRESETS",
    "count_gmacs",
    "count_params",
    "create_model",
    "list_models",
    "load_checkpoint",
    "load_deployable",
    "read_checkpoint_info",
    "save_checkpoint",
    "shipped_weights",
]
