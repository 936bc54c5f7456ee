import socket

import pytest


@pytest.fixture(scope="module")
def free_port() -> int:
    """A free localhost port for a studio served during a test module."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
