"""Benchmark of kdlearn's fused losses: time of a forward + backward step and its peak memory.

    python -m kdlearn.bench              the default cases for this machine
    python -m kdlearn.bench --quick      a tiny smoke run (seconds): checks that everything runs
    python -m kdlearn.bench --help       every option

Two cases, each timed against the plain PyTorch a practitioner would write:

softmax   the temperature-softmax KL on given logits (N, V). On a GPU: kdlearn.kl_divergence
          with the Triton kernel vs torch eager (log_softmax + F.kl_div(log_target=True),
          divided by the rows like kdlearn's "mean") vs torch.compile of that eager function,
          with the bandwidth achieved against the physical minimum of 3 N V bytes-per-element
          (read student, read teacher, write the gradient). On a CPU: kdlearn's PyTorch
          reference vs the same eager function.
linear    kdlearn.fused_linear_kl(h, W, teacher_logits) vs the naive path
          kl_divergence(h @ W.T, teacher_logits): the LM head fused with the loss, in chunks.
          The CPU case N=4096, H=512, V=32000 fp32 has targets: at most a quarter of the naive
          path's peak memory, at no more than 1.3 times its time.

Peak memory is what the step adds to the inputs. On a GPU: torch.cuda.max_memory_allocated
minus the memory allocated once the inputs exist. On a CPU, where torch's allocations are
invisible to tracemalloc, every measurement runs in a fresh subprocess, which resets its peak
resident set (VmHWM, through /proc/self/clear_refs) once the inputs exist and reports the peak
reached minus the resident set at that point.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Peak memory bandwidth in TB/s, by a piece of torch.cuda.get_device_name(); first match wins.
PEAK_BANDWIDTH_TBPS = (
    ("H200", 4.8),
    ("H100 NVL", 3.9),
    ("H100 PCIe", 2.0),
    ("H100", 3.35),      # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 2.0),       # 80 GB SXM 2.04, 40 GB 1.56
    ("L40S", 0.864),
    ("A10", 0.6),
)

DEFAULT_SIZES = {
    ("softmax", "cuda"): ["4096x32000", "8192x128256"],
    ("softmax", "cpu"): ["1024x32000"],
    ("linear", "cuda"): ["4096x4096x32000", "8192x4096x128256"],
    ("linear", "cpu"): ["4096x512x32000"],
}
QUICK_SIZES = {"softmax": ["64x1000"], "linear": ["256x64x1000"]}
DEFAULT_DTYPES = {"cuda": ["fp32", "bf16"], "cpu": ["fp32"]}

# The CPU target for fused_linear_kl, and the size it is judged at.
TARGET_CASE = {"case": "linear", "device": "cpu", "dtype": "fp32", "size": [4096, 512, 32000]}
TARGET_MEMORY_RATIO = 0.25
TARGET_TIME_RATIO = 1.3

# The GPU targets for the fused softmax-KL, judged at every GPU softmax size run: speed
# against torch eager, bandwidth against the device's peak, and the memory a step adds beyond its
# inputs, which may be the gradient and O(N) (a few numbers per row, and an allocator's slack).
TARGET_GPU_SPEEDUP = 3.0
TARGET_GPU_BANDWIDTH = 0.70
GPU_EXTRA_BYTES_PER_ROW = 64
GPU_EXTRA_BYTES = 2**20

# Which implementation each case's speedups and ratios are measured against.
BASELINE = {"softmax": "eager", "linear": "naive"}

CPU_MEMORY_METHOD = ("CPU peak memory: each measurement in a fresh subprocess; peak resident set (VmHWM, reset "
                     "through /proc/self/clear_refs once the inputs exist) minus the resident set at that point")
CPU_MEMORY_FALLBACK = ("CPU peak memory: each measurement in a fresh subprocess; ru_maxrss at the end minus the "
                       "resident set once the inputs exist (VmHWM could not be reset here, so a peak reached "
                       "while importing or making the inputs can hide the step's own)")
GPU_MEMORY_METHOD = ("GPU peak memory: torch.cuda.max_memory_allocated minus the memory allocated once the "
                     "inputs exist")


# --- what is measured ----------------------------------------------------------------------------


def eager_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Forward KL(teacher || student), summed over the vocabulary, averaged over rows: plain torch,
    in fp32 like kdlearn (bf16 inputs are upcast)."""
    log_q = F.log_softmax(student_logits.float(), dim=-1)
    log_p = F.log_softmax(teacher_logits.float(), dim=-1)
    return F.kl_div(log_q, log_p, log_target=True, reduction="sum") / student_logits.shape[0]


def make_step(spec: dict):
    """The inputs of a case and a function running one forward + backward step on them."""
    import kdlearn
    from kdlearn.kernels.linear_divergence import fused_linear_kl

    device, dtype = torch.device(spec["device"]), DTYPES[spec["dtype"]]
    gen = torch.Generator(device="cpu").manual_seed(0)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)

    if spec["case"] == "softmax":
        n, v = spec["size"]
        student, teacher = randn(n, v, scale=2.0).requires_grad_(), randn(n, v, scale=2.0)
        inputs = [student]
        if spec["impl"] in ("kdlearn-triton", "kdlearn-torch"):
            backend = spec["impl"].removeprefix("kdlearn-")
            loss_fn = lambda: kdlearn.kl_divergence(student, teacher, backend=backend)  # noqa: E731
        elif spec["impl"] == "eager":
            loss_fn = lambda: eager_kl(student, teacher)  # noqa: E731
        else:
            compiled = torch.compile(eager_kl, dynamic=False)
            loss_fn = lambda: compiled(student, teacher)  # noqa: E731
    else:
        n, h, v = spec["size"]
        hidden = randn(n, h).requires_grad_()
        weight = randn(v, h, scale=h ** -0.5).requires_grad_()
        teacher = randn(n, v, scale=2.0)
        inputs = [hidden, weight]
        if spec["impl"] == "fused":
            loss_fn = lambda: fused_linear_kl(hidden, weight, teacher, chunk_size=spec["chunk_size"])  # noqa: E731
        else:
            loss_fn = lambda: kdlearn.kl_divergence(hidden @ weight.T, teacher)  # noqa: E731

    def step():
        loss_fn().backward()
        for x in inputs:
            x.grad = None

    return step


def measure(spec: dict) -> dict:
    """Median time of a step over spec['repeats'] runs (after spec['warmup']) and its peak memory."""
    step = make_step(spec)
    cuda = spec["device"] == "cuda"
    if cuda:
        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        baseline, method = _reset_cpu_peak()
    for _ in range(spec["warmup"]):
        step()
    times = []
    for _ in range(spec["repeats"]):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if cuda else _cpu_peak(method)
    return {"time_s": statistics.median(times), "peak_bytes": peak - baseline,
            "memory_method": GPU_MEMORY_METHOD if cuda else method}


def _proc_status_kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def _reset_cpu_peak() -> tuple[int, str]:
    """The resident set now, in bytes, and how the peak will be read: VmHWM reset to it where
    Linux allows, else ru_maxrss (a peak since the process started)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _proc_status_kib("VmRSS") * 1024, CPU_MEMORY_METHOD
    except OSError:
        import resource

        rss = _proc_status_kib("VmRSS") if Path("/proc/self/status").exists() else \
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        return rss * 1024, CPU_MEMORY_FALLBACK


def _cpu_peak(method: str) -> int:
    if method == CPU_MEMORY_METHOD:
        return _proc_status_kib("VmHWM") * 1024
    import resource

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB on Linux


def run_measurement(spec: dict) -> dict:
    """measure(spec), in a fresh subprocess on CPU; an implementation that cannot run here
    gives its reason instead of figures."""
    try:
        if spec["device"] == "cuda":
            return measure(spec)
        proc = subprocess.run([sys.executable, "-m", "kdlearn.bench", "--worker", json.dumps(spec)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else
                               f"worker exited with {proc.returncode}")
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except Exception as err:  # noqa: BLE001 - one failing implementation must not end the benchmark
        return {"error": f"{type(err).__name__}: {err}".splitlines()[0]}


# --- the plan, the table, the verdicts -----------------------------------------------------------


def parse_size(text: str, case: str) -> list[int]:
    parts = text.lower().split("x")
    expected = 2 if case == "softmax" else 3
    if len(parts) != expected or not all(p.isdigit() and int(p) > 0 for p in parts):
        shape = "NxV" if case == "softmax" else "NxHxV"
        raise argparse.ArgumentTypeError(f"a {case} size is {shape} with positive integers, got {text!r}")
    return [int(p) for p in parts]


def implementations(case: str, device: str, compile_: bool) -> list[str]:
    if case == "linear":
        return ["naive", "fused"]
    if device == "cpu":
        return ["eager", "kdlearn-torch"]
    return ["eager"] + (["compile"] if compile_ else []) + ["kdlearn-triton"]


def plan(args) -> list[dict]:
    devices = {"auto": ["cpu"] + (["cuda"] if torch.cuda.is_available() else []),
               "cpu": ["cpu"], "cuda": ["cuda"]}[args.device]
    specs = []
    for device in devices:
        for case in args.cases:
            sizes = args.softmax_sizes if case == "softmax" else args.linear_sizes
            if sizes is None:
                sizes = QUICK_SIZES[case] if args.quick else DEFAULT_SIZES[case, device]
            dtypes = args.dtypes or (["fp32"] if args.quick else DEFAULT_DTYPES[device])
            for size in sizes:
                for dtype in dtypes:
                    for impl in implementations(case, device, args.compile and not args.quick):
                        specs.append({"case": case, "device": device, "dtype": dtype,
                                      "size": parse_size(size, case), "impl": impl,
                                      "chunk_size": args.chunk_size, "repeats": args.repeats,
                                      "warmup": args.warmup})
    return specs


def peak_bandwidth(device_name: str) -> float | None:
    """The device's peak memory bandwidth in bytes/s, None when not in the table."""
    for piece, tbps in PEAK_BANDWIDTH_TBPS:
        if piece in device_name:
            return tbps * 1e12
    return None


def add_derived(results: list[dict], device_names: dict[str, str]) -> None:
    """Bandwidth (softmax case), speedup over the case's baseline, ratios of time and memory."""
    baselines = {_key(r): r for r in results if r["impl"] == BASELINE[r["case"]] and "time_s" in r}
    for r in results:
        if "time_s" not in r:
            continue
        if r["case"] == "softmax":
            n, v = r["size"]
            r["gb_per_s"] = 3 * n * v * DTYPES[r["dtype"]].itemsize / r["time_s"] / 1e9
            peak = peak_bandwidth(device_names[r["device"]]) if r["device"] == "cuda" else None
            r["of_peak_bandwidth"] = None if peak is None else r["gb_per_s"] * 1e9 / peak
        base = baselines.get(_key(r))
        if base is not None:
            r["speedup"] = base["time_s"] / r["time_s"]
            r["memory_ratio"] = r["peak_bytes"] / base["peak_bytes"] if base["peak_bytes"] > 0 else None


def _key(r: dict) -> tuple:
    return r["case"], r["device"], r["dtype"], tuple(r["size"])


def verdicts(results: list[dict]) -> list[dict]:
    """Every target: met, NOT met, or not measurable here (its case not run, an implementation
    failed, or the device's peak bandwidth unknown)."""
    return cpu_linear_verdicts(results) + gpu_softmax_verdicts(results)


def gpu_softmax_verdicts(results: list[dict]) -> list[dict]:
    kernels = [r for r in results if (r["case"], r["device"], r["impl"]) == ("softmax", "cuda", "kdlearn-triton")]
    if not kernels:
        return [{"target": f"fused softmax-KL on a GPU: >= {TARGET_GPU_SPEEDUP:g}x torch eager, >= "
                           f"{TARGET_GPU_BANDWIDTH:.0%} of peak bandwidth, peak memory <= gradient + O(N)",
                 "verdict": "not measurable here", "value": None}]
    out = []
    for r in kernels:
        n, v = r["size"]
        where = f"GPU, N={n} V={v} {r['dtype']}"
        gradient = n * v * DTYPES[r["dtype"]].itemsize
        measured = {
            "speed": (r.get("speedup"), TARGET_GPU_SPEEDUP, "{:.2f}x torch eager",
                      f"fused softmax-KL forward+backward >= {TARGET_GPU_SPEEDUP:g}x faster than torch eager"),
            "bandwidth": (r.get("of_peak_bandwidth"), TARGET_GPU_BANDWIDTH, "{:.0%} of peak bandwidth",
                          f"fused softmax-KL >= {TARGET_GPU_BANDWIDTH:.0%} of the device's peak memory bandwidth"),
        }
        for value, limit, shown, target in measured.values():
            verdict = "not measurable here" if value is None else "met" if value >= limit else "NOT met"
            out.append({"target": f"{target} ({where})", "verdict": verdict,
                        "value": None if value is None else shown.format(value)})
        allowed = gradient + GPU_EXTRA_BYTES_PER_ROW * n + GPU_EXTRA_BYTES
        extra = r.get("peak_bytes")
        out.append({"target": f"fused softmax-KL peak memory <= inputs + gradient + O(N) ({where})",
                    "verdict": "not measurable here" if extra is None else "met" if extra <= allowed else "NOT met",
                    "value": None if extra is None else
                    f"{extra / 2**20:.1f} MiB beyond the inputs, gradient {gradient / 2**20:.1f} MiB"})
    return out


def cpu_linear_verdicts(results: list[dict]) -> list[dict]:
    """The CPU fused-linear targets."""
    pair = {r["impl"]: r for r in results if _key(r) == _key(TARGET_CASE) and "time_s" in r}
    n, h, v = TARGET_CASE["size"]
    where = f"CPU, N={n} H={h} V={v} fp32"
    out = []
    for quantity, field, limit in (("peak memory", "peak_bytes", TARGET_MEMORY_RATIO),
                                   ("time", "time_s", TARGET_TIME_RATIO)):
        target = f"fused_linear_kl {quantity} <= {limit:g} x the naive path's ({where})"
        if {"naive", "fused"} - set(pair) or pair["naive"][field] <= 0:
            out.append({"target": target, "verdict": "not measurable here", "value": None})
            continue
        ratio = pair["fused"][field] / pair["naive"][field]
        out.append({"target": target, "verdict": "met" if ratio <= limit else "NOT met",
                    "value": f"{ratio:.3f} x the naive {quantity}"})
    return out


def format_table(results: list[dict]) -> str:
    header = ["case", "device", "dtype", "size", "impl", "time ms", "peak MiB", "GB/s", "of peak bw",
              "speedup", "mem ratio"]
    rows = []
    for r in results:
        size = "x".join(map(str, r["size"]))
        if "error" in r:
            rows.append([r["case"], r["device"], r["dtype"], size, r["impl"], "unavailable: " + r["error"]])
            continue
        bw = r.get("of_peak_bandwidth")
        gpu_softmax = r["case"] == "softmax" and r["device"] == "cuda"
        rows.append([
            r["case"], r["device"], r["dtype"], size, r["impl"],
            f"{r['time_s'] * 1e3:.2f}",
            f"{r['peak_bytes'] / 2**20:.1f}",
            f"{r['gb_per_s']:.1f}" if "gb_per_s" in r else "-",
            ("unknown" if bw is None else f"{bw:.0%}") if gpu_softmax else "-",
            f"{r['speedup']:.2f}x" if "speedup" in r else "-",
            f"{r['memory_ratio']:.3f}" if r.get("memory_ratio") is not None else "-",
        ])
    widths = [max(len(str(row[i])) for row in [header] + rows if i < len(row) and len(row) == len(header))
              for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    for row in rows:
        if len(row) < len(header):  # an error row: its reason runs on past the columns
            lines.append("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths)) + "  " + row[-1])
        else:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = "python -m kdlearn.bench") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Time a forward + backward step of kdlearn's fused losses against plain PyTorch, and "
                    "measure the peak memory it adds. Cases: 'softmax' (the softmax-KL on given logits: "
                    "the Triton kernel vs torch eager and torch.compile on a GPU, the PyTorch reference vs "
                    "eager on a CPU) and 'linear' (fused_linear_kl vs logits = h @ W.T then the loss).",
        epilog="Sizes are NxV for softmax and NxHxV for linear. Without a GPU only the CPU cases run. "
               "The verdicts judge the CPU linear case at 4096x512x32000 fp32 (the default). "
               "Example: python -m kdlearn.bench --cases linear --repeats 5",
    )
    parser.add_argument("--cases", nargs="+", choices=["softmax", "linear"], default=["softmax", "linear"],
                        help="which cases to run (default: both)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto (the default): the CPU cases, and the GPU cases when CUDA is available")
    parser.add_argument("--softmax-sizes", nargs="+", metavar="NxV",
                        help="softmax sizes (default: 4096x32000 8192x128256 on GPU, 1024x32000 on CPU)")
    parser.add_argument("--linear-sizes", nargs="+", metavar="NxHxV",
                        help="linear sizes (default: 4096x4096x32000 8192x4096x128256 on GPU, "
                             "4096x512x32000 on CPU)")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES),
                        help="input dtypes (default: fp32 bf16 on GPU, fp32 on CPU)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed steps per measurement, the median shown (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them (default: 1)")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="rows per chunk for fused_linear_kl (default: the library's rule)")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="leave out torch.compile (its first call compiles, which takes a while)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run in seconds: tiny sizes, fp32, one step, no torch.compile")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one CPU measurement, in a subprocess
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(measure(json.loads(args.worker))))
        return 0
    if args.quick:
        args.repeats, args.warmup = 1, 0
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be at least 1 and --warmup at least 0")
    if args.chunk_size is not None and args.chunk_size < 1:
        parser.error("--chunk-size must be a positive integer")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    try:
        specs = plan(args)
    except argparse.ArgumentTypeError as err:
        parser.error(str(err))

    device_names = {"cpu": f"{torch.get_num_threads()} torch threads"}
    if torch.cuda.is_available():
        device_names["cuda"] = torch.cuda.get_device_name(0)
    results = []
    for spec in specs:
        result = {k: spec[k] for k in ("case", "device", "dtype", "size", "impl")}
        result.update(run_measurement(spec))
        results.append(result)
    add_derived(results, device_names)
    methods = sorted({r["memory_method"] for r in results if "memory_method" in r})
    report = {"devices": device_names, "repeats": args.repeats, "warmup": args.warmup,
              "memory_methods": methods, "results": results, "verdicts": verdicts(results)}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print("devices: " + "; ".join(f"{k}: {v}" for k, v in device_names.items()))
    print(f"forward + backward, median of {args.repeats} after {args.warmup} warm-up (CUDA events on a GPU, "
          f"perf_counter on a CPU); speedup and mem ratio against "
          f"{', '.join(f'{b} ({c})' for c, b in BASELINE.items())}")
    print("GB/s: 3 x N x V x element size (read student, read teacher, write gradient) / time")
    print()
    print(format_table(results))
    print()
    for method in methods:
        print(method)
    print()
    for v in report["verdicts"]:
        print(f"{v['verdict']:>20}: {v['target']}" + (f" [{v['value']}]" if v["value"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
