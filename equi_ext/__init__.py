"""equi-ext: test-time robustness by restoring feature equivariance (Mao et al., ICML 2023)."""

__version__ = "0.1.0"
