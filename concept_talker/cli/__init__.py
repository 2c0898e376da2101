"""`concept-talker`: one command line for the whole project.

Each subcommand is a module of this package (`concept_talker/cli/<command>.py`) that parses arguments and nothing
else: `add_arguments(parser)` and `run(args) -> int`, calling the library below. Modules are imported only when their
subcommand runs, so `concept-talker chat` does not import the training stack.

An error (bad audio, checkpoint or setting) is printed as one line, `concept-talker COMMAND: error: ...`, with exit
status 1; `--debug` prints the traceback instead. Warnings are printed as one line each too.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

SUBCOMMANDS = {
    "chat": ("concept_talker.cli.chat", "answer a spoken question with a spoken reply (streaming), printing the timings"),
    "demo": ("concept_talker.cli.demo", "the tutor in a browser page (Gradio): speak or upload a question, hear the reply stream"),
    "bench": ("benchmarks.bench", "latency and throughput benchmark against plain transformers generate()"),
    "synth": ("concept_talker.cli.synth", "build a synthetic spoken-tutoring dataset (TTS + codec codes)"),
    "train": ("concept_talker.cli.train", "train with a recipe: configuration/<recipe>.yaml [--key value ...]"),
    "push": ("concept_talker.cli.push", "push a checkpoint to the Hub with its model card (or --dry-run to a folder)"),
    "eval-speech": ("concept_talker.cli.eval_speech", "intelligibility of spoken replies (WER through the Whisper judge)"),
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(prog="concept-talker", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parsers = {name: sub.add_parser(name, help=help_text, description=help_text) for name, (_, help_text) in SUBCOMMANDS.items()}
    for command_parser in parsers.values():
        command_parser.add_argument("--debug", action="store_true", help="on an error, print its whole traceback")
    return parser, parsers


def _one_line_warning(command: str):
    """A `warnings.showwarning` that prints `concept-talker COMMAND: warning: ...`, not the file and line it came from."""

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"concept-talker {command}: warning: {message}", file=file or sys.stderr)

    return show


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser, parsers = build_parser()
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in SUBCOMMANDS:
        parser.print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    debug = "--debug" in argv
    shown = warnings.showwarning
    try:
        module = importlib.import_module(SUBCOMMANDS[command][0])
        module.add_arguments(parsers[command])
        if getattr(module, "TAKES_OVERRIDES", False):
            # `--some.key value` pairs that the subcommand does not declare are passed on as overrides (recipes).
            args, overrides = parser.parse_known_args(argv)
            args.overrides = overrides
        else:
            args = parser.parse_args(argv)
        if not debug:
            warnings.showwarning = _one_line_warning(command)
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"concept-talker {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # anything a user can cause: bad audio, checkpoint, setting, file, missing package
        if debug:
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"concept-talker {command}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = shown
