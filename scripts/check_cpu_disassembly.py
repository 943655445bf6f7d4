"""Static checks of the compiled CPU kernels, read from the disassembly (objdump):

1. Every register tile (tile_kernel<...> of each instruction-set level, the bf16
   pair_tile_kernel<...> of the levels that have one, and the AMX tile loop amx_tile_kernel<...>)
   keeps its operands in registers: no stack access (spill or reload) inside the innermost loop
   that does the multiply-adds (for AMX: the tile loads and tdpbf16ps).
2. Wide instructions stay inside the code compiled for them: a function that touches a zmm
   register belongs to the avx512, avx512_bf16 or amx kernels, one that touches a ymm register
   to the avx2, avx512, avx512_bf16 or amx kernels, one that touches a tile register (tmm) to
   the amx kernels. Anything else would be executed on CPUs that lack the instructions.

    python scripts/check_cpu_disassembly.py lambda_kernels/_C*.so
    python scripts/check_cpu_disassembly.py --objdump aarch64-linux-gnu-objdump isa_neon.o

Exit status 1 with a report when a check fails.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import dataclass, field

FUNCTION = re.compile(r"^[0-9a-f]+ <(?P<name>.+)>:$")
INSTRUCTION = re.compile(r"^\s*(?P<addr>[0-9a-f]+):\s+(?P<text>.+)$")
BRANCH = re.compile(r"^(j[a-z]+|b\.[a-z]+|b|cbn?z|tbn?z)\s+(?:[a-z0-9]+,\s*)*(?:#?\d+,\s*)?"
                    r"(?P<target>[0-9a-f]+)\b")
MULTIPLY_ADD = re.compile(r"^(vfn?madd|vdpbf16ps|tdpbf16ps|fmla|mulp[sd]|fmul)")
STACK = re.compile(r"\(%rsp\)|\(%rbp\)|%rsp,|\[sp\b|\[x29\b")
LEVELS = {"zmm": ("::avx512::", "::avx512_bf16::", "::amx::"),
          "ymm": ("::avx2::", "::avx512::", "::avx512_bf16::", "::amx::"),
          "tmm": ("::amx::",)}


@dataclass
class Function:
    name: str
    instructions: list[tuple[int, str]] = field(default_factory=list)


def disassemble(path: str, objdump: str) -> list[Function]:
    text = subprocess.run([objdump, "-d", "-C", "--no-show-raw-insn", path], check=True,
                          capture_output=True, text=True).stdout
    functions: list[Function] = []
    for line in text.splitlines():
        match = FUNCTION.match(line)
        if match:
            functions.append(Function(match["name"]))
            continue
        match = INSTRUCTION.match(line)
        if match and functions:
            functions[-1].instructions.append((int(match["addr"], 16), match["text"].strip()))
    return functions


def innermost_multiply_add_loops(fn: Function) -> list[list[str]]:
    """Bodies [target, branch] of the backward branches that contain multiply-adds and no other
    backward branch (the innermost loops doing the arithmetic)."""
    loops = []
    for index, (addr, text) in enumerate(fn.instructions):
        match = BRANCH.match(text)
        if not match:
            continue
        target = int(match["target"], 16)
        if target > addr:
            continue
        body = [(a, t) for a, t in fn.instructions[:index + 1] if a >= target]
        nested = any((m := BRANCH.match(t)) and int(m["target"], 16) <= a and a != addr
                     for a, t in body)
        if not nested and any(MULTIPLY_ADD.match(t) for _, t in body):
            loops.append([t for _, t in body])
    return loops


# A CPU register tile: lambda_kernels::cpu::<level>::tile_kernel<...>, ::pair_tile_kernel<...>
# (on the amx level inside ::pairs::) or ::amx_tile_kernel<...> (not its cold split-off part,
# which holds no loop, nor its PLT entry; not the CUDA kernels' host stubs, also named
# *tile_kernel).
CPU_TILE = re.compile(r"::cpu::(\w+)::(?:pairs::)?(?:pair_|amx_)?tile_kernel<"
                      r"(?!.*(?:\[clone \.cold\]|@plt))")


def check(functions: list[Function]) -> list[str]:
    problems = []
    tiles = [fn for fn in functions if CPU_TILE.search(fn.name)]
    if not tiles:
        problems.append("no tile_kernel functions found (wrong file, or names stripped)")
    for fn in tiles:
        loops = innermost_multiply_add_loops(fn)
        if not loops:
            problems.append(f"{fn.name}: no multiply-add loop found")
        spills = sorted({t for body in loops for t in body if STACK.search(t)})
        if spills:
            problems.append(f"{fn.name}: stack access inside the multiply-add loop: "
                            + "; ".join(spills[:4]))
    for fn in functions:
        for register, owners in LEVELS.items():
            if any(f"%{register}" in t for _, t in fn.instructions) \
                    and not any(owner in fn.name for owner in owners):
                problems.append(f"{fn.name}: uses {register} registers outside the "
                                f"{'/'.join(o.strip(':') for o in owners)} kernels")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="shared library or object files")
    parser.add_argument("--objdump", default="objdump")
    args = parser.parse_args(argv)
    failed = False
    for path in args.paths:
        functions = disassemble(path, args.objdump)
        tiles = [fn for fn in functions if CPU_TILE.search(fn.name)]
        problems = check(functions)
        levels = sorted({CPU_TILE.search(fn.name).group(1) for fn in tiles})
        print(f"{path}: {len(tiles)} register tiles ({', '.join(levels)}), "
              f"{len(functions)} functions: " + ("OK" if not problems else "FAILED"))
        for problem in problems:
            print("  " + problem)
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
