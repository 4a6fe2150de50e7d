"""CPU forward-time overhead of the fusion: the median eval forward time of each fusion mode (default ResNet-50
configuration) divided by that of `none` (plain ResNet-50, same head), at batch 1 and batch 32. Repetitions of
the modes are interleaved, in rotating order, so that drift in machine load hits every mode alike. By default each
forward is timed in CPU time of this process on one thread: on a shared machine, time spent waiting for a core
then does not count, which wall-clock time (`--clock wall`) cannot avoid.

    python benchmarks/forward_overhead.py [--repeats 30] [--repeats-large 5] [--image-size 224] [--threads 1]

The last line is the channel-mode ratio at each batch size (target: at most 1.10)."""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from modeling import FUSION_MODES, AsffResNetConfig, AsffResNetForImageClassification  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=30, help="timed forwards per mode at batch sizes below 8")
    parser.add_argument("--repeats-large", type=int, default=5, help="timed forwards per mode at batch sizes >= 8")
    parser.add_argument("--warmup", type=int, default=2, help="untimed forwards per mode and batch size")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="cpu: CPU time of this process (robust to other load with one thread); wall: elapsed")
    return parser.parse_args()


def time_modes(models: dict[str, torch.nn.Module], pixel_values: torch.Tensor, repeats: int, warmup: int,
               clock=time.process_time) -> dict[str, list[float]]:
    """Seconds per forward for each mode; round r runs the modes in an order rotated by r."""
    modes = list(models)
    times = {mode: [] for mode in modes}
    with torch.inference_mode():
        for _ in range(warmup):
            for mode in modes:
                models[mode](pixel_values)
        for round_index in range(repeats):
            shift = round_index % len(modes)
            for mode in modes[shift:] + modes[:shift]:
                start = clock()
                models[mode](pixel_values)
                times[mode].append(clock() - start)
    return times


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {mode: AsffResNetForImageClassification(AsffResNetConfig(fusion_mode=mode)).eval()
              for mode in FUSION_MODES}
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.clock} time, {args.image_size} px, "
          "eval, inference_mode")
    # The minimum is shown to judge noise: far below the median means the machine was busy.
    print(f"{'batch':>5} {'mode':>8} {'median ms':>10} {'min ms':>9} {'ratio':>6} {'repeats':>7}")
    channel_ratios = {}
    for batch_size in args.batch_sizes:
        repeats = args.repeats if batch_size < 8 else args.repeats_large
        pixel_values = torch.randn(batch_size, 3, args.image_size, args.image_size)
        times = time_modes(models, pixel_values, repeats, args.warmup, clock)
        medians = {mode: statistics.median(t) for mode, t in times.items()}
        for mode in FUSION_MODES:
            ratio = medians[mode] / medians["none"]
            print(f"{batch_size:>5} {mode:>8} {medians[mode] * 1e3:>10.1f} {min(times[mode]) * 1e3:>9.1f} "
                  f"{ratio:>6.3f} {repeats:>7}")
        channel_ratios[batch_size] = medians["channel"] / medians["none"]
    print("channel/none forward-time ratio: "
          + ", ".join(f"batch {b}: {r:.3f}" for b, r in channel_ratios.items()) + " (target <= 1.10)")


if __name__ == "__main__":
    main()
