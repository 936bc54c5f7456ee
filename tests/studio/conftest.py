import socket

import pytest


def _pick_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def free_port() -> int:
    """A free localhost port for a studio served during a test module."""
    return _pick_port()


@pytest.fixture
def another_port() -> int:
    """A free localhost port for a second studio, within one test."""
    return _pick_port()
