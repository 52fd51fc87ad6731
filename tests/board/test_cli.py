"""``xtune board``'s command line: loopback by default, wider only with a login."""

import argparse

import pytest

from xtune.cli import build_parser, main
from xtune.cli.board import check_args, is_loopback
from xtune.errors import XtuneError


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["board", *argv])


def test_defaults_are_loopback_port_7860_and_work_dirs():
    args = _args()
    assert (args.host, args.port, args.root, args.auth) == ("127.0.0.1", 7860, "work_dirs", None)
    assert check_args(args) is None


def test_a_non_loopback_host_without_auth_is_refused_with_exit_2(capsys):
    assert main(["board", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "xtune: error: --host 0.0.0.0 lets other machines reach the board" in err and "--auth USER:PASS" in err


def test_a_non_loopback_host_with_auth_is_allowed():
    assert check_args(_args("--host", "0.0.0.0", "--auth", "ada:s3cret:x")) == ("ada", "s3cret:x")


@pytest.mark.parametrize("auth", ["ada", ":pw", "ada:"])
def test_a_malformed_auth_is_an_error(auth):
    with pytest.raises(XtuneError, match="--auth expects USER:PASS"):
        check_args(_args("--auth", auth))


def test_loopback_names():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.com")


@pytest.mark.slow
def test_the_board_serves_behind_its_login_and_ends_cleanly_on_sigterm(tmp_path):
    """The real command: it listens where told, asks for the login, and SIGTERM ends it (stopping its runs)."""
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "xtune", "board", "--port", str(port), "--root", str(tmp_path / "runs")]
    board = subprocess.Popen([*command, "--auth", "ada:pw"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline, status = time.time() + 120, None
        while status is None and time.time() < deadline and board.poll() is None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5)
                status = 200
            except urllib.error.HTTPError as exc:
                status = exc.code
            except OSError:
                time.sleep(0.5)
        assert status == 401  # the page's config is behind the login
        board.send_signal(signal.SIGTERM)
        assert board.wait(60) == 128 + signal.SIGTERM
    finally:
        if board.poll() is None:
            board.kill()
            board.wait()
    assert board.stdout.read().decode().rstrip().endswith("xtune board: stopped")  # its runs were stopped
    assert (tmp_path / "runs").is_dir()
