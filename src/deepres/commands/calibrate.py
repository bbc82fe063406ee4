"""`deepres calibrate RUN_OR_CHECKPOINT`: store an int8 calibration and its agreement with fp32 in a checkpoint
(deepres.inference.calibrate); predict then runs int8 by default where it is safe."""
import argparse


from deepres.core.device import limit_compute_threads
from deepres.inference.calibrate import calibrate_checkpoint
from deepres.inference.plan import auto_dtype_for


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="RUN_OR_CHECKPOINT",
                        help="a deepres run directory (its best, else last, checkpoint) or .safetensors checkpoint")
    parser.add_argument("--data", metavar="ROOT", help="data.root: the dataset directory (default: the checkpoint's)")
    parser.add_argument("--images", type=int, default=256,
                        help="training images to observe the int8 activation ranges on (default %(default)s)")
    parser.add_argument("--eval-images", type=int, default=1000,
                        help="evaluation images to measure int8-vs-fp32 top-1 agreement on (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    limit_compute_threads()
    path, calibration = calibrate_checkpoint(args.target, data_root=args.data, images=args.images,
                                             eval_images=args.eval_images)
    dtype, why = auto_dtype_for(calibration, "cpu")
    print(f"predict / init_model with precision='auto' on this CPU: {dtype} ({why})")
    return 0
