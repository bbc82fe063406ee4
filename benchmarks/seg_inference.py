"""Segmentation inference throughput at 512x512: torchvision-layout FCN and DeepLabV3 on a dilated ResNet-50
(output stride 8), eager fp32, deepres's fast paths (BatchNorm folded + channels_last in fp32 and bf16) and ONNX
Runtime fp32 on the exported model, side by side in one run; the same code as `deepres bench` (random weights, so
"top-1 agree" is the share of pixels whose argmax class matches eager fp32's). Prints the CPU model and ISA
capability, then a markdown table; any `deepres bench` option works, e.g.

    python benchmarks/seg_inference.py
    python benchmarks/seg_inference.py --case fcn_resnet38_a1:500:1 --paths eager_fp32,bf16 --out seg.json

At about 140-180 GMACs per 512x512 image, a 2-core CPU does one image in seconds: the defaults time batch 1 with
few iterations and 2 agreement images.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from deepres.cli import main  # noqa: E402

DEFAULTS = ["--case", "fcn_resnet50:512:1", "--case", "deeplabv3_resnet50:512:1",
            "--paths", "eager_fp32,fp32,bf16,onnxruntime_fp32", "--warmup", "1", "--seconds", "5",
            "--min-iterations", "3", "--max-iterations", "10", "--agreement-images", "2"]

if __name__ == "__main__":
    args = sys.argv[1:]
    given = {a.split("=")[0] for a in args if a.startswith("--")}
    defaults = []
    for i in range(0, len(DEFAULTS), 2):  # each default (option, value) unless the command line gives that option
        option, value = DEFAULTS[i], DEFAULTS[i + 1]
        if option not in given:
            defaults += [option, value]
    sys.exit(main(["bench", *defaults, *args]))
