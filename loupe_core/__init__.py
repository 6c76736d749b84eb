"""loupe_core: LOUPE pretraining (NeurIPS 2022) on the shapley_kernels engine.

Imports go one way: loupe_core uses shapley_kernels, never the reverse.
"""
__version__ = "0.1.0"
