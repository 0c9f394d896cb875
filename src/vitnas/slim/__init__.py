"""ViT-Slim: soft masks on attention dims, MLP units and tokens, L1-sparsified, cut to a FLOPs or
params budget and physically pruned into a smaller standalone `vitnas.build` model."""

from vitnas.slim.budget import BudgetError, BudgetSolver, SlimPlan, solve_budget, token_plan
from vitnas.slim.masks import MaskedViT
from vitnas.slim.prune import load_model, load_weights, prune, save_model
from vitnas.slim.train import SlimTrainer

__all__ = ["BudgetError", "BudgetSolver", "MaskedViT", "SlimPlan", "SlimTrainer", "load_model", "load_weights",
           "prune", "save_model", "solve_budget", "token_plan"]
