"""``xtune convert``: being written (see its issue)."""

from xtune.errors import XtuneError


def add_parser(sub, name: str, text: str) -> None:
    p = sub.add_parser(name, help=text, description=text)
    p.set_defaults(func=run)


def run(args) -> int:
    raise XtuneError("xtune convert is not available in this build yet.")
