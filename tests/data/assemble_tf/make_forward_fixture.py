"""Write MODEL_forward.npz for tests/test_assemble_tf.py: what THEIR Assemble-ResNet50 / -152 graph computes, with
real TensorFlow. Run ONCE, by hand, in the venv of make_fixture.py (tensorflow-cpu 2.21.0, tf_keras 2.21.0, numpy 2.4):

    TF_USE_LEGACY_KERAS=1 /tmp/tfvenv/bin/python tests/data/assemble_tf/make_forward_fixture.py --repo ASSEMBLED_CNN

writes assemble_resnet50_forward.npz and assemble_resnet152_forward.npz.

ASSEMBLED_CNN: a clone (or bare git dir) of github.com/clovaai/assembled-cnn, HEAD = master 9cdc297. Their
nets/model_helper.py, nets/blocks.py, nets/resnet_model.py and functions/model_fns.py are imported unchanged (as in
make_fixture.py) and functions.model_fns.Model is built for their README's eval_only flags: resnet_version=2 (which
is what turns Big-Little on: resnet_model.Model.__call__ builds Big-Little modules 0-3 and passes use_bl=True to
every block_layer when resnet_version == 2; there is no use_bl flag), resnet_size=50 (bl_alpha 2, bl_beta 4, their
defaults) or 152 (--bl_alpha=1 --bl_beta=2), use_sk_block, anti_alias_type=sconv, anti_alias_filter_size=3,
use_resnet_d=False, 1001 classes, channels_last (their code's choice without CUDA; channels_first computes the same),
called as resnet_model_fn calls it in EVAL mode: model(images, training=False, reuse=False, use_resnet_d=False,
keep_prob=1.0).

No shim: blocks.anti_aliased_downsample's tf.nn.conv2d with a [3, 3, 1, C] filter on C channels (a grouped,
i.e. depthwise, convolution) runs on TF 2.21's CPU kernels, so their blur runs as written (checked against
tf.nn.depthwise_conv2d: equal to 5e-7).

Weights: every model variable of the graph, in the order of MODEL_variables.txt (asserted equal to the graph's),
drawn from np.random.default_rng(SEED) by `forward_weights` (the rule is stored in the file as `rule`;
tests/test_assemble_tf.py repeats it without TensorFlow). Input: 2 x 64 x 64 x 3 (NHWC) uint8 pixels u drawn from
the same generator after the weights, fed as (u - 128) / 64 (exact in float32); 64 px keeps every Big-Little
branch even-sized (their UpSampling2D needs it) and every stage at least 2 x 2.

Stored (np.savez_compressed, 63 KB and 71 KB): seed, rule, pixels (uint8 NHWC), weight_sums (float64 sum of each
variable, file order, to tell a changed weight rule from a changed model), logits (2 x 1001, float32) and, to
localise a difference, the per-channel spatial means (2 x C) of: stem (after the stem BN + ReLU), pool (after
Big-Little module 0), stage1..stage3 (after each merge block), stage4 (the last block).
"""
import argparse
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import tensorflow as tf  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_fixture import PUBLISHED, import_their_model_fns  # noqa: E402
from weight_rule import forward_weights  # noqa: E402  (shared with the test, which has no TensorFlow)

v1 = tf.compat.v1
SEED = 20260407
SIZE = 64
RULE = ("for each variable in MODEL_variables.txt order (global_step skipped), from "
        "np.random.default_rng(seed), float32: kernel of rank 4 (HWIO) N(0,1) * sqrt(1.5 / (H*W*I)); dense/kernel "
        "N(0,1) * sqrt(1 / 2048); dense/bias 0.1 N(0,1); gamma 1 + 0.1 N(0,1); beta 0.1 N(0,1); moving_mean "
        "0.1 N(0,1); moving_variance 1 + 0.5 U(0,1); then pixels = rng.integers(0, 256, (2, 64, 64, 3), uint8), "
        "input = (pixels - 128) / 64")


def listed_variables(name: str) -> list:
    """(TF name, shape) of every model variable in MODEL_variables.txt (global_step left out)."""
    shapes = []
    for line in (HERE / f"{name}_variables.txt").read_text().splitlines():
        if line.startswith("#"):
            continue
        variable, shape = line.split()
        if variable != "global_step":
            shapes.append((variable, tuple(int(d) for d in shape.strip("[]").split(",") if d)))
    return shapes


def one(graph, pattern: str) -> tf.Tensor:
    """The output of the single op whose name matches `pattern` exactly, or of the last Relu under a scope."""
    if pattern.endswith("/"):
        ops = [op for op in graph.get_operations() if op.name.startswith(pattern) and op.type == "Relu"
               and op.name.count("/") == pattern.count("/")]
        return ops[-1].outputs[0]
    return graph.get_operation_by_name(pattern).outputs[0]


def write_forward(model_fns, name: str) -> None:
    size, alpha, beta = PUBLISHED[name]
    v1.reset_default_graph()
    model = model_fns.Model(size, "channels_last", num_classes=1001, resnet_version=2, zero_gamma=True,
                            use_se_block=False, use_sk_block=True, no_downsample=False, anti_alias_filter_size=3,
                            anti_alias_type="sconv", bn_momentum=0.997, embedding_size=0, pool_type="gap",
                            bl_alpha=alpha, bl_beta=beta, dtype=tf.float32, loss_type="softmax")
    images = v1.placeholder(tf.float32, [2, SIZE, SIZE, 3])
    logits = model(images, False, False, use_resnet_d=False, keep_prob=1.0)  # resnet_model_fn in EVAL mode
    graph = v1.get_default_graph()
    probes = {"stem": one(graph, "resnet_model/stage0_1/"), "pool": one(graph, "resnet_model/stage0/pool/"),
              "stage1": one(graph, "resnet_model/stage1/merge1/merge1"),
              "stage2": one(graph, "resnet_model/stage2/merge2/merge2"),
              "stage3": one(graph, "resnet_model/stage3/merge3/merge3"),
              "stage4": one(graph, "resnet_model/stage4/block_layer4")}

    shapes = listed_variables(name)
    variables = v1.global_variables()
    assert [(v.op.name, tuple(v.shape.as_list())) for v in variables] == shapes, "graph != variable list"
    rng = np.random.default_rng(SEED)
    values = forward_weights(shapes, rng)
    pixels = rng.integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    feed = {images: (pixels.astype(np.float32) - 128) / 64}
    with v1.Session() as session:
        for variable, value in zip(variables, values):
            variable.load(value, session)
        out, means = session.run([logits, {k: tf.reduce_mean(t, [1, 2]) for k, t in probes.items()}], feed)
        stds = session.run({k: tf.math.reduce_std(t) for k, t in probes.items()}, feed)
    for probe in probes:
        print(f"{name} {probe}: {means[probe].shape}, activation std {stds[probe]:.3g}")
    print(f"{name} logits {out.shape}: std {out.std():.3g}, argmax {out.argmax(1)}")
    path = HERE / f"{name}_forward.npz"
    np.savez_compressed(path, seed=np.int64(SEED), rule=np.array(RULE), pixels=pixels,
                        weight_sums=np.array([v.astype(np.float64).sum() for v in values]), logits=out,
                        **{f"mean_{k}": v for k, v in means.items()})
    print(f"wrote {path}: {path.stat().st_size} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", required=True, help="clovaai/assembled-cnn: a clone or its git directory")
    args = parser.parse_args()
    v1.disable_eager_execution()
    model_fns = import_their_model_fns(args.repo)
    for name in PUBLISHED:
        write_forward(model_fns, name)


if __name__ == "__main__":
    main()
