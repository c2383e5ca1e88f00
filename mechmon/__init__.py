"""mechmon: live mechanistic monitoring of transformer training (any loop: Lightning, Fabric, HF Trainer, plain)."""

from mechmon.adapters import (
    Adapter,
    HFAdapter,
    HookPoint,
    ModuleAdapter,
    StructuralAdapter,
    TransformerLensAdapter,
    resolve_adapter,
)
from mechmon.alerts import Alert, Collapse, Compound, Emergence, NonFinite, Phase, Plateau, Rule, Threshold, Trend
from mechmon.callbacks import MechMonitor
from mechmon.capture import capture
from mechmon.engine import Monitor, evaluate, snapshot_forward
from mechmon.naming import KEY_RE, metric_key
from mechmon.probe import Probe, SnapshotProbe, StreamingProbe
from mechmon.probes import (
    AttentionEntropyProbe,
    AttentionLogitProbe,
    AttentionProgressProbe,
    AttentionSinkProbe,
    CollapseProbe,
    ICLProbe,
    InductionProbe,
    LogitsProbe,
    MassiveActivationProbe,
    NLMProbe,
    PathwayProbe,
    PrefixMatchingProbe,
    RankProbe,
    RepetitionProbe,
    RoutingProbe,
    WeightsProbe,
)
from mechmon.registry import get_probe, list_probes, register_probe
from mechmon.schedule import at, every, log_spaced, union

__version__ = "0.1.0"

__all__ = [
    "Monitor",
    "MechMonitor",
    "evaluate",
    "snapshot_forward",
    "Probe",
    "SnapshotProbe",
    "StreamingProbe",
    "InductionProbe",
    "PrefixMatchingProbe",
    "ICLProbe",
    "MassiveActivationProbe",
    "AttentionSinkProbe",
    "AttentionLogitProbe",
    "AttentionEntropyProbe",
    "LogitsProbe",
    "NLMProbe",
    "WeightsProbe",
    "CollapseProbe",
    "RankProbe",
    "RepetitionProbe",
    "AttentionProgressProbe",
    "RoutingProbe",
    "PathwayProbe",
    "Adapter",
    "HookPoint",
    "HFAdapter",
    "ModuleAdapter",
    "StructuralAdapter",
    "TransformerLensAdapter",
    "resolve_adapter",
    "capture",
    "Alert",
    "Rule",
    "Threshold",
    "Emergence",
    "Collapse",
    "Plateau",
    "Trend",
    "Compound",
    "Phase",
    "NonFinite",
    "every",
    "log_spaced",
    "at",
    "union",
    "metric_key",
    "KEY_RE",
    "register_probe",
    "get_probe",
    "list_probes",
    "__version__",
]
