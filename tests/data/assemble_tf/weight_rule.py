"""The deterministic weights of the forward fixture (numpy only): make_forward_fixture.py writes them into their
TensorFlow graph, tests/test_assemble_tf.py regenerates them for deepres's model."""
import numpy as np


def forward_weights(shapes: list, rng: np.random.Generator) -> list:
    """The value of each (name, shape), in order (RULE). The conv gain 1.5 (not He's 2) keeps the residual sums of
    the 50-block ResNet-152 at a few units: BN with fixed random statistics does not renormalise, so with gain 2
    its stage-3 activations reached 1e4 and float32 itself (PyTorch float32 vs float64) differed by 2% in the
    logits; with 1.5 float32 is within 4e-7 of float64 for both depths."""
    values = []
    for name, shape in shapes:
        kind = name.rsplit("/", 1)[-1]
        if kind == "kernel" and len(shape) == 4:
            value = rng.standard_normal(shape) * np.sqrt(1.5 / np.prod(shape[:3]))
        elif kind == "kernel":
            value = rng.standard_normal(shape) * np.sqrt(1.0 / shape[0])
        elif kind == "gamma":
            value = 1 + 0.1 * rng.standard_normal(shape)
        elif kind == "moving_variance":
            value = 1 + 0.5 * rng.random(shape)
        elif kind in ("beta", "bias", "moving_mean"):
            value = 0.1 * rng.standard_normal(shape)
        else:
            raise ValueError(f"no rule for {name}")
        values.append(value.astype(np.float32))
    return values
