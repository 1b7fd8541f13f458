"""A uvicorn server in a background thread on 127.0.0.1, for the serve tests."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import uvicorn


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    def __init__(self, app: object) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> RunningServer:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_server(model_dir: Path, **settings: object) -> RunningServer:
    from gptforge.model.loading import load_model
    from gptforge.serve.app import ServeSettings, create_app
    from gptforge.serve.backend import Backend

    model = load_model(model_dir)
    return RunningServer(create_app(Backend(model, "tiny"), ServeSettings(**settings)))


