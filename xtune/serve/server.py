"""Run the app with uvicorn on an already bound socket; SIGTERM/SIGINT end generations and stop cleanly."""

import signal
import socket

import uvicorn

from xtune.serve.engine import HFEngine


class _Server(uvicorn.Server):
    """uvicorn's server that prints the ready message once listening and ends generations on a stop."""

    def __init__(self, config: uvicorn.Config, engine: HFEngine, message: str) -> None:
        super().__init__(config)
        self.engine = engine
        self.message = message

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            print(self.message, flush=True)

    def handle_exit(self, sig, frame) -> None:
        self.engine.stop()  # running generations end at their next token, so their streams close promptly
        super().handle_exit(sig, frame)


def run_server(app, sock: socket.socket, engine: HFEngine, message: str) -> None:
    """Serve ``app`` on ``sock`` until SIGTERM or SIGINT; prints ``message`` once ready."""
    server = _Server(uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=10), engine, message)
    # uvicorn re-raises the signal that stopped it once it has shut down; with these handlers that ends
    # here, as a clean stop, instead of killing the process (SIGTERM) or raising KeyboardInterrupt.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        engine.close()
