"""Help that is true: `deepres --help`, every subcommand's and nested action's --help render, and every `--option`
their text mentions is one the parser it names accepts; a refused option is one line with the subcommand's usage;
the benchmarks' --help is whole sentences."""
import ast
import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deepres.cli import SUBCOMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parents[1]
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
# "`deepres serve` ... --max-batch": the text speaks of another command's options too
NAMED_COMMAND = re.compile(r"deepres (" + "|".join(map(re.escape, sorted(SUBCOMMANDS, key=len, reverse=True)))
                           + r")\b")


def subcommand_parser(name: str) -> argparse.ArgumentParser:
    return build_parser(name)[1][name]


def nested(parser: argparse.ArgumentParser, path: tuple[str, ...]):
    """(path, parser, its ancestors) for the parser and every action below it (`data make`, ...)."""
    stack = [(path, parser, ())]
    while stack:
        path, parser, ancestors = stack.pop()
        yield path, parser, ancestors
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack += [((*path, name), child, (*ancestors, parser)) for name, child in action.choices.items()]


def options(*parsers: argparse.ArgumentParser) -> set[str]:
    return {flag for parser in parsers for action in parser._actions for flag in action.option_strings}


def texts(parser: argparse.ArgumentParser):
    """(text, the parser it describes or None for `parser` itself) for every piece of prose its help shows."""
    yield parser.description or "", None
    yield parser.epilog or "", None
    for group in parser._action_groups:
        yield group.title or "", None
        yield group.description or "", None
    for action in parser._actions:
        yield action.help or "", None
        if isinstance(action, argparse._SubParsersAction):  # a listed action's line describes that action
            for listed in action._choices_actions:
                yield listed.help or "", action.choices[listed.dest]


def wrong_mentions(text: str, accepted: set[str]) -> list[str]:
    """The --options in `text` that no parser it speaks of accepts: `accepted`, or a `deepres NAME` the text
    names."""
    named = {m.group(1) for m in NAMED_COMMAND.finditer(text)}
    allowed = accepted.union(*(options(subcommand_parser(name)) for name in named))
    return [flag for flag in OPTION.findall(text) if flag not in allowed]


@pytest.mark.parametrize("name", [None, *SUBCOMMANDS])
def test_every_option_the_help_mentions_is_one_the_command_accepts(name, capsys):
    """`deepres [NAME [ACTION]] --help` exits 0 with that parser's usage, and every --option in its prose (the
    description, each option's help, the listing of subcommands or actions) is accepted by a parser the prose
    speaks of: the subcommand a listing line describes, else the parser itself or one above it, or a command the
    text names (`deepres serve ... --max-batch`)."""
    top, parsers = build_parser(name)
    root = parsers[name] if name else top
    wrong = []
    # the top level alone: its subcommands get their options only when run (build_parser(name) above)
    for path, parser, ancestors in nested(root, (name,)) if name else [((), top, ())]:
        with pytest.raises(SystemExit) as exit_:
            main([*path, "--help"])
        assert exit_.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: {' '.join(('deepres', *path))} ")
        for text, described in texts(parser):
            if described is not None and name is None:  # a line of the top-level listing: that subcommand's parser
                described = subcommand_parser(described.prog.split()[-1])
            accepted = options(described) if described is not None else options(parser, *ancestors)
            wrong += [f"deepres {' '.join(path)}: {flag} in {text!r}" for flag in wrong_mentions(text, accepted)]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("name", [name for name in SUBCOMMANDS
                                  if any(isinstance(a, argparse._SubParsersAction)
                                         for a in subcommand_parser(name)._actions)])
def test_the_listing_names_every_action_of_a_subcommand(name):
    """`deepres --help`'s line for a command with actions (data: get, verify, pack, make, make-corrupted) names
    each of them."""
    actions = [action for action in subcommand_parser(name)._actions
               if isinstance(action, argparse._SubParsersAction)][0]
    line = SUBCOMMANDS[name][1]
    assert not [a for a in actions.choices if not re.search(rf"(?<![\w-]){re.escape(a)}(?![\w-])", line)], line


def test_predict_is_listed_as_classifying_and_segmenting():
    line = SUBCOMMANDS["predict"][1]
    assert "classif" in line and "segment" in line


@pytest.mark.parametrize("argv, unknown", [(["serve", "resnet20", "--compile"], "--compile"),
                                           (["models", "--top", "3"], "--top 3")])
def test_an_unknown_option_is_one_line_with_the_subcommands_usage(argv, unknown, capsys):
    """serve takes no --compile (its help does not mention one): refused in one line naming the option, exit 2,
    under `deepres serve`'s usage rather than the top level's."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: deepres {argv[0]} ") and "usage: deepres [-h] COMMAND" not in err
    assert err.strip().splitlines()[-1] == f"deepres {argv[0]}: error: unrecognized arguments: {unknown}"


def test_serve_load_help_is_whole_sentences_and_names_real_options():
    """benchmarks/serve_load.py --help: its description ends a sentence (it stopped at a comma), and the options it
    names are its own or `deepres serve`'s."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve_load.py"), "--help"], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    description = out.split("\n\n")[1]
    assert description.rstrip().endswith("."), description
    own = set(re.findall(r"^\s+(--[a-z][a-z0-9-]*)", out.split("options:")[1], re.M))
    assert {"--quick", "--models"} <= own
    assert not wrong_mentions(description, own), description


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")
                                          if "ArgumentParser(description=__doc__" in p.read_text()))
def test_every_benchmark_help_shows_its_first_paragraph_whole(script):
    """Each benchmark's --help description is its docstring's whole first paragraph (eight of them cut it at the
    first line, mid-sentence), and that paragraph ends a sentence."""
    source = (ROOT / "benchmarks" / script).read_text()
    assert 'description=__doc__.split("\\n\\n")[0]' in source, script
    first = ast.get_docstring(ast.parse(source), clean=False).split("\n\n")[0].rstrip()
    assert first.endswith((".", ".)")), first
