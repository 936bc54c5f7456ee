"""Bench suite ``studio``: does the page measure what the benches measure, and answer as fast as the CLI?

The studio is served on a free localhost port and driven through ``gradio_client``, as a browser would:

* ``compare_adacache_fast``: the compare view (AdaCache, fast preset, on the teacher; 50 steps, guidance 5,
  17 frames at 64 px) on the ``cache`` suite's held-out prompts with its seeds (seed = prompt index): the
  page's speedup and PSNR against the plain clip, averaged, next to ``reelkit bench cache``'s committed
  ``adacache_fast`` row (``bench_speedup``, ``bench_psnr_db``) when ``docs/bench/cache.json`` holds one;
* ``student_page`` / ``student_cli``: one 4-step student clip, answered by the page (request to video file, the
  model warm) and by ``reelkit generate`` (its reported time for the same clip), and their difference.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reelkit.eval.bench import BenchContext

PROMPTS = {False: 12, True: 2}
SETTINGS = dict(steps=50, guidance=5.0, frames=17, size=64)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ask(client, prompt: str, model: str, steps: int, seed: int, cache: str, compare: bool):
    s = SETTINGS
    return client.predict(prompt, "", model, steps, s["guidance"], seed, s["frames"], s["size"], cache, None, False,
                          0, False, compare, None, api_name="/generate")  # no recipe upload


def _committed_cache_row() -> dict:
    from reelkit.studio.app import BENCH_DIR

    try:
        rows = json.loads((BENCH_DIR / "cache.json").read_text())["rows"]
    except (OSError, ValueError, KeyError):
        return {}
    row = next((r for r in rows if r.get("method") == "adacache_fast"), {})
    return {"bench_speedup": row.get("speedup"), "bench_psnr_db": row.get("psnr_db")}


def run(ctx: BenchContext) -> list[dict]:
    from gradio_client import Client

    from reelkit.eval.bench.harness import heldout_prompts
    from reelkit.studio import launch

    count = PROMPTS[ctx.quick]
    prompts, _ = heldout_prompts(count)
    ctx.settings.update({"prompts": count, **SETTINGS, "cache": "adacache-fast", "model": "teacher"})
    app, url = launch("127.0.0.1", _free_port(), block=False)
    try:
        client = Client(url, verbose=False)
        advance = ctx.progress(f"compare view: {count} prompts", count)
        speedups, psnrs = [], []
        for seed, prompt in enumerate(prompts):
            figures = _ask(client, prompt, "teacher", SETTINGS["steps"], seed, "adacache-fast", True)[2]
            speedups.append(float(re.search(r"speedup ([0-9.]+)x", figures).group(1)))
            psnr = re.search(r"PSNR ([0-9.]+) dB", figures)
            psnrs.append(float(psnr.group(1)) if psnr else 100.0)  # identical clips: the bench's 100 dB
            advance()
        rows = [{"method": "compare_adacache_fast", "clips": count, "speedup": sum(speedups) / count,
                 "psnr_db": sum(psnrs) / count, **_committed_cache_row()}]
        prompt = prompts[0]
        _ask(client, prompt, "student", 4, 0, "off", False)  # load and warm the student
        started = time.perf_counter()
        _ask(client, prompt, "student", 4, 0, "off", False)
        page = time.perf_counter() - started
    finally:
        app.close()
    with tempfile.TemporaryDirectory() as folder:
        out = subprocess.run([sys.executable, "-m", "reelkit", "generate", prompt, "-o", str(Path(folder) / "c.mp4"),
                              "--model", "student", "--steps", "4"], capture_output=True, text=True, timeout=600)
    match = re.search(r"in ([0-9.]+) s", out.stdout)
    cli = float(match.group(1)) if match else None
    rows.append({"method": "student_page", "latency_s": page})
    rows.append({"method": "student_cli", "latency_s": cli,
                 "page_minus_cli_s": None if cli is None else page - cli})
    return rows


__all__ = ["run"]
