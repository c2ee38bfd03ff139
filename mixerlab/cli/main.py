"""Entry point of the ``mixerlab`` command."""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys

# Sub-command modules, in the order ``mixerlab --help`` shows them. A module that is not
# present (a feature not installed) is skipped.
COMMANDS = ("list", "train", "eval", "convert", "bench", "analyze", "compare", "ablate", "dense")


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, once: "(default: X)" is added unless the help
    already says its default or there is none to say (None, False, a flag)."""

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        if ("default" in text or d is None or d is False or d is argparse.SUPPRESS or d == []
                or not action.option_strings):
            return text
        return f"{text} (default: {' '.join(map(str, d)) if isinstance(d, (list, tuple)) else d})"


class CLIError(Exception):
    """A user error: printed as one line, exit status 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mixerlab",
        description="mixerlab: token mixers of ViT/DeiT, FF-only, ConViT, DeepViT, LaViT, PoolFormer.",
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="print the versions of mixerlab, torch and timm")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"mixerlab.cli.{name}_cmd")
        except ModuleNotFoundError as e:
            if e.name == f"mixerlab.cli.{name}_cmd":
                continue
            raise
        p = mod.add_parser(sub)
        p.formatter_class = HelpFormatter
        p.set_defaults(_run=mod.run)
    return parser


class _Version(argparse.Action):
    """``--version``: torch and timm are imported only when it is asked for (not for every command)."""

    def __call__(self, parser, namespace, values, option_string=None):
        import timm
        import torch

        from ..version import __version__
        print(f"mixerlab {__version__} (torch {torch.__version__}, timm {timm.__version__})")
        parser.exit()


def progress_line(text: str, *, last: bool) -> None:
    """A progress message on stderr: one rewritten line on a terminal, plain lines otherwise."""
    if sys.stderr.isatty():
        print("\r" + text.ljust(100), end="\n" if last else "", file=sys.stderr, flush=True)
    else:
        print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except BrokenPipeError:  # `mixerlab list | head`: the reader left; stop quietly, as Unix tools do
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (CLIError, ValueError, TypeError, KeyError, OSError) as e:
        # Bad input or a file-system fault (missing, read-only, full, not a folder): one clear
        # line, exit status 2, no traceback wall.
        print(f"mixerlab {args.command}: error: {error_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mixerlab {args.command}: interrupted", file=sys.stderr)
        return 130


def error_message(e: BaseException) -> str:
    """One line for a user: the message, or for an ``OSError`` its reason and file name."""
    if isinstance(e, KeyError) and e.args:
        return str(e.args[0])
    if isinstance(e, OSError) and e.strerror:
        names = " -> ".join(str(n) for n in (e.filename, e.filename2) if n is not None)
        return f"{e.strerror}: {names}" if names else e.strerror
    text = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
    return text or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
