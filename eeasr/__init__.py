"""eeasr: the shared vocabulary of the toolchain (features, text, manifests, metrics).

This package must never import torch or tensorflow: the host and the firmware tools depend on it.
"""

__version__ = "0.1.0"
