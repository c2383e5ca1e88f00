"""What people usually do when a built-in alert fires: one line per rule name, shown with the alert.

The same lines are the "what to do" column of docs/metrics.md (a test keeps the two equal). Rules marked
experimental have not been shown to fire before the trouble on any run of the alert benchmark
(``benchmarks/alerts.py``); they are info-level.
"""

from __future__ import annotations

_QK = "qk-norm or a lower learning rate"

#: rule name -> the usual response, with its source
ADVICE: dict[str, str] = {
    "induction_emergence": "nothing: induction heads formed, a phase change of every LM (Olsson et al., 2022)",
    "prefix_match_emergence": "nothing: induction heads formed, a phase change of every LM (Olsson et al., 2022)",
    "induction_load_bearing": "nothing: the model now relies on its best induction heads to copy (ablation)",
    "head_turnover": "nothing: the same job, other heads (Tigges et al., 2024); the heatmap shows which took over",
    "icl_emergence": "nothing: in-context learning works now (Olsson et al., 2022)",
    "softmax_collapse": "weight decay, a float64 loss or StableMax (Prieto et al., 2025)",
    "softmax_collapse_warning": "weight decay, a float64 loss or StableMax (Prieto et al., 2025)",
    "logit_scale_precursor": "weight decay or the ⊥Grad optimizer before collapse sets in (Prieto et al., 2025)",
    "nlm_regime": "weight decay or the ⊥Grad optimizer (Prieto et al., 2025)",
    "log_z_drift": "a z-loss (1e-4 · log² Z) or weight decay (Wortsman et al., 2023); experimental",
    "attention_logit_growth": f"{_QK}, or QK-Clip (Wortsman et al., 2023; Kimi K2, 2025)",
    "attention_entropy_collapse": f"{_QK}, or σReparam (Zhai et al., 2023)",
    "sink_emerged": "nothing: trained LMs keep a sink on the first token (Gu et al., 2025)",
    "sink_lost": "look at what changed then: data, context length, learning rate (Gu et al., 2025); experimental",
    "massive_activation_emergence": "watch fp16 overflow and quantisation error (Sun et al., 2024)",
    "plateau_start": "wait, or shorten it with a higher learning rate or a curriculum (Gopalani & Hu, 2025)",
    "plateau_exit": "nothing: the plateau is over (Gopalani & Hu, 2025)",
    "repetition_bias": "a sign of the plateau, gone when it ends (Gopalani & Hu, 2025)",
    "hidden_progress": "keep training: the mechanism forms under a flat loss (Gopalani & Hu, 2025)",
    "dimensional_collapse": "a lower learning rate, or look for repeated data (Garrido et al., RankMe, 2023)",
    "routing_collapse": "a load-balancing loss or bias balancing, a router z-loss (Fedus et al., 2022; DeepSeek-V3)",
    "generalization_onset": "nothing: the memorised samples' pathways converge (Li, Fan & Zhou, 2025)",
    "generalization_in_progress": "nothing: the memorised samples' pathways converge (Li, Fan & Zhou, 2025)",
    "probe_failed": "read the warning above it: the probe is off for the rest of the run, training goes on",
    "non_finite": "resume from the last good checkpoint with a lower learning rate, or bf16 instead of fp16",
}


def advice(rule: str) -> str:
    """The usual response to alert ``rule``; ``""`` for a rule of your own."""
    return ADVICE.get(rule, "")
