"""shapley_kernels: Shapley values and interactions for batched games, with fused kernels.

Stable public API (docs/api.md): shapley_values, interaction_index,
coalition_interaction, choose_method, choose_estimator, Estimate, instability, alignment_game,
region_phrase_interaction, dual_encoder_game, region_interaction, available_backends,
backend_status, max_game_region_values, late_interaction, late_interaction_max. Everything with a leading underscore is private.
"""
from ._backends import available_backends, backend_status
from ._estimate import Estimate
from .alignment import alignment_game, region_phrase_interaction
from .estimators import shapley_values, interaction_index, coalition_interaction, choose_method, EXACT_MAX_PLAYERS
from .approximators import choose_estimator
from .diagnostics import instability
from .max_game import max_game_region_values
from .late_interaction import late_interaction, late_interaction_max
from .token_level import dual_encoder_game, region_interaction, TransformerTower
