"""Timing, memory and the machine's matmul rate.

Timing (time_interleaved): the providers of one measurement take turns, repeat by repeat:
`warmup` untimed calls of each, then rounds A B A B ... of one timed call each, up to `repeats`
rounds (stopping early once the provider that spent most has spent `max_time` seconds and at
least min(3, repeats) rounds are done; at least 1 if a warm-up call already took longer than
`max_time`). Every provider so gets the same number of calls, and call i of one provider ran
next to call i of another: pair_ratios divides them pair by pair, so a ratio holds when the
machine's speed drifts during the measurement. CPU calls are timed with time.perf_counter
(through `now`), CUDA calls with torch.cuda.Event pairs on the current stream.
"fwd" runs the module in eval mode under torch.no_grad (inference); "fwd+bwd" runs it in
train mode with x.requires_grad and backpropagates a fixed random dy (a training step without
the optimiser).

Peak memory ("extra peak": memory above what the module, x and dy already hold):
  CUDA  torch.cuda.max_memory_allocated() - memory_allocated() after setup, in-process.
  CPU   a fresh subprocess per provider and case (python -m lambda_kernels.bench._memworker):
        it builds the module and input and runs one untimed warm-up step, frees, trims
        malloc, reads VmRSS, resets the kernel's peak-RSS mark (/proc/self/clear_refs = 5),
        runs one step and reads VmHWM. Reported: VmHWM - VmRSS(after setup). glibc is told
        to mmap every allocation >= 128 KiB (MALLOC_MMAP_THRESHOLD_) so freed tensors leave
        RSS and reused heap cannot hide a peak. Where clear_refs is missing it falls back to
        ru_maxrss (lifetime peak) and says so.
"""
from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Optional

import torch


# --------------------------------------------------------------------------------------------
# statistics


def summarize(samples: list[float]) -> dict:
    """median, IQR (q25, q75), min, max and count of a list of seconds."""
    if not samples:
        return {}
    s = sorted(samples)
    if len(s) >= 2:
        q = statistics.quantiles(s, n=4, method="inclusive")
        q25, q75 = q[0], q[2]
    else:
        q25 = q75 = s[0]
    return {"median": statistics.median(s), "q25": q25, "q75": q75, "min": s[0], "max": s[-1],
            "n": len(s)}


def now() -> float:
    """The clock of CPU timings (a function, so tests can put a fake clock in its place)."""
    return time.perf_counter()


def _timed_call(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        return a.elapsed_time(b) / 1e3
    t0 = now()
    fn()
    return now() - t0


def time_interleaved(fns: list[Callable[[], object]], device: torch.device, *, warmup: int,
                     repeats: int, max_time: float = float("inf")) -> list:
    """Seconds per call of each of `fns`, the calls interleaved round by round (module doc).
    One entry per fn: its list of seconds, or the exception it raised (a fn that raises leaves
    the rotation; the others go on)."""
    cuda = device.type == "cuda"
    results: list = [[] for _ in fns]
    slow = False
    for i, fn in enumerate(fns):
        for _ in range(warmup):
            try:
                t0 = now()
                fn()
                if cuda:
                    torch.cuda.synchronize(device)
                seconds = now() - t0
            except Exception as exc:
                results[i] = exc.with_traceback(None)  # its frames would keep tensors alive
                break
        else:
            slow = slow or (warmup > 0 and seconds > max_time)
    live = [i for i, r in enumerate(results) if isinstance(r, list)]
    spent = [0.0] * len(fns)
    # at least 3 rounds, unless one warm-up call alone exceeded max_time
    floor = 1 if slow else min(3, repeats)
    for done in range(1, repeats + 1):
        for i in list(live):
            try:
                seconds = _timed_call(fns[i], device)
            except Exception as exc:
                results[i] = exc.with_traceback(None)
                live.remove(i)
                continue
            results[i].append(seconds)
            spent[i] += seconds
        if not live or (done >= floor and max(spent[i] for i in live) > max_time):
            break
    return results


def time_calls(fn: Callable[[], object], device: torch.device, *, warmup: int, repeats: int,
               max_time: float = float("inf")) -> list[float]:
    """Seconds per call of fn alone (time_interleaved with one fn; its exception raised)."""
    (samples,) = time_interleaved([fn], device, warmup=warmup, repeats=repeats,
                                  max_time=max_time)
    if isinstance(samples, BaseException):
        raise samples
    return samples


def pair_ratios(base: list[float], mine: list[float]) -> dict:
    """summarize() of base[i] / mine[i] over the repeat pairs i (the i-th call of each, timed
    next to each other by time_interleaved): median, IQR, min, max and the number of pairs;
    {} when there is no pair."""
    return summarize([b / m for b, m in zip(base, mine) if m > 0])


# --------------------------------------------------------------------------------------------
# machine


def matmul_rate(device: torch.device, dtype: Optional[torch.dtype] = None,
                size: Optional[int] = None, repeats: int = 5) -> dict:
    """Best-of-`repeats` FLOP/s of one large square torch.mm (fp32 on CPU, bf16 on CUDA)."""
    cuda = device.type == "cuda"
    dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
    size = size or (8192 if cuda else 2048)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g).to(device, dtype)
    b = torch.randn(size, size, generator=g).to(device, dtype)
    samples = time_calls(lambda: torch.mm(a, b), device, warmup=1, repeats=repeats)
    best = min(samples)
    return {"flops_per_s": 2.0 * size ** 3 / best, "size": size,
            "dtype": str(dtype).replace("torch.", ""), "seconds": best}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import platform
    name = name or platform.processor() or platform.machine()
    threads = torch.get_num_threads()
    return f"{name} ({threads} thread{'s' if threads != 1 else ''})"


# --------------------------------------------------------------------------------------------
# one training / inference step


def make_steps(module: torch.nn.Module, x: torch.Tensor, dy: torch.Tensor,
               autocast: Optional[torch.dtype] = None):
    """(forward-only callable, forward+backward callable, clear-gradients callable); with
    `autocast`, both forwards run under torch.autocast in that dtype."""
    import contextlib
    x_grad = x.detach().clone().requires_grad_(True)
    amp = (lambda: torch.autocast(x.device.type, dtype=autocast)) if autocast else \
        contextlib.nullcontext

    def clear():
        for p in module.parameters():
            p.grad = None
        x_grad.grad = None

    def fwd():
        module.eval()
        with torch.no_grad(), amp():
            return module(x)

    def fwd_bwd():
        module.train()
        clear()
        with amp():
            y = module(x_grad)
        y.backward(dy.to(y.dtype))
        return y

    return fwd, fwd_bwd, clear


def _mm_call(device: torch.device, dtype: torch.dtype, size: int):
    """(a torch.mm call on two seeded size x size matrices of `dtype`, its FLOP)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g).to(device, dtype)
    b = torch.randn(size, size, generator=g).to(device, dtype)
    return (lambda: torch.mm(a, b)), 2.0 * size ** 3


def positional_kernel_rate(backend: str, case, device: torch.device, *, warmup: int,
                           repeats: int, max_time: float, peak_flops: Optional[float] = None,
                           mm_size: Optional[int] = None) -> dict:
    """The positional kernel of a fused back end alone (op lambda_output, and its backward) on
    the shapes of `case`, timed in turn with torch.mm (time_interleaved: kernel, mm in the
    run's matmul dtype — fp32 on CPU, bf16 on CUDA — and, for a bf16 / fp16 case on CPU, mm in
    that dtype too): medians, useful FLOP/s (providers.flops_positional, forward and backward;
    the "fwdbwd" entry times the backward op alone), and per mode the fraction of the mm rate
    as the median over repeat pairs of (kernel FLOP/s) / (mm FLOP/s): frac_peak_<mode> against
    the run's matmul dtype, frac_mm_<dtype>_<mode> against each, with its spread in
    <key>_pairs. (`peak_flops`, the rate measured at the start of the run, is kept as
    start_of_run_frac_<mode> for comparison.)"""
    from .. import backends
    from .op_shapes import case_shape, op_inputs
    from .providers import flops_positional

    ops = backends.get(backend).ops()
    shape = case_shape(case)
    q, _, values, table, lam = op_inputs(shape, case.torch_dtype, device, seed=2)
    b, h, _, _, v, hh, ww = shape[:7]
    dy = torch.randn(b, h, v, hh, ww, generator=torch.Generator().manual_seed(3)).to(
        device=device, dtype=case.torch_dtype)
    cuda = device.type == "cuda"
    mm_dtypes = [torch.bfloat16 if cuda else torch.float32]
    if case.torch_dtype in (torch.bfloat16, torch.float16) and case.torch_dtype not in mm_dtypes:
        mm_dtypes.append(case.torch_dtype)
    size = mm_size or (4096 if cuda else 1024)
    mms = [_mm_call(device, dtype, size) for dtype in mm_dtypes]
    names = [str(dtype).replace("torch.", "") for dtype in mm_dtypes]
    out = {"backend": backend, "useful_flop": flops_positional(case),
           "useful_flop_backward": flops_positional(case, backward=True),
           "mm_size": size, "mm_dtypes": names, "mm_flop_s": {}}
    calls = {"fwd": lambda: ops.lambda_output(q, values, table, lam),
             "fwdbwd": lambda: ops.lambda_output_backward(dy, q, values, table, lam)}
    for mode, flop in (("fwd", out["useful_flop"]), ("fwdbwd", out["useful_flop_backward"])):
        results = time_interleaved([calls[mode]] + [call for call, _ in mms], device,
                                   warmup=warmup, repeats=repeats, max_time=max_time)
        for samples in results:
            if isinstance(samples, BaseException):
                raise samples
        kernel = results[0]
        out[mode] = summarize(kernel)
        out[f"flop_s_{mode}"] = flop / out[mode]["median"]
        for name, (_, mm_flop), mm_samples in zip(names, mms, results[1:]):
            pairs = pair_ratios(mm_samples, kernel)          # t(mm) / t(kernel)
            pairs = {k: (val * flop / mm_flop if k != "n" else val) for k, val in pairs.items()}
            out[f"frac_mm_{name}_{mode}"] = pairs.get("median")
            out[f"frac_mm_{name}_{mode}_pairs"] = pairs
            out["mm_flop_s"].setdefault(name, {})[mode] = mm_flop / summarize(mm_samples)[
                "median"]
        out[f"frac_peak_{mode}"] = out[f"frac_mm_{names[0]}_{mode}"]
        out[f"frac_peak_{mode}_pairs"] = out[f"frac_mm_{names[0]}_{mode}_pairs"]
        out[f"start_of_run_frac_{mode}"] = (out[f"flop_s_{mode}"] / peak_flops
                                            if peak_flops and peak_flops == peak_flops else None)
    return out


def cuda_extra_peak(fn: Callable[[], object], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    out = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del out
    return int(peak)


# --------------------------------------------------------------------------------------------
# CPU peak RSS, in a subprocess


def _status_kb(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _trim() -> None:
    gc.collect()
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except Exception:
        pass


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_extra_peak(fn: Callable[[], object]) -> tuple[int, str]:
    """Extra peak RSS in bytes while fn runs (in *this* process) and the method used."""
    _trim()
    base = _status_kb("VmRSS")
    if base is not None and _reset_hwm():
        out = fn()
        peak = _status_kb("VmHWM")
        del out
        _trim()
        return max(0, (peak - base)) * 1024, "VmHWM-VmRSS (clear_refs)"
    import resource
    base_kb = base if base is not None else 0
    out = fn()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    del out
    return max(0, peak - base_kb) * 1024, "ru_maxrss-VmRSS (lifetime peak; may be high)"


def cpu_memory_subprocess(provider: str, case_dict: dict, threads: int,
                          timeout: float = 600.0, extra_paths: Optional[list[str]] = None) -> dict:
    """Run _memworker for one provider and case; returns its JSON (or {'error': ...})."""
    env = dict(os.environ)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
    env.setdefault("MALLOC_TRIM_THRESHOLD_", str(128 * 1024))
    env["OMP_NUM_THREADS"] = str(threads)
    payload = json.dumps({"provider": provider, "case": case_dict, "threads": threads,
                          "extra_paths": extra_paths or []})
    try:
        proc = subprocess.run([sys.executable, "-m", "lambda_kernels.bench._memworker", payload],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"memory subprocess timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        if proc.returncode < 0:
            tail = f"killed by signal {-proc.returncode} (out of memory?)"
        return {"error": f"memory subprocess failed (rc={proc.returncode}): {tail}"[:300]}
    return json.loads(lines[-1])
