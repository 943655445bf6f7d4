"""lambda_kernels: fused kernels for the LambdaNetworks lambda layer (Bello, ICLR 2021).

Public API:
    LambdaLayer / λLayer      drop-in for lambda_networks.LambdaLayer (same state_dict)
    LambdaLayer1d             the same layer over sequences (B, C, L)
    LambdaLayer3d             the same layer over video and volumes (B, C, T, H, W)
    lambda_op                 the functional op on (q, keys, values, pos_table, bias)
    lambda_op3d               the same op over T×H×W volumes
    select_backend            which back end lambda_op would use for given inputs
    available_backends        every back end and why it cannot run here (None = runs)
    BackendUnavailableError   raised when an explicitly requested back end cannot run (or a
                              back end's knob names what this machine cannot run)
    reference                 the pure-PyTorch ground truth (module)
    cpu_isa / cpu_isa_levels  the CPU instruction-set level the cpu back end runs / can run
    use_cpu_isa               force a level inside a `with` block (tests, benchmarks)
    cpu_positional_method     how the cpu back end takes the positional sums (auto, direct,
                              spectral); use_cpu_positional_method forces one in a `with` block
"""
from . import reference
from ._cpu_isa import (cpu_isa, cpu_isa_levels, cpu_positional_method, use_cpu_isa,
                       use_cpu_positional_method)
from .functional import (BackendUnavailableError, available_backends, lambda_op, lambda_op3d,
                         select_backend)
from .layer import LambdaLayer, LambdaLayer1d, LambdaLayer3d, λLayer

__version__ = "0.1.0"

__all__ = [
    "LambdaLayer",
    "λLayer",
    "LambdaLayer1d",
    "LambdaLayer3d",
    "lambda_op",
    "lambda_op3d",
    "select_backend",
    "available_backends",
    "BackendUnavailableError",
    "reference",
    "cpu_isa",
    "cpu_isa_levels",
    "use_cpu_isa",
    "cpu_positional_method",
    "use_cpu_positional_method",
    "__version__",
]
