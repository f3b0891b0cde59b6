"""The ``gaheads`` command: ``gaheads SUBCOMMAND [args]``.

Each subcommand is a module with ``main(argv) -> int``, imported only when used, so
``gaheads info`` does not pay for the training stack.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("gaheads.cli.info", "parameters, GMACs, branches and input size of models"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: gaheads SUBCOMMAND [options]   (gaheads SUBCOMMAND -h for its options)", "", "subcommands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from .. import __version__
        print(f"gaheads {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"gaheads: unknown subcommand {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
