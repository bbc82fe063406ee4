"""Write the Assemble-ResNet TensorFlow fixtures of tests/test_assemble_tf.py, with real TensorFlow. Run ONCE, by hand:

    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu numpy tf_keras
    TF_USE_LEGACY_KERAS=1 /tmp/tfvenv/bin/python tests/data/assemble_tf/make_fixture.py --repo ASSEMBLED_CNN

ASSEMBLED_CNN is a clone (or bare git dir) of github.com/clovaai/assembled-cnn; its HEAD (master, 9cdc297) is read
with `git show`. tf_keras and TF_USE_LEGACY_KERAS=1: since TF 2.16 `tf.compat.v1.layers`, which their code calls as
`tf.layers`, needs Keras 2. Written with tensorflow-cpu 2.21.0, tf_keras 2.21.0, numpy 2.4.

(a) small.index / small.data-00000-of-00001: a small V2 checkpoint written by tf.compat.v1.train.Saver (the saver
    their tf.estimator training used), whose variables carry the names THEIR code gives the first variables of
    Assemble-ResNet50 (stem conv, BN, Big-Little module 0, the first SK block, the dense head) and their Momentum
    slots, every dimension cut to at most 3, plus global_step (int64) and three `dtypes/*` variables (float16,
    bfloat16, int32); deterministic values, saved to small_expected.npz beside it.
(b) assemble_resnet50_variables.txt, assemble_resnet152_variables.txt: every global variable (`name [shape]`)
    that THEIR graph creates: nets/resnet_model.py, nets/blocks.py, nets/model_helper.py and
    functions/model_fns.py imported unchanged (with `tensorflow` bound to tf.compat.v1 while they import, and two
    modules that model_fns imports but the model does not use stubbed), built as
    nets/run_loop_classification.resnet_model_fn builds it for the published eval flags (README: --resnet_version=2
    --use_sk_block=True --anti_alias_type=sconv --anti_alias_filter_size=3, ResNet-152 --bl_alpha=1 --bl_beta=2,
    ResNet-50 the defaults 2 and 4; 1001 classes), global step and the MomentumOptimizer of
    nets/optimizer_setting.get_train_op included. The optimizer's `<variable>/Momentum` slot of every trainable
    variable is left out of the files for size (a header line gives their count); their code creates no
    ExponentialMovingAverage, so a checkpoint holds no EMA copies.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import tensorflow as tf  # noqa: E402

v1 = tf.compat.v1
HERE = Path(__file__).resolve().parent
THEIR_FILES = ("nets/model_helper.py", "nets/blocks.py", "nets/resnet_model.py", "functions/model_fns.py")
PUBLISHED = {"assemble_resnet50": (50, 2, 4), "assemble_resnet152": (152, 1, 2)}  # resnet_size, bl_alpha, bl_beta


def git_show(repo: str, path: str) -> str:
    git_dir = repo if repo.endswith(".git") or Path(repo, "HEAD").is_file() else str(Path(repo, ".git"))
    return subprocess.check_output(["git", f"--git-dir={git_dir}", "show", f"HEAD:{path}"]).decode()


def import_their_model_fns(repo: str):
    """functions.model_fns from their repository, importing their nets/ code against tf.compat.v1."""
    root = Path(tempfile.mkdtemp())
    for package in ("nets", "functions"):
        (root / package).mkdir()
        (root / package / "__init__.py").write_text("")
    for path in THEIR_FILES:
        (root / path).write_text(git_show(repo, path))
    sys.path.insert(0, str(root))
    real_tf = sys.modules["tensorflow"]
    sys.modules["tensorflow"] = v1  # their `import tensorflow as tf` is TF 1.14's API
    # model_fns imports these for its training loop, which the model does not use
    sys.modules["functions.data_config"] = types.ModuleType("functions.data_config")
    sys.modules["nets.run_loop_classification"] = types.ModuleType("nets.run_loop_classification")
    try:
        from functions import model_fns
    finally:
        sys.modules["tensorflow"] = real_tf
    return model_fns


def build_their_graph(model_fns, resnet_size: int, alpha: int, beta: int):
    """Their training graph (resnet_model_fn, mode TRAIN, the published flags): returns the global variables."""
    v1.reset_default_graph()
    global_step = v1.train.get_or_create_global_step()
    model = model_fns.Model(resnet_size, "channels_last", num_classes=1001, resnet_version=2, zero_gamma=True,
                            use_se_block=False, use_sk_block=True, no_downsample=False, anti_alias_filter_size=3,
                            anti_alias_type="sconv", bn_momentum=0.997, embedding_size=0, pool_type="gap",
                            bl_alpha=alpha, bl_beta=beta, dtype=tf.float32, loss_type="softmax")
    images = v1.placeholder(tf.float32, [2, 224, 224, 3])
    logits = model(images, True, False, use_resnet_d=False, keep_prob=1.0)
    loss = tf.reduce_mean(logits) + 1e-4 * tf.add_n([tf.nn.l2_loss(v) for v in v1.trainable_variables()])
    optimizer = v1.train.MomentumOptimizer(learning_rate=0.1, momentum=0.9)
    optimizer.apply_gradients(optimizer.compute_gradients(loss), global_step)
    return v1.global_variables()


def write_variable_list(model_fns, name: str) -> list:
    size, alpha, beta = PUBLISHED[name]
    variables = build_their_graph(model_fns, size, alpha, beta)
    slots = [v for v in variables if v.op.name.endswith("/Momentum")]
    kept = [v for v in variables if not v.op.name.endswith("/Momentum")]
    lines = [f"# {name}: the global variables of clovaai/assembled-cnn's graph (resnet_size={size}, bl_alpha={alpha}, "
             f"bl_beta={beta}, resnet_version=2, use_sk_block, anti_alias_type=sconv, 1001 classes), in creation "
             f"order, written by make_fixture.py with tensorflow {tf.__version__}; float32 but global_step (int64).",
             f"# Left out for size: {len(slots)} optimizer slots, `<name>/Momentum` of the same shape, one for every "
             f"trainable variable here (all but global_step and the BN moving_mean / moving_variance)."]
    lines += [f"{v.op.name} {v.shape.as_list()}".replace(", ", ",") for v in kept]
    (HERE / f"{name}_variables.txt").write_text("\n".join(lines) + "\n")
    print(f"{name}: {len(kept)} variables + {len(slots)} Momentum slots")
    return kept


def write_small_checkpoint(r50_variables) -> None:
    """(a): the first model variables of Assemble-ResNet50 (up to the end of the first SK block) and the head."""
    v1.reset_default_graph()
    rng = np.random.RandomState(0)
    wanted = []
    for variable in r50_variables:
        name = variable.op.name
        if name == "global_step" or name.startswith("resnet_model/dense/") or len(wanted) < 60:
            wanted.append((name, [min(d, 3) for d in variable.shape.as_list()], variable.trainable))
    expected = {}
    for name, shape, trainable in wanted:
        if name == "global_step":
            value = np.array(123456789012, dtype=np.int64)  # more than 32 bits
        else:
            value = rng.standard_normal(shape).astype(np.float32)
        expected[name] = value
        v1.get_variable(name, initializer=value, trainable=trainable)
        if trainable:
            slot = (0.5 * value).astype(np.float32)
            expected[name + "/Momentum"] = slot
            v1.get_variable(name + "/Momentum", initializer=slot, trainable=False)
    expected["dtypes/float16"] = np.array([[0.5, -1.25, 3.0], [65504.0, 1e-3, -0.0]], dtype=np.float16)
    expected["dtypes/int32"] = np.array([1, -2, 2**31 - 1, -(2**31)], dtype=np.int32)
    bfloat16 = np.array([1.0, -2.5, 0.15625, 2.0**100, 0.0], dtype=np.float32)  # exactly representable in bfloat16
    expected["dtypes/bfloat16"] = bfloat16
    v1.get_variable("dtypes/float16", initializer=expected["dtypes/float16"])
    v1.get_variable("dtypes/int32", initializer=expected["dtypes/int32"])
    v1.get_variable("dtypes/bfloat16", initializer=tf.cast(bfloat16, tf.bfloat16))
    saver = v1.train.Saver(write_version=v1.train.SaverDef.V2)
    with v1.Session() as session:
        session.run(v1.global_variables_initializer())
        saver.save(session, str(HERE / "small"), write_meta_graph=False, write_state=False)
        reader = tf.train.load_checkpoint(str(HERE / "small"))
        stored = reader.get_variable_to_dtype_map()
    assert stored["dtypes/bfloat16"] == tf.bfloat16 and stored["global_step"] == tf.int64, stored
    np.savez_compressed(HERE / "small_expected.npz", **expected)
    print(f"small: {len(expected)} tensors")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", required=True, help="clovaai/assembled-cnn: a clone or its git directory")
    args = parser.parse_args()
    v1.disable_eager_execution()
    model_fns = import_their_model_fns(args.repo)
    r50 = write_variable_list(model_fns, "assemble_resnet50")
    write_variable_list(model_fns, "assemble_resnet152")
    write_small_checkpoint(r50)


if __name__ == "__main__":
    main()
