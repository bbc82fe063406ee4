"""Derive the parameter names, order and shapes of ademxapp's ResNet-38 checkpoints from ademxapp's own symbol code.

Runs util/symbol/{symbol,resnet_v1,resnet_v2}.py of an ademxapp checkout (github.com/itijyou/ademxapp) against a
stand-in for `mxnet` that only records the graph, then writes what `mx.model.save_checkpoint` would store for
rna_model_a(1000), rna_model_a1(1000) and fcrna_model_a1(21): every argument of the symbol except the inputs `data`
and `softmax_label` as `arg:NAME`, every auxiliary state as `aux:NAME`, each with its inferred shape.

    python tests/data/ademxapp/derive_param_names.py /path/to/ademxapp > tests/data/ademxapp/param_names.json

The stand-in follows MXNet (nnvm) where it matters: list_arguments / list_auxiliary_states are the variables in
depth-first post-order from the output, inputs left to right; BatchNorm adds aux inputs `{name}_moving_mean` and
`{name}_moving_var`; SoftmaxOutput adds the input `{name}_label`; Convolution weights are
(num_filter, channels / num_group, kh, kw), FullyConnected weights (num_hidden, flattened input). The ademxapp files
are Python 2; the only rewrite is `print x` -> `print(x)` (their progress printing) and `xrange` = `range`.
save_checkpoint fills a Python 2 dict, so a real file's order is the hash order of those names: the order here is
the symbol's, and a converter must not depend on it.
"""
import contextlib
import io
import json
import re
import subprocess
import sys
import types
from pathlib import Path

FILES = ("util/symbol/symbol.py", "util/symbol/resnet_v1.py", "util/symbol/resnet_v2.py")


class Node:
    def __init__(self, op, name, inputs=(), attrs=None, aux=False):
        self.op, self.name, self.inputs, self.attrs, self.aux = op, name, list(inputs), attrs or {}, aux

    def __add__(self, other):
        return Node("_Plus", "plus", [self, other])

    def variables(self):
        order, seen = [], set()

        def visit(node):
            if id(node) in seen:
                return
            seen.add(id(node))
            for i in node.inputs:
                visit(i)
            if node.op is None:
                order.append(node)

        visit(self)
        return order

    def infer(self, data_shape):
        """{variable name: shape} and this node's output shape, for `data` of data_shape."""
        shapes, outs = {"data": tuple(data_shape)}, {}

        def out(node):
            if id(node) in outs:
                return outs[id(node)]
            if node.op is None:
                return shapes[node.name]
            a, x = node.attrs, out(node.inputs[0])
            if node.op == "Convolution":
                (k, _), (s, _), (d, _), (p, _) = a["kernel"], a["stride"], a["dilate"], a["pad"]
                shapes[node.inputs[1].name] = (a["num_filter"], x[1] // a["num_group"], k, k)
                if not a["no_bias"]:
                    shapes[node.inputs[2].name] = (a["num_filter"],)
                size = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n in x[2:]]
                y = (x[0], a["num_filter"], *size)
            elif node.op == "BatchNorm":
                for i in node.inputs[1:]:
                    shapes[i.name] = (x[1],)
                y = x
            elif node.op == "Pooling":
                if a.get("global_pool"):
                    y = (x[0], x[1], 1, 1)
                else:  # MXNet's default 'valid' convention; only parameter shapes are kept, which it does not touch
                    (k, _), (s, _), (p, _) = a["kernel"], a["stride"], a["pad"]
                    y = (x[0], x[1], *[(n + 2 * p - k) // s + 1 for n in x[2:]])
            elif node.op == "FullyConnected":
                flat = 1
                for n in x[1:]:
                    flat *= n
                shapes[node.inputs[1].name] = (a["num_hidden"], flat)
                if not a["no_bias"]:
                    shapes[node.inputs[2].name] = (a["num_hidden"],)
                y = (x[0], a["num_hidden"])
            elif node.op == "SoftmaxOutput":
                shapes[node.inputs[1].name] = x[:1] + x[2:] if a.get("multi_output") else x[:1]
                y = x
            elif node.op in ("Activation", "Dropout", "_Plus"):
                for i in node.inputs[1:]:
                    if out(i) != x:
                        raise ValueError(f"{node.name}: shapes {x} and {out(i)} do not add")
                y = x
            else:
                raise NotImplementedError(node.op)
            outs[id(node)] = y
            return y

        return shapes, out(self)

    def infer_shape(self, data):  # what the ademxapp code prints while building
        shapes, y = self.infer(data)
        return [shapes[v.name] for v in self.variables() if not v.aux], [y], []


def _op(op, extra=(), aux=()):
    def build(data=None, *args, name, **attrs):
        inputs = [data, *[attrs.pop(k) for k in extra if k in attrs]]
        inputs += [Node(None, f"{name}_{suffix}", aux=suffix != "label") for suffix in aux]
        return Node(op, name, inputs, attrs)
    return build


def mxnet_stand_in():
    mx = types.ModuleType("mxnet")
    mx.sym = mx.symbol = types.SimpleNamespace(
        Variable=lambda name, **kw: Node(None, name),
        Convolution=_op("Convolution", ("weight", "bias")),
        FullyConnected=_op("FullyConnected", ("weight", "bias")),
        BatchNorm=_op("BatchNorm", ("gamma", "beta"), ("moving_mean", "moving_var")),
        Pooling=_op("Pooling"), Activation=_op("Activation"), Dropout=_op("Dropout"),
        SoftmaxOutput=_op("SoftmaxOutput", (), ("label",)),
    )
    mx.AttrScope = lambda **kw: contextlib.nullcontext()
    return mx


def read_sources(root: Path) -> tuple[str, dict[str, str]]:
    """(commit, {file: text}) from a checkout or a bare git directory of ademxapp."""
    git = ["git", "-C", str(root)]
    commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    texts = {f: subprocess.run([*git, "show", f"HEAD:{f}"], check=True, capture_output=True, text=True).stdout
             for f in FILES}
    return commit, texts


def load_ademxapp(texts: dict[str, str]) -> types.ModuleType:
    saved = {k: sys.modules.get(k) for k in ("mxnet", "symbol", "resnet_v1", "resnet_v2")}
    sys.modules["mxnet"] = mxnet_stand_in()
    try:
        for f in FILES:
            name = Path(f).stem
            module = types.ModuleType(name)
            module.xrange = range
            source = re.sub(r"(^\s*|;\s*)print (.+)$", r"\1print(\2)", texts[f], flags=re.M)
            sys.modules[name] = module
            exec(compile(source, f"ademxapp/{f}", "exec"), module.__dict__)
        return sys.modules["resnet_v2"]
    finally:
        for k, v in saved.items():
            if k != "resnet_v2":
                sys.modules.pop(k, None) if v is None else sys.modules.__setitem__(k, v)


def checkpoint_names(net: Node, data_shape) -> list[list]:
    shapes, _ = net.infer(data_shape)
    inputs = {"data", "softmax_label"}
    variables = [v for v in net.variables() if v.name not in inputs]
    return ([[f"arg:{v.name}", list(shapes[v.name])] for v in variables if not v.aux]
            + [[f"aux:{v.name}", list(shapes[v.name])] for v in variables if v.aux])


def main(root: str) -> None:
    commit, texts = read_sources(Path(root))
    resnet_v2 = load_ademxapp(texts)
    builds = {  # ademxapp builder -> the deepres model its checkpoints convert to
        "rna_model_a(1000)": ("resnet38_a", 1000, lambda: resnet_v2.rna_model_a(1000)),
        "rna_model_a1(1000)": ("resnet38_a1", 1000, lambda: resnet_v2.rna_model_a1(1000)),
        "fcrna_model_a1(21)": ("fcn_resnet38_a1", 21, lambda: resnet_v2.fcrna_model_a1(21)),
    }
    models = {}
    for call, (deepres_model, classes, build) in builds.items():
        with contextlib.redirect_stdout(io.StringIO()):  # ademxapp prints feature shapes while building
            net = build()
        models[call] = {"deepres_model": deepres_model, "num_classes": classes,
                        "params": checkpoint_names(net, (1, 3, 224, 224))}
    text = json.dumps({"source": {"repo": "itijyou/ademxapp", "commit": commit, "files": list(FILES)},
                       "derived_by": "tests/data/ademxapp/derive_param_names.py", "models": models}, indent=1)
    # one [name, shape] per line, for reading and diffs
    sys.stdout.write(re.sub(r"\[\s+(\"[^\"]+\"),\s+\[([\d,\s]*)\]\s+\]",
                            lambda m: f"[{m[1]}, [{', '.join(m[2].replace(',', ' ').split())}]]", text) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
