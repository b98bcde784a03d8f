"""Recipes: pydantic models of a run, YAML loading and ``--set`` overrides.

A recipe is a YAML file with four sections (``data``, ``model``, ``baselines``,
``train``, ``eval``) plus a name, description and seed. Every section rejects
unknown keys and the error names the closest valid key, so a misspelt option
never silently falls back to a default (torchdeq's ``args.get`` pitfall).

Pipeline: ``load_recipe(name_or_path, overrides)`` → YAML dict → overrides
applied on the dict → :class:`Recipe` validated → returned. The resolved
recipe is saved with every run (``Recipe.to_yaml``).

Layout: :mod:`~tertulia.config.base` holds the base section, the recipe base and
the sections shared by several jobs; one module per job holds that job's recipe
(:mod:`~tertulia.config.forecast`, :mod:`~tertulia.config.classical`,
:mod:`~tertulia.config.sequence`, :mod:`~tertulia.config.velora`,
:mod:`~tertulia.config.continual`, :mod:`~tertulia.config.lm`,
:mod:`~tertulia.config.recall`); :mod:`~tertulia.config.load` reads, overrides,
dispatches on ``task`` and validates. This module re-exports their public names.
"""

from ..errors import ConfigError as ConfigError
from .base import DataConfig as DataConfig
from .base import InitialConditionConfig as InitialConditionConfig
from .base import NoiseConfig as NoiseConfig
from .base import OptimizerConfig as OptimizerConfig
from .base import RecipeBase as RecipeBase
from .base import RuntimeConfig as RuntimeConfig
from .base import Section as Section
from .base import TrainConfig as TrainConfig
from .base import TrainLoopConfig as TrainLoopConfig
from .classical import IslandConfig as IslandConfig
from .classical import IslandRecipe as IslandRecipe
from .classical import LQRConfig as LQRConfig
from .classical import SeriesDataConfig as SeriesDataConfig
from .classical import SeriesModelsConfig as SeriesModelsConfig
from .classical import SeriesRecipe as SeriesRecipe
from .continual import ContinualModelConfig as ContinualModelConfig
from .continual import ContinualRecipe as ContinualRecipe
from .forecast import AdversarialConfig as AdversarialConfig
from .forecast import BaselinesConfig as BaselinesConfig
from .forecast import BlocksConfig as BlocksConfig
from .forecast import DEQConfig as DEQConfig
from .forecast import EvalConfig as EvalConfig
from .forecast import ForecastTrainConfig as ForecastTrainConfig
from .forecast import GraphConfig as GraphConfig
from .forecast import ModelConfig as ModelConfig
from .forecast import OODConfig as OODConfig
from .forecast import Recipe as Recipe
from .forecast import SolverConfig as SolverConfig
from .lm import LMDataConfig as LMDataConfig
from .lm import LMModelConfig as LMModelConfig
from .lm import LMRecipe as LMRecipe
from .load import TASKS as TASKS
from .load import AnyRecipe as AnyRecipe
from .load import apply_override as apply_override
from .load import load_recipe as load_recipe
from .load import load_resolved as load_resolved
from .load import read_yaml as read_yaml
from .load import recipe_class as recipe_class
from .load import recipe_description as recipe_description
from .load import recipes_dir as recipes_dir
from .load import resolve_recipe_path as resolve_recipe_path
from .load import shipped_recipes as shipped_recipes
from .load import validate_recipe as validate_recipe
from .recall import RecallDataConfig as RecallDataConfig
from .recall import RecallModelConfig as RecallModelConfig
from .recall import RecallRecipe as RecallRecipe
from .sequence import CompressConfig as CompressConfig
from .sequence import SequenceDataConfig as SequenceDataConfig
from .sequence import SequenceModelConfig as SequenceModelConfig
from .sequence import SequenceRecipe as SequenceRecipe
from .velora import VELORA_GROUPS as VELORA_GROUPS
from .velora import ExpertConfig as ExpertConfig
from .velora import FinetuneConfig as FinetuneConfig
from .velora import FusionConfig as FusionConfig
from .velora import RouterConfig as RouterConfig
from .velora import UnfreezeStep as UnfreezeStep
from .velora import VeloraDataConfig as VeloraDataConfig
from .velora import VeloraRecipe as VeloraRecipe
