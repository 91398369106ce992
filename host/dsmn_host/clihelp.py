"""One rule for every subcommand's --help: descriptions kept as written, examples at the end,
every option's default shown.

Each stage's `register()` passes `**clihelp.style(...)` to `add_parser`; `cli.build_parser` also
applies the formatter to any subcommand that forgot, so defaults show everywhere. This is a
leaf module (argparse only) so stage modules can use it without importing the CLI.
"""

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps description and epilog line breaks; appends "(default: X)" to an option's help
    unless its help already names the default or there is none to show (None, off flags)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (default is None or default is False or default is argparse.SUPPRESS or "default" in text
                or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


def style(*examples):
    """add_parser keyword arguments: the shared formatter and an epilog of example invocations."""
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples) if examples else None
    return {"formatter_class": HelpFormatter, "epilog": epilog}
