"""Pure, stateless, vectorised formulas; probes wrap them."""

from mechmon.functional.induction import induction_scores, prev_token_scores, repeated_sequence_losses, repeated_tokens
from mechmon.functional.logits import absorption_gap, flatten_rows, softmax_collapse, top2_gap, zero_loss

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
]
