"""Static evidence for the Triton kernels, without a GPU: every kernel of the package is compiled
to a cubin for the given architectures and dtypes exactly as a launch on a shape would compile
it (the launch records of the ops, the default autotuning configuration after pruning, Triton's
own argument specialisation), then inspected with the tools Triton ships:

- registers, spill stores/loads and stack frame (ptxas -v on the generated PTX),
- shared memory (Triton's metadata),
- the SASS instruction mix of the main loop (the outermost backward branch of the kernel,
  nvdisasm): MMA (HMMA / HGMMA) against FFMA, FMUL, FADD, SHFL and memory instructions.

Targets (--check exits non-zero when one fails on the first shape, the GPU headline by
default): the window loop of every positional kernel contains MMA instructions for 16-bit
inputs (fp32 inputs use IEEE fp32 FMA on purpose: no MMA exists for them without TF32), and no
kernel spills at its default configuration.

    python -m lambda_kernels.tools.compile_check [--arch 80 90 100 120] [--dtypes bf16 fp32]
        [--shape headline resnet-14-r23 ...] [--all-configs] [--markdown FILE] [--check]

Must run without TRITON_INTERPRET (the interpreter compiles nothing).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field

from ..triton._tiles import unwrap_kernel
from ..bench.op_shapes import named_shapes
from .launches import op_launches

# (batch, heads, dim_k, dim_u, dim_v, height, width, table rows, table cols) by name, from the
# benchmark cases (bench/op_shapes.py): the GPU headline (lambda-bench --preset gpu-headline), the
# LambdaResNet stage shapes and the global-context seed case.
SHAPES = named_shapes()
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
POSITIONAL_KERNELS = ("lambda_output_fwd_kernel", "lambda_output_bwd_dq_kernel",
                      "lambda_output_bwd_dvalues_kernel",
                      "lambda_output_bwd_d_pos_table_partial_kernel")
MIX_COLUMNS = ("MMA", "FFMA", "FMUL", "FADD", "SHFL", "LDG", "LDS", "STS", "BAR", "all")


@dataclass
class Report:
    kernel: str
    arch: int
    dtype: str
    config: dict
    registers: int = -1
    spill_stores: int = -1
    spill_loads: int = -1
    stack: int = -1
    shared: int = -1
    loop_mix: Counter = field(default_factory=Counter)
    kernel_mma: int = 0

    @property
    def positional(self) -> bool:
        return self.kernel in POSITIONAL_KERNELS

    def problems(self) -> list[str]:
        found = []
        if self.spill_stores or self.spill_loads:
            found.append(f"spills {self.spill_stores}/{self.spill_loads} bytes")
        if self.positional and self.dtype != "fp32" and not self.loop_mix["MMA"]:
            found.append("no MMA in the window loop")
        return found


def launches_for(shape, dtype):
    """Every kernel launch of the four ops for one shape (meta tensors: nothing runs)."""
    import torch
    return op_launches(shape, getattr(torch, DTYPES[dtype]), "meta")


def resolve(launch, all_configs=False):
    """[(JITFunction, bound arguments, constexpr values, options)] for the default configuration
    of a launch (every configuration surviving the prune with all_configs; the compile check
    never runs under the interpreter, so the prune returns what a GPU would time)."""
    autotuner, heuristics, jit_fn = unwrap_kernel(launch.kernel)
    named = dict(zip(jit_fn.arg_names, launch.args))
    if autotuner is None:
        configs = [None]
    else:
        configs = autotuner.configs
        if autotuner.early_config_prune:
            configs = autotuner.early_config_prune(configs, named, **launch.kwargs)
        if not all_configs:
            configs = configs[:1]
    resolved = []
    for config in configs:
        kwargs = dict(launch.kwargs)
        options = {"num_warps": 4, "num_stages": 3}
        if config is not None:
            kwargs.update(config.kwargs)
            options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
        for wrapper in heuristics:
            for name, rule in wrapper.values.items():
                kwargs[name] = rule({**named, **kwargs})
        resolved.append((jit_fn, named, kwargs, options))
    return resolved


def compile_one(jit_fn, named, constexpr_values, options, arch):
    """Compile like a launch: Triton's own specialisation of the runtime arguments (values of 1
    become constants, multiples of 16 and aligned pointers are marked divisible)."""
    import triton
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend, GPUTarget
    from triton.compiler import ASTSource, make_backend

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    signature, constexprs, attrs = {}, {}, {}
    for index, param in enumerate(jit_fn.params):
        name = param.name
        if param.is_constexpr:
            signature[name] = "constexpr"
            constexprs[name] = constexpr_values[name]
            continue
        kind, attr = native_specialize_impl(BaseBackend, named[name], False, True, True)
        signature[name] = kind
        if kind == "constexpr":
            constexprs[name] = attr
        elif attr:
            attrs[(index,)] = backend.parse_attr(attr)
    source = ASTSource(fn=jit_fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=target, options=options)


def _ptxas(arch: int) -> str:
    """The ptxas Triton itself assembles `arch` with: newer Triton bundles a second ptxas for
    Blackwell (get_ptxas takes the arch), older ones one ptxas for every arch."""
    import inspect
    from triton.backends.nvidia import compiler
    get_ptxas = compiler.get_ptxas
    takes_arch = bool(inspect.signature(get_ptxas).parameters)
    return (get_ptxas(arch) if takes_arch else get_ptxas()).path


def _tool(name, arch: int = 90):
    if name == "ptxas":
        return _ptxas(arch)
    # nvdisasm: Triton's knob when it has one (it follows TRITON_NVDISASM_PATH), else the one
    # bundled beside ptxas.
    import triton
    knob = getattr(getattr(getattr(triton, "knobs", None), "nvidia", None), name, None)
    path = getattr(knob, "path", None)
    return path or os.path.join(os.path.dirname(_ptxas(90)), name)


def ptxas_usage(ptx: str, arch: int) -> dict:
    """Registers, spills and stack frame from `ptxas -v`, with the flags Triton compiles with."""
    from triton.backends.nvidia.compiler import sm_arch_from_capability
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        proc = subprocess.run([_tool("ptxas", arch), "-lineinfo", "-v", "--regAllocOptLevel=2",
                               f"--gpu-name={sm_arch_from_capability(arch)}", path, "-o",
                               os.path.join(tmp, "kernel.cubin")],
                              capture_output=True, text=True, check=True)
    log = proc.stdout + proc.stderr

    def number(pattern):
        match = re.search(pattern, log)
        return int(match.group(1)) if match else 0

    return dict(registers=number(r"Used (\d+) registers"),
                spill_stores=number(r"(\d+) bytes spill stores"),
                spill_loads=number(r"(\d+) bytes spill loads"),
                stack=number(r"(\d+) bytes stack frame"))


_INSTRUCTION = re.compile(r"/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_BRANCH_TARGET = re.compile(r"`\((\.L_x_\d+)\)")


def sass_instructions(cubin: bytes) -> tuple[list[str], list[tuple[int, int]]]:
    """(mnemonics in order, loops as (first, last) instruction indices) of a cubin: a loop is a
    branch back to a label at or before it."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        text = subprocess.run([_tool("nvdisasm"), "-c", path], capture_output=True, text=True,
                              check=True).stdout
    mnemonics, labels, branches = [], {}, []
    for line in text.splitlines():
        label = _LABEL.match(line.strip())
        if label:
            labels[label.group(1)] = len(mnemonics)
            continue
        match = _INSTRUCTION.search(line)
        if not match:
            continue
        mnemonics.append(match.group(1))
        target = _BRANCH_TARGET.search(line)
        if target and match.group(1) in ("BRA", "BRX", "JMP"):
            branches.append((target.group(1), len(mnemonics) - 1))
    loops = [(labels[name], at) for name, at in branches
             if name in labels and labels[name] < at]
    return mnemonics, loops


def instruction_mix(mnemonics) -> Counter:
    mix = Counter()
    for op in mnemonics:
        # mma.sync (HMMA/IMMA), Hopper's wgmma (HGMMA), Blackwell's tcgen05.mma (UTC*MMA)
        if op in ("HMMA", "HGMMA", "IMMA", "WGMMA") or (op.startswith("UTC") and
                                                         op.endswith("MMA")):
            mix["MMA"] += 1
        elif op in MIX_COLUMNS:
            mix[op] += 1
        elif op == "LDSM":  # shared-memory matrix loads feeding MMA
            mix["LDS"] += 1
        elif op == "LDGSTS":  # cp.async: global loads the pipeliner stages into shared memory
            mix["LDG"] += 1
    mix["all"] = len(mnemonics)
    return mix


def analyse(compiled, kernel, arch, dtype, config) -> Report:
    report = Report(kernel, arch, dtype, config, shared=compiled.metadata.shared)
    for name, value in ptxas_usage(compiled.asm["ptx"], arch).items():
        setattr(report, name, value)
    mnemonics, loops = sass_instructions(compiled.asm["cubin"])
    report.kernel_mma = instruction_mix(mnemonics)["MMA"]
    if loops:
        first, last = max(loops, key=lambda span: span[1] - span[0])
        report.loop_mix = instruction_mix(mnemonics[first:last + 1])
    return report


_CONFIG_NAMES = ("BLOCK_T", "BLOCK_H", "BLOCK_K", "BLOCK_V", "BLOCK_C", "BLOCK_J", "BLOCK_N")


def _config_text(constexprs, options) -> str:
    parts = [f"{name.removeprefix('BLOCK_')}={constexprs[name]}" for name in _CONFIG_NAMES
             if name in constexprs]
    return " ".join(parts + [f"w={options['num_warps']}", f"s={options['num_stages']}"])


def run(archs=(80, 90), dtypes=("bf16", "fp32"), shape="headline", all_configs=False,
        verbose=True) -> tuple[list[Report], list[Report]]:
    """(default-configuration reports for every kernel × arch × dtype on one shape, reports of
    every configuration surviving the prune at the last arch and first dtype when all_configs)."""
    defaults, sweep = [], []

    def compile_and_report(resolved, arch, dtype, into, tag):
        jit_fn, named, constexprs, options = resolved
        compiled = compile_one(jit_fn, named, constexprs, options, arch)
        report = analyse(compiled, jit_fn.__name__, arch, dtype, _config_text(constexprs, options))
        into.append(report)
        if verbose:
            print(f"{shape} {tag}{_line(report)}", flush=True)

    for arch in archs:
        for dtype in dtypes:
            for launch in launches_for(SHAPES[shape], dtype):
                compile_and_report(resolve(launch)[0], arch, dtype, defaults, "")
    if all_configs:
        arch, dtype = archs[-1], dtypes[0]
        for launch in launches_for(SHAPES[shape], dtype):
            for resolved in resolve(launch, all_configs=True):
                if resolved[0].__name__ in POSITIONAL_KERNELS:
                    compile_and_report(resolved, arch, dtype, sweep, "cfg ")
    return defaults, sweep


def _line(r: Report) -> str:
    mix = " ".join(f"{name}={r.loop_mix[name]}" for name in MIX_COLUMNS)
    verdict = "; ".join(r.problems()) or "ok"
    return (f"{'ok ' if not r.problems() else 'BAD'} sm_{r.arch} {r.dtype:4s} {r.kernel:40s} "
            f"regs={r.registers} spills={r.spill_stores}/{r.spill_loads} smem={r.shared} "
            f"loop[{mix}] [{r.config}] {verdict}")


_TABLE_HEAD = ["| kernel | arch | dtype | config | regs | spills (st/ld B) | smem B | "
               + " | ".join(f"loop {c}" for c in MIX_COLUMNS) + " | kernel MMA | verdict |",
               "|" + "---|" * (9 + len(MIX_COLUMNS))]


def markdown(results) -> str:
    """The report of [(shape name, default reports, configuration sweep)]; the first shape is
    the one the targets are checked on."""
    import triton
    lines = [
        "# Triton kernels: static compile check",
        "",
        f"`python -m lambda_kernels.tools.compile_check` (triton {triton.__version__}, no GPU): "
        "every kernel compiled for each architecture and dtype as a launch on the shape "
        "(B, h, k, u, v, H, W, Rh, Rw) compiles it, at its default configuration (the first "
        "autotuning configuration that survives pruning). Registers and spills from `ptxas -v`; "
        "shared memory from Triton; instruction counts per warp of one iteration of the main "
        "loop (the outermost backward branch; - where the kernel has no loop) from `nvdisasm`: "
        "MMA = HMMA (mma.sync) + HGMMA (wgmma, sm_90) + UTC*MMA (tcgen05.mma, sm_100), "
        "LDG includes cp.async (LDGSTS), LDS includes "
        "LDSM. fp32 inputs use IEEE fp32 products (FFMA) on purpose. On sm_90 one HGMMA is a "
        "whole warpgroup product (64×N×16 per instruction), so its counts are small next to "
        "sm_80's HMMA (16×8×16 per warp).",
    ]
    for index, (shape, defaults, sweep) in enumerate(results):
        bad = [f"{r.kernel} sm_{r.arch} {r.dtype}" for r in defaults if r.problems()]
        verdict = (f"{len(defaults) - len(bad)} of {len(defaults)} kernel compilations meet "
                   "the targets (MMA in every positional window loop for 16-bit inputs, no "
                   "spills at the default configurations)"
                   + (f"; missed: {', '.join(bad)}." if bad else "."))
        lines += ["", f"## `{shape}` {SHAPES[shape]}" + (" (the target shape)" if index == 0
                                                         else ""), "", verdict, ""]
        lines += _TABLE_HEAD + [_row(r) for r in defaults]
        if sweep:
            lines += ["", "Every configuration surviving the prune for the positional kernels, "
                      f"sm_{sweep[0].arch} {sweep[0].dtype} (what the autotuner times on a GPU):",
                      ""]
            lines += _TABLE_HEAD + [_row(r) for r in sweep]
    return "\n".join(lines) + "\n"


def _row(r: Report) -> str:
    mix = " | ".join(str(r.loop_mix[c]) if r.loop_mix else "-" for c in MIX_COLUMNS)
    return (f"| {r.kernel} | sm_{r.arch} | {r.dtype} | {r.config} | {r.registers} | "
            f"{r.spill_stores}/{r.spill_loads} | {r.shared} | {mix} | {r.kernel_mma} | "
            f"{'; '.join(r.problems()) or 'ok'} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90, 100, 120],
                        help="compute capabilities, e.g. 90 (Hopper), 100 and 120 (Blackwell)")
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=sorted(DTYPES))
    parser.add_argument("--shape", nargs="+", default=["headline"], choices=sorted(SHAPES),
                        help="shapes to compile for; the first is the one --check and "
                             "--all-configs apply to")
    parser.add_argument("--all-configs", action="store_true",
                        help="also compile every configuration the autotuner would time for the "
                             "positional kernels (first shape, last arch, first dtype)")
    parser.add_argument("--markdown", metavar="FILE", help="write the report as markdown")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if a default configuration spills or a positional window "
                             "loop has no MMA for 16-bit inputs")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("unset TRITON_INTERPRET: the interpreter does not compile", file=sys.stderr)
        return 2
    results = []
    for index, shape in enumerate(args.shape):
        defaults, sweep = run(args.arch, args.dtypes, shape, args.all_configs and index == 0)
        results.append((shape, defaults, sweep))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(results))
    target = results[0][1]
    bad = [r for r in target if r.problems()]
    print(f"{len(target)} kernels compiled, {len(bad)} miss a target")
    return 1 if args.check and bad else 0


if __name__ == "__main__":
    sys.exit(main())
