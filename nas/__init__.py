"""Hardware-aware neural architecture search for mobile and edge devices: the engine."""

__version__ = "0.1.0"
