"""Times timm's lambda_resnet26t as shipped against the same model after
`lambda_kernels.convert.from_timm` (same weights), and optionally the converted model with its
projections run one by one (`--separate`; a forward hook on each layer's to_q turns the fused
projection off, as the library honours hooks): inference and a training step (forward,
cross-entropy, backward, SGD step), in fp32 and under torch.autocast("cpu", bfloat16).

The models run interleaved repeat by repeat (stock, converted, [separate], stock, ...), so the
per-pair ratios hold when a shared machine's speed drifts; prints medians, the median per-pair
ratio stock ÷ converted and its spread, and the load average before and after each cell.

`--layers` times instead each lambda layer alone, stock against converted, on the input the
stock model feeds it (inference, eval mode), interleaved per repeat, and the layers' sum as a
share of the stock model's inference: with s that share and c the converted layers' speed-up,
the whole model can gain at most 1 / (1 − s + s / c) — the ceiling of the stock ÷ converted
ratio the model rows measure.

    python benchmarks/timm_model_comparison.py --batch 8 --image-size 256 --threads 2 --repeats 5
    python benchmarks/timm_model_comparison.py --layers --repeats 15
"""
import argparse
import copy
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package
import lambda_kernels  # noqa: E402
from lambda_kernels.convert import from_timm  # noqa: E402


def _models(name, separate):
    import timm

    torch.manual_seed(0)
    stock = timm.create_model(name, num_classes=1000)
    models = {"stock": stock, "converted": from_timm(copy.deepcopy(stock))}
    if separate:
        twin = copy.deepcopy(models["converted"])
        for module in twin.modules():
            if isinstance(module, lambda_kernels.LambdaLayer):
                module.to_q.register_forward_hook(lambda m, args, out: None)
        models["separate"] = twin
    return models


def _runner(model, task, bf16, batch, size):
    x = torch.randn(batch, 3, size, size)
    target = torch.randint(0, 1000, (batch,))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    model.train(task == "train step")

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if task == "inference":
                with torch.inference_mode():
                    model(x)
                return
            loss = torch.nn.functional.cross_entropy(model(x).float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return run


def _median_ms(times) -> float:
    return statistics.median(times) * 1e3


def _spread(ratios, digits: int) -> str:
    """Per-pair ratios as 'median (min–max)'."""
    return f"{statistics.median(ratios):.{digits}f} ({min(ratios):.2f}–{max(ratios):.2f})"


def _layer_rows(models, batch, size, repeats) -> None:
    """Each lambda layer, stock vs converted, on the stock model's input to it (inference)."""
    stock, converted = models["stock"], models["converted"]
    stock_layers = [(n, m) for n, m in stock.named_modules() if type(m).__name__ == "LambdaLayer"]
    ours = dict(converted.named_modules())
    x = torch.randn(batch, 3, size, size)
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda m, args, n=n: inputs.__setitem__(n, args[0]))
             for n, m in stock_layers]
    stock.eval()
    with torch.inference_mode():
        stock(x)
    for hook in hooks:
        hook.remove()
    print("| precision | layer | input | stock ms | converted ms | stock ÷ converted (median, "
          "min–max) |")
    print("|---|---|---|---|---|---|")
    for bf16 in (False, True):
        def run(module, layer_input):
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                        enabled=bf16):
                module(layer_input)

        run(stock, x)  # warm-up
        model_times = []
        for _ in range(max(3, repeats // 3)):
            start = time.perf_counter()
            run(stock, x)
            model_times.append(time.perf_counter() - start)
        sums = [0.0, 0.0]
        for name, layer in stock_layers:
            mine = ours[name].eval()
            layer_input = inputs[name]
            for module in (layer, mine):
                run(module, layer_input)  # warm-up
            t_stock, t_ours = [], []
            for _ in range(repeats):
                for module, times in ((layer, t_stock), (mine, t_ours)):
                    start = time.perf_counter()
                    run(module, layer_input)
                    times.append(time.perf_counter() - start)
            ratio = [a / b for a, b in zip(t_stock, t_ours)]
            sums[0] += _median_ms(t_stock)
            sums[1] += _median_ms(t_ours)
            print(f"| {'bf16' if bf16 else 'fp32'} | {name} | {tuple(layer_input.shape)} | "
                  f"{_median_ms(t_stock):.2f} | {_median_ms(t_ours):.2f} | "
                  f"{_spread(ratio, 2)} |")
        share, speedup = sums[0] / _median_ms(model_times), sums[0] / sums[1]
        print(f"| {'bf16' if bf16 else 'fp32'} | all lambda layers (sum of medians) | stock "
              f"model inference {_median_ms(model_times):.0f} ms, the layers {100 * share:.1f}% "
              f"of it | {sums[0]:.2f} | {sums[1]:.2f} | {speedup:.2f}; whole-model ceiling "
              f"{1 / (1 - share + share / speedup):.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lambda_resnet26t")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--separate", action="store_true",
                        help="also the converted model with its projections one by one")
    parser.add_argument("--cells", default="inference fp32,train step fp32,inference bf16,"
                        "train step bf16")
    parser.add_argument("--layers", action="store_true",
                        help="time each lambda layer alone instead of the whole models")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import timm

    print(f"{platform.node()} {platform.processor() or platform.machine()}; torch "
          f"{torch.__version__}, timm {timm.__version__}, lambda_kernels from "
          f"{lambda_kernels.__file__}; {args.model} B={args.batch} {args.image_size}px, "
          f"{args.threads} threads, {args.repeats} interleaved repeats after 1 warm-up")
    models = _models(args.model, args.separate)
    if args.layers:
        _layer_rows(models, args.batch, args.image_size, args.repeats)
        return
    header = "| cell | " + " | ".join(f"{n} ms" for n in models) + " | stock ÷ converted " \
             "(median, min–max)" + (" | separate ÷ converted" if args.separate else "") + \
             " | load avg before → after |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for cell in args.cells.split(","):
        task, precision = cell.rsplit(" ", 1)
        load_before = os.getloadavg()[0]
        runners = {n: _runner(m, task, precision == "bf16", args.batch, args.image_size)
                   for n, m in models.items()}
        for run in runners.values():
            run()  # warm-up
        times = {n: [] for n in runners}
        for _ in range(args.repeats):
            for n, run in runners.items():
                start = time.perf_counter()
                run()
                times[n].append(time.perf_counter() - start)
        conv = times["converted"]
        ratio = [a / b for a, b in zip(times["stock"], conv)]
        row = f"| {cell} | " + " | ".join(f"{_median_ms(t):.0f}"
                                          for t in times.values())
        row += f" | {_spread(ratio, 3)}"
        if args.separate:
            sep = [a / b for a, b in zip(times["separate"], conv)]
            row += f" | {_spread(sep, 3)}"
        row += f" | {load_before:.1f} → {os.getloadavg()[0]:.1f} |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
