"""CPU inference throughput and latency: eager fp32, deepres's fast paths (BN folding + channels_last in fp32 and
bf16, torch.compile, int8) and ONNX Runtime fp32, side by side in one run; the same code as `deepres bench`.

Default cases: ResNet-50 at 224x224 (batch 1 and 16) and ResNet-20 at 32x32 (batch 1 and 128), random weights.
Prints a markdown table (images/s, p50/p95 latency, timed iterations, top-1 agreement with eager fp32) and writes
JSON with --out. Every option of `deepres bench` works here, e.g.

    python benchmarks/cpu_inference.py --compile --out cpu_inference.json
    python benchmarks/cpu_inference.py --case resnet20:32:128 --agreement-checkpoint runs/fashion_mnist-resnet20
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from deepres.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
