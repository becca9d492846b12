"""Distillation and staged long-context training of HyLo students: recipes (``align`` → ``distill`` → ``long``),
streamed data, chunked KL, and the accelerate trainer :func:`run_recipe` shared by ``hylo-search train`` /
``promote`` and the search's proxy objective."""

from .checkpoint import RunMismatchError, load_weights
from .data import DataError
from .losses import distill_loss, distill_loss_reference, token_loss
from .recipe import (
                     GROUPS,
                     AlignStage,
                     DataConfig,
                     DistillStage,
                     LongStage,
                     Recipe,
                     RecipeError,
                     load_recipe,
                     shipped_recipes,
)
from .rope import set_rope_parameters, set_teacher_rope
from .stages import converted_layers, evaluate, parameter_groups
from .trainer import NonFiniteLossError, StageResult, StepInfo, TrainResult, make_accelerator, run_recipe

__all__ = [
    "GROUPS",
    "AlignStage",
    "DataConfig",
    "DataError",
    "DistillStage",
    "LongStage",
    "NonFiniteLossError",
    "Recipe",
    "RecipeError",
    "RunMismatchError",
    "StageResult",
    "StepInfo",
    "TrainResult",
    "converted_layers",
    "distill_loss",
    "distill_loss_reference",
    "evaluate",
    "load_recipe",
    "load_weights",
    "make_accelerator",
    "parameter_groups",
    "run_recipe",
    "set_rope_parameters",
    "set_teacher_rope",
    "shipped_recipes",
    "token_loss",
]
