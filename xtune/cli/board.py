"""``xtune board``: the web page to fine-tune, watch, chat and export (see :mod:`xtune.board`)."""

import argparse
import ipaddress
import signal
import sys

from xtune.errors import XtuneError

LOOPBACK_NAMES = ("localhost",)


def add_parser(sub, name: str, text: str) -> None:
    p = sub.add_parser(
        name,
        help=text,
        description=f"{text}.\n\nExample: xtune board --root work_dirs   (then open http://127.0.0.1:7860)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--root", default="work_dirs", help="the folder holding the runs' work dirs (default work_dirs)")
    p.add_argument("--auth", metavar="USER:PASS", help="require this login; needed to listen beyond this machine")
    p.set_defaults(func=board)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """``USER:PASS`` as a pair.

    Raises:
        XtuneError: No colon, or an empty user or password.
    """
    if value is None:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise XtuneError(f"--auth expects USER:PASS with both parts non-empty, got '{value}'.")
    return user, password


def check_args(args: argparse.Namespace) -> tuple[str, str] | None:
    """The login to require; refuses to listen beyond loopback without one."""
    auth = parse_auth(args.auth)
    if not is_loopback(args.host) and auth is None:
        raise XtuneError(
            f"--host {args.host} lets other machines reach the board, which can start processes and read files "
            "here: add --auth USER:PASS (or keep the default --host 127.0.0.1)."
        )
    if not 0 < args.port < 65536:
        raise XtuneError(f"--port must be 1-65535, got {args.port}.")
    return auth


def board(args: argparse.Namespace) -> int:
    auth = check_args(args)
    try:
        from xtune.board.app import CSS, build_app
    except ImportError as exc:
        raise XtuneError(f"xtune board needs Gradio ({exc}): pip install 'xtune[board]'") from None

    demo, state = build_app(args.root)
    # SIGTERM ends the board (status 143) like Ctrl-C does: its runs are stopped (and save) on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    print(f"xtune board: runs under {state.root}; http://{args.host}:{args.port}", file=sys.stderr)
    try:
        demo.queue().launch(server_name=args.host, server_port=args.port, auth=auth, css=CSS, quiet=True)
    finally:
        running = state.jobs.active()
        if running is not None:
            print(f"xtune board: stopping {running.work_dir.name} (it saves a checkpoint first)", file=sys.stderr)
        state.jobs.shutdown()
        print("xtune board: stopped", file=sys.stderr)
    return 0
