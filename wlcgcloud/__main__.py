"""The CLI edge: fast paths, global options anywhere, and exceptions turned into exit codes.

Kept cheap on purpose: `--version`, shell completion and help (wlcgcloud.fasthelp) are answered
here before Typer, Rich or any cloud SDK is imported (start-up budget, see bench/startup.py).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

# Global options of the contract: accepted before or after the command. Those in the first set
# take a value.
GLOBAL_VALUE_OPTIONS = frozenset({"-p", "--profile", "-o", "--output", "--query", "--config", "--wait-lock"})
GLOBAL_FLAGS = frozenset({"-y", "--yes", "-v", "--verbose", "--debug", "--no-color", "--version"})
COMPLETE_VAR = "_WLCGCLOUD_COMPLETE"


def hoist_global_options(argv: Sequence[str]) -> list[str]:
    """Move global options (with their values) in front of the command, where Typer expects them.

    `wlcgcloud instance list -o json` becomes `wlcgcloud -o json instance list`. The command tree
    (wlcgcloud/cli/tree.json) tells which of a command's own options take a value, so a value
    that looks like an option (`--username -p`) stays where it is. Everything after `--` is left
    alone. Forms understood: `-o json`, `-ojson`, `--output json`, `--output=json`, `-vv`, `-yv`.
    """
    from wlcgcloud.completion import FLAG, child, load_tree

    node = load_tree()
    hoisted: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        name = arg.split("=", 1)[0] if arg.startswith("--") else arg[:2]
        if arg in GLOBAL_FLAGS:
            hoisted.append(arg)
        elif len(arg) > 2 and arg[0] == "-" and arg[1] != "-" and all(f"-{c}" in GLOBAL_FLAGS for c in arg[1:]):
            hoisted += [f"-{c}" for c in arg[1:]]  # -vv, -yv
        elif arg in GLOBAL_VALUE_OPTIONS and i + 1 < len(argv):
            hoisted += [arg, argv[i + 1]]
            i += 1
        elif name in GLOBAL_VALUE_OPTIONS and arg != name:  # --output=json, -ojson
            hoisted.append(arg)
        elif arg.startswith("-"):
            rest.append(arg)
            if "=" not in arg and node.get("options", {}).get(arg, FLAG) != FLAG and i + 1 < len(argv):
                rest.append(argv[i + 1])  # this command's own option takes the next word as its value
                i += 1
        else:
            node = child(node, arg) or node
            rest.append(arg)
        i += 1
    return hoisted + rest


def _print_error(message: str) -> None:
    from wlcgcloud.escape import escape_controls

    color = sys.stderr.isatty() and "NO_COLOR" not in os.environ and "--no-color" not in sys.argv
    prefix = "\x1b[31merror:\x1b[0m" if color else "error:"
    # A profile name, file name or cloud reply quoted in the message may hold control characters.
    print(f"{prefix} {escape_controls(message, keep_newlines=True)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run wlcgcloud with `argv` (default: the process arguments) and return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    before_dashdash = args[: args.index("--")] if "--" in args else args
    if "--version" in before_dashdash:
        from wlcgcloud import __version__

        print(f"wlcgcloud {__version__}")
        return 0
    if os.environ.get(COMPLETE_VAR):
        from wlcgcloud.completion import complete_from_environment

        return complete_from_environment()

    if "--" not in args:
        from wlcgcloud.fasthelp import answer

        page = answer(args, GLOBAL_VALUE_OPTIONS, GLOBAL_FLAGS)
        if page is not None:
            sys.stdout.write(page)
            return 0

    debug = "--debug" in before_dashdash
    try:
        from wlcgcloud.cli import run

        return run(hoist_global_options(args))
    except KeyboardInterrupt:
        from wlcgcloud.errors import Interrupted

        _print_error("interrupted.")
        return Interrupted.exit_code
    except BrokenPipeError:
        # `wlcgcloud ... | head`: the reader went away; exit as a process killed by SIGPIPE would.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except Exception as exc:  # the last line of defence: a bug, never a traceback by default
        from wlcgcloud.errors import UsageError, WlcgError

        if isinstance(exc, WlcgError):
            if debug and not isinstance(exc, UsageError):  # a mistyped command needs no traceback
                import traceback

                # Our frames only: a cloud SDK's exception behind ours may quote a request
                # (user-data, a secret) back at us, so the chain is not printed.
                traceback.print_exception(exc, chain=False)
            _print_error(str(exc))
            return exc.exit_code
        if debug:
            import traceback

            traceback.print_exc()
        _print_error(
            f"internal error: {type(exc).__name__}: {exc}. This is a bug; "
            "run again with --debug for a traceback and report it."
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
