"""Recipe files: save the settings of every step as one JSON recipe, or set every step from one.

A recipe is :class:`prunestudio.core.config.Recipe` (the file the CLI runs with ``--recipe``);
:meth:`AppState.recipe` builds it from the controls, :meth:`AppState.apply_recipe` hands a loaded
one to every panel. The ``*_dialog`` functions ask for the file, report a failure to the error
dialog (:mod:`errors`), and return the path on success, ``None`` otherwise.
"""

from __future__ import annotations

from PySide6.QtWidgets import QWidget

from ..core.config import Recipe
from ..core.errors import ConfigError, PruneStudioError
from . import dialogs, errors
from .state import AppState

RECIPE_FILTERS = "Prune Studio recipes (*.json);;All files (*)"


def save_recipe(state: AppState, path: str) -> None:
    """Write the recipe of the controls to ``path``; ConfigError while a setting is invalid."""
    if state.prune_config is None:
        raise ConfigError(f"The pruning settings are invalid: {state.prune_error}")
    state.recipe().save(path)
    state.log(f"Recipe saved to {path}")


def load_recipe(state: AppState, path: str) -> Recipe:
    """Read the recipe at ``path`` and set every step from it."""
    recipe = Recipe.load(path)
    state.apply_recipe(recipe)
    state.log(f"Recipe loaded from {path}")
    return recipe


def save_recipe_dialog(parent: QWidget | None, state: AppState) -> str | None:
    path = dialogs.get_save_file(parent, "Save recipe", RECIPE_FILTERS, "recipes", "recipe.json")
    if not path:
        return None
    if not path.endswith(".json"):
        path += ".json"
    try:
        save_recipe(state, path)
    except (PruneStudioError, OSError) as e:
        errors.report(e, context="saving the recipe")
        return None
    return path


def load_recipe_dialog(parent: QWidget | None, state: AppState) -> str | None:
    path = dialogs.get_open_file(parent, "Load recipe", RECIPE_FILTERS, "recipes")
    if not path:
        return None
    try:
        load_recipe(state, path)
    except PruneStudioError as e:
        errors.report(e, context="loading the recipe")
        return None
    return path
