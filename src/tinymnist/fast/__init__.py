"""The CPU speed code: each piece computes what the PyTorch operations it replaces compute (up to float
rounding, or the same distribution for random masks), only faster for these small networks.

Only `runtime.py` imports it: it is applied there, in one place, by the runtime configuration.
"""

from .dropout import use_fast_dropout
from .flat import ExponentialAverage, flat_parameters, flatten_
from .kernels import fuse_relu_batchnorm, fuse_relu_batchnorm_maxpool, outer_affine_grid

__all__ = ["ExponentialAverage", "flat_parameters", "flatten_", "fuse_relu_batchnorm", "fuse_relu_batchnorm_maxpool",
           "outer_affine_grid", "use_fast_dropout"]
