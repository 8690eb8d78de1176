"""Would a different execution of the same step pretrain faster on this CPU? (issue 12, round 14)

Times one ResNet18 forward + backward + SGD step on random 64 px tensors (the cpu profile's view side, batch 64:
one SimCLR step's two views of 32 images), eager float32 NCHW as the reference, against
  channels_last - the model and input in channels-last memory layout (what the stages use on CUDA)
  compile       - torch.compile of the same model (inductor on CPU, in an empty cache directory: the cold compile
                  a fresh clone pays, reported apart)
  two_processes - two 1-thread processes side by side on half the batch each, against one process with
                  all threads (what a 2-process DDP on the 2 cores would do at best, without its all-reduce)
Each ratio is images/s of the variant over the reference, measured in the same run; one JSON to
benchmarks/results/cpu_step_levers.json and an MLflow run (benchmarks/_tracking.py).

    python benchmarks/cpu_step_levers.py [--steps 8]
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from _tracking import benchmark_run

RESULT = Path(__file__).parent / "results" / "cpu_step_levers.json"


def images_per_second(model: torch.nn.Module, batch: int, side: int, steps: int, channels_last: bool = False) -> float:
    x = torch.randn(batch, 3, side, side)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01)

    def step() -> None:
        optimiser.zero_grad()
        model(x).square().mean().backward()
        optimiser.step()

    for _ in range(2):  # warm-up (and, for a compiled model, compilation)
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - started)


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.machine())


def fresh_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=128)


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    print(images_per_second(fresh_model(), args.batch // 2, args.side, args.steps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    threads = torch.get_num_threads()
    reference = images_per_second(fresh_model(), args.batch, args.side, args.steps)
    layout = images_per_second(fresh_model(), args.batch, args.side, args.steps, channels_last=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")
    started = time.perf_counter()
    compiled = torch.compile(fresh_model())
    compiled_speed = images_per_second(compiled, args.batch, args.side, args.steps)
    compile_s = time.perf_counter() - started - args.batch * args.steps / compiled_speed
    command = [sys.executable, __file__, "--worker", "--steps", str(args.steps), "--batch", str(args.batch),
               "--side", str(args.side)]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    pair = sum(float(p.communicate()[0].split()[-1]) for p in procs)
    reference_after = images_per_second(fresh_model(), args.batch, args.side, args.steps)
    base = (reference + reference_after) / 2
    result = {
        "what": "ResNet18 fwd+bwd+SGD step, float32, random input; images/s and ratio to eager NCHW (the mean of "
                "its runs before and after the variants)",
        "machine": {"cpu": cpu_name(), "threads": threads,
                    "load_average": os.getloadavg(), "torch": torch.__version__},
        "batch": args.batch, "side": args.side, "steps": args.steps,
        "images_per_s": {"eager_before": round(reference, 1), "eager_after": round(reference_after, 1),
                         "channels_last": round(layout, 1), "compile": round(compiled_speed, 1),
                         "two_1_thread_processes": round(pair, 1)},
        "ratio": {"channels_last": round(layout / base, 3), "compile": round(compiled_speed / base, 3),
                  "two_1_thread_processes": round(pair / base, 3)},
        "compile_s": round(compile_s, 1),
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    with benchmark_run("cpu_step_levers") as mlflow:
        mlflow.log_params({"batch": args.batch, "side": args.side, "steps": args.steps, "threads": threads})
        mlflow.log_metrics({f"ratio_{k}": v for k, v in result["ratio"].items()})
        mlflow.log_metric("compile_s", result["compile_s"])
        mlflow.log_artifact(str(RESULT))


if __name__ == "__main__":
    main()
