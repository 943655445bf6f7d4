"""Subprocess entry: measure the extra peak RSS of one provider on one case (CPU).

    python -m lambda_kernels.bench._memworker '{"provider": ..., "case": {...}, "threads": N}'

Prints one JSON line: {"mem_fwd": bytes, "mem_fwdbwd": bytes, "method": str, "cpu_isa": the
LAMBDA_KERNELS_CPU_ISA this process saw, "variant": what ran} (a key is replaced by
"<key>_error" when that step raised).
"""
from __future__ import annotations

import json
import os
import sys


def main(arg: str) -> dict:
    spec = json.loads(arg)
    for path in spec.get("extra_paths", []):
        sys.path.insert(0, path)
    import torch
    torch.set_num_threads(int(spec.get("threads", torch.get_num_threads())))
    from .._cpu_isa import ENV_CPU_ISA
    from . import providers
    from .measure import make_steps, rss_extra_peak
    from .presets import Case

    case = Case.from_dict(spec["case"])
    device = torch.device("cpu")
    provider = providers.get(spec["provider"])
    module, _ = provider.build(case, device)
    x = providers.make_input(case, device)
    dy = providers.make_grad(case, device)
    fwd, fwd_bwd, clear = make_steps(module, x, dy, case.autocast_dtype)
    out: dict = {"cpu_isa": os.environ.get(ENV_CPU_ISA)}
    for key, fn in (("mem_fwd", fwd), ("mem_fwdbwd", fwd_bwd)):
        try:
            fn()  # warm-up: lazy initialisation, thread pools, kernel caches
            clear()
            out[key], out["method"] = rss_extra_peak(fn)
            clear()
        except Exception as exc:
            out[key + "_error"] = f"{type(exc).__name__}: {exc}".split("\n")[0][:200]
    out["variant"] = provider.ran(module, device)[1]
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])), flush=True)
