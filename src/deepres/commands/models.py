"""`deepres models`: the table of registered models."""
from deepres.models.complexity import table_complexity
from deepres.models.registry import list_models


def add_arguments(parser):
    parser.add_argument("--filter", default="*", help="shell-style name pattern, e.g. 'resnet5*'")
    parser.add_argument("--no-flops", action="store_true",
                        help="skip counting GMACs (multiply-accumulates) of models not in the cache yet (faster)")


def run(args) -> int:
    names = list_models(args.filter)
    if not names:
        raise ValueError(f"no model matches {args.filter!r}")
    print(f"{'model':<20} {'params (M)':>11} {'GMACs':>8}  input")
    for row in table_complexity(names, flops=not args.no_flops):
        name = row["name"]
        size = "x".join(map(str, row["input_size"]))
        print(f"{name:<20} {row['params'] / 1e6:>11.2f} {row['gmacs']:>8.2f}  {size}")
    return 0
