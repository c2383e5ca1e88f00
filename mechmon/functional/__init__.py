"""Pure, stateless, vectorised formulas; probes wrap them."""

from mechmon.functional.collapse import effective_rank, gram_with_ones, mean_pairwise_cosine, participation_ratio
from mechmon.functional.induction import induction_scores, prev_token_scores, repeated_sequence_losses, repeated_tokens
from mechmon.functional.logits import absorption_gap, flatten_rows, softmax_collapse, top2_gap, zero_loss
from mechmon.functional.pathway import mean_edit_distance, pathway_selection, sample_routing, serialize_pathways
from mechmon.functional.plateau import attention_progress, loss_at_positions, repetition_frac, select_positions
from mechmon.functional.routing import expert_counts, load_stats, routing_entropy

__all__ = [
    "induction_scores",
    "prev_token_scores",
    "repeated_sequence_losses",
    "repeated_tokens",
    "softmax_collapse",
    "zero_loss",
    "top2_gap",
    "absorption_gap",
    "flatten_rows",
    "mean_pairwise_cosine",
    "gram_with_ones",
    "effective_rank",
    "participation_ratio",
    "select_positions",
    "loss_at_positions",
    "repetition_frac",
    "attention_progress",
    "routing_entropy",
    "expert_counts",
    "load_stats",
    "sample_routing",
    "pathway_selection",
    "serialize_pathways",
    "mean_edit_distance",
]
