"""resnorm: signal propagation and norm preservation in deep residual networks.

Nothing runs at import: the submodules are pure functions and Flax modules.
"""

__version__ = "0.1.0"
