import logging
from pathlib import Path

import pytest

from reelkit.cli import main
from reelkit.paths import shared_data_clips


@pytest.fixture
def shared_clips() -> list[Path]:
    clips = shared_data_clips()
    if not clips:
        pytest.skip("the real clips in ../shared/data are absent (set REELKIT_SHARED_DATA to their folder)")
    return clips


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process: returns (exit_code, stdout, stderr)."""

    def run(*args: str):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    yield run
    logging.getLogger("reelkit").handlers.clear()


@pytest.fixture
def one_line_error():
    """Check a CLI result is one ``error:`` line with exit code 2; return the line."""

    def check(code: int, err: str) -> str:
        assert code == 2, err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert "Traceback" not in err
        return lines[0]

    return check


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and do not stall when the CPU is shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_judge():
    """A loader of a small randomly initialised judge, for suites that need one."""
    import torch

    from reelkit.models.judge import WorldJudge

    def load():
        torch.manual_seed(0)
        return WorldJudge(channels=(8, 8, 8, 16), feature_dim=8).eval()

    return load


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A saved tiny text-to-video pipeline folder, for ``--model``."""
    from reelkit.pipelines.text_to_video import tiny_pipeline

    folder = tmp_path_factory.mktemp("models") / "tiny_t2v"
    tiny_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture
def configure(monkeypatch):
    """Set module constants for one test: ``configure(module, NAME=value, ...)``."""

    def set_constants(module, **values):
        for name, value in values.items():
            monkeypatch.setattr(module, name, value)

    return set_constants
