"""Flywheel data selection: which unlabelled rows to label or train on next.

    from app.selection import SelectionInput, select, available
    res = select("entropy", SelectionInput(n=len(p), probs=p, exclude=done), budget=100, seed=0)
    res.selected, res.scores["entropy"], res.reasons

Strategies register themselves by name on import (see ``available()``); the pure score functions
(entropy, margin, knn_shapley, ...) are exported for use in Ray Data ``map_batches`` UDFs. Curriculum
ordering lives in ``app.selection.curriculum``. faiss, scipy and scikit-learn are imported lazily.
"""

from app.selection.registry import (
    SelectionInput,
    SelectionResult,
    Strategy,
    available,
    get,
    register,
    select,
)
from app.selection.validation import SelectionInputError, validate_input

# Importing the strategy modules registers their strategies.
from app.selection.uncertainty import entropy, least_confidence, margin  # noqa: E402
from app.selection.generation import distinct_ratio, logprob_stats, semantic_dispersion, token_entropy
from app.selection.diversity import select_kcenter, select_kmeans, select_mmr  # noqa: F401
from app.selection.diverse_batch import select_diverse_batch  # noqa: F401
from app.selection.facility import knn_graph  # noqa: F401
from app.selection.hard import select_disagreement, select_loss  # noqa: F401
from app.selection.value import grad_similarity, knn_shapley, tmc_shapley
from app.selection.combined import schedule
from app.selection.curriculum import adaptive_competence, competence, curriculum_order

__all__ = [
    "SelectionInput", "SelectionResult", "SelectionInputError", "Strategy", "available", "get", "register",
    "select", "validate_input", "entropy", "least_confidence", "margin", "distinct_ratio", "semantic_dispersion",
    "logprob_stats", "token_entropy", "knn_shapley", "tmc_shapley", "grad_similarity", "schedule",
    "competence", "adaptive_competence", "curriculum_order",
]
