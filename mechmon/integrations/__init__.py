"""The training-loop integrations, each a thin layer over the :class:`mechmon.Monitor` engine.

- :mod:`mechmon.integrations.lightning`: ``MechMonitor``, the Lightning callback (``Trainer`` and Fabric);
- :mod:`mechmon.integrations.hf`: ``MechMonitorCallback``, the Hugging Face ``Trainer`` callback (and TRL's);
- :mod:`mechmon.integrations.base`: ``Integration``, their shared base (options, the step convention, close).

A plain loop needs none: ``Monitor(model, optimizer=...)`` and ``with monitor.step(step, batch):``. Importing this
package imports neither Lightning nor transformers; each module imports its own framework.
"""

from mechmon.integrations.base import Integration

__all__ = ["Integration"]
