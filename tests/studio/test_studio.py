"""The studio through gradio_client against an app served on a free localhost port (the bundled teacher, tiny
settings): generate and compare, bad input as a message in the page while the app keeps serving, uploads."""

import json

import pytest

from reelkit.data.video_io import count_frames

gradio_client = pytest.importorskip("gradio_client")

SMALL = dict(steps=4, guidance=5.0, seed=0, frames=9, size=32)


@pytest.fixture(scope="module")
def studio(free_port):
    from reelkit.studio import launch

    app, url = launch("127.0.0.1", free_port, block=False)
    yield app, gradio_client.Client(url, verbose=False)
    app.close()


def generate(client, prompt, cache="off", codebook=None, moreg=False, rehash=0, slicing=False, compare=False,
             recipe=None, model="teacher", **settings):
    s = {**SMALL, **settings}
    return client.predict(prompt, "", model, s["steps"], s["guidance"], s["seed"], s["frames"], s["size"], cache,
                          codebook, moreg, rehash, slicing, compare, recipe, api_name="/generate")


def test_the_page_serves_on_localhost_and_compares_accelerated_with_plain(studio):
    app, client = studio
    assert app.server_name == "127.0.0.1"
    fast, plain, figures, error = generate(client, "a red circle moving right", cache="adacache-fast", steps=8,
                                           compare=True)
    assert error == ""
    assert count_frames(fast)[0] == 9 and count_frames(plain)[0] == 9
    assert "speedup" in figures and ("PSNR" in figures or "identical" in figures) and "judge: shape" in figures
    assert "accelerated" in figures and "plain" in figures


def test_one_clip_without_compare_and_with_step_rehash_and_slicing(studio):
    _, client = studio
    fast, plain, figures, error = generate(client, "a green star bouncing", rehash=3, slicing=True, steps=6)
    assert error == "" and plain is None and count_frames(fast)[0] == 9
    assert "6 / 6" in figures  # full / rehash calls: 3 + 3 of 6 steps in each guidance branch


@pytest.mark.parametrize("prompt, settings, message", [
    ("a red circel", {}, "unknown word in prompt: 'circel' (did you mean circle?)"),
    ("a black star spinning", {}, "background colour"),
    ("a red circle", {"size": 40}, "multiples of"),
    ("", {}, "prompt is empty"),
])
def test_bad_input_is_a_message_in_the_page_and_the_app_keeps_serving(studio, prompt, settings, message):
    _, client = studio
    fast, plain, figures, error = generate(client, prompt, **settings)
    assert fast is None and plain is None and message in error
    assert generate(client, "a blue square moving up")[3] == ""


def test_a_codebook_upload_is_used_and_a_file_that_is_not_one_is_refused(studio, tmp_path):
    _, client = studio
    good = tmp_path / "codebook.json"
    good.write_text(json.dumps({"codebook": [{"threshold": 0.5, "rate": 3}, {"threshold": 1.0, "rate": 1}]}))
    bad = tmp_path / "notes.json"
    bad.write_text("this is not a codebook")
    result = generate(client, "a red circle", codebook=gradio_client.handle_file(str(bad)))
    assert result[0] is None and "codebook" in result[3].lower()
    result = generate(client, "a red circle", codebook=gradio_client.handle_file(str(good)), steps=8)
    assert result[3] == "" and "all computed" not in result[2] and count_frames(result[0])[0] == 9


def test_a_recipe_upload_sets_steps_and_accelerators_and_a_foreign_one_is_refused(studio, tmp_path):
    from reelkit.accel.recipe import Recipe, model_fingerprint
    from reelkit.pipelines.text_to_video import load_text_to_video

    _, client = studio
    fingerprint = model_fingerprint(load_text_to_video("teacher").transformer)
    good = Recipe(model="teacher", fingerprint=fingerprint, steps=6, guidance=4.0, cache="adacache-fast")
    good.save(tmp_path / "recipe.json")
    result = generate(client, "a red circle", recipe=gradio_client.handle_file(str(tmp_path / "recipe.json")),
                      steps=30)
    assert result[3] == "" and "| 12 / 0 |" in result[2]  # 6 steps of the recipe, 2 calls each, cache on
    assert count_frames(result[0])[0] == 9
    Recipe(model="teacher", fingerprint="another", steps=6, guidance=4.0).save(tmp_path / "other.json")
    result = generate(client, "a red circle", recipe=gradio_client.handle_file(str(tmp_path / "other.json")))
    assert result[0] is None and "tuned for another model" in result[3]


def test_the_cli_refuses_bad_options(cli, one_line_error):
    assert "--port" in one_line_error(*cli("studio", "--port", "0")[::2])
    assert "not a text-to-video pipeline folder" in one_line_error(*cli("studio", "--model", "/nowhere")[::2])


@pytest.fixture(scope="module")
def uploads(tmp_path_factory):
    from reelkit.data.video_io import write_frames, write_video
    from reelkit.data.world import render_clip

    folder = tmp_path_factory.mktemp("uploads")
    clip = render_clip(3, 17, 64).video
    write_video(clip, folder / "clip.mp4", fps=8.0)
    write_frames(clip[:, ::16], folder / "frames")  # the first and the last frame
    (folder / "frames" / "frame_0000.png").rename(folder / "first.png")
    (folder / "frames" / "frame_0001.png").rename(folder / "last.png")
    (folder / "broken.mp4").write_bytes(b"not a video at all")
    return folder


def test_mardini_interpolates_two_uploaded_images_and_extends_a_video(studio, uploads):
    _, client = studio
    h = gradio_client.handle_file
    out, note, error = client.predict("interpolate", h(str(uploads / "first.png")), h(str(uploads / "last.png")), None,
                                      9, 2, 0, 64, 8, api_name="/mardini")
    assert error == "" and count_frames(out)[0] == 9 and "interpolation" in note
    out, note, error = client.predict("extend", None, None, h(str(uploads / "clip.mp4")), 9, 2, 0, 64, 4,
                                      api_name="/mardini")
    assert error == "" and count_frames(out)[0] == 17 + 4 and "expansion" in note


def test_mardini_and_the_vae_report_missing_or_broken_uploads_in_the_page(studio, uploads):
    _, client = studio
    h = gradio_client.handle_file
    assert "upload the first frame" in client.predict("interpolate", None, None, None, 9, 2, 0, 64, 8,
                                                      api_name="/mardini")[2]
    assert "error" in client.predict("extend", None, None, h(str(uploads / "broken.mp4")), 9, 2, 0, 64, 4,
                                     api_name="/mardini")[2]
    assert "1+4k" in client.predict("animate", h(str(uploads / "first.png")), None, None, 10, 2, 0, 64, 8,
                                    api_name="/mardini")[2]


def test_the_cv_vae_tab_reconstructs_an_uploaded_video_side_by_side(studio, uploads):
    from reelkit.data.video_io import read_video

    _, client = studio
    out, note, error = client.predict(gradio_client.handle_file(str(uploads / "clip.mp4")), "cvvae_f4", 64,
                                      api_name="/reconstruct")
    assert error == "" and "PSNR" in note
    assert read_video(out).shape[-1] == 128  # input | reconstruction


def test_each_browser_session_writes_into_its_own_folder(studio):
    app, client = studio
    root = app.reelkit_root
    other = gradio_client.Client(client.src, verbose=False)
    before = set(root.iterdir())
    generate(other, "a cyan diamond falling")
    generate(other, "a cyan diamond rising")
    new = set(root.iterdir()) - before
    assert len(new) == 1 and len(list(next(iter(new)).glob("*.mp4"))) == 2  # one folder for that session


def test_an_oversized_upload_is_refused_and_the_app_keeps_serving(studio, tmp_path):
    _, client = studio
    big = tmp_path / "huge.json"
    big.write_bytes(b"{" + b" " * (33 * 1024 * 1024) + b"}")  # over the 32 MB upload limit
    with pytest.raises(Exception, match="(?i)size|large|413|exceed"):
        generate(client, "a red circle", codebook=gradio_client.handle_file(str(big)))
    assert generate(client, "a blue square moving up")[3] == ""


def test_past_the_bounded_queue_the_page_says_it_is_busy(another_port):
    """One generation runs at a time; with max_queue=1 a third request at once is turned away, not queued."""
    from reelkit.studio import launch

    app, url = launch("127.0.0.1", another_port, block=False, max_queue=1)
    try:
        client = gradio_client.Client(url, verbose=False)
        jobs = [client.submit("a red circle moving right", "", "teacher", 30, 5.0, seed, 17, 64, "off", None, False,
                              0, False, True, None, api_name="/generate") for seed in range(4)]
        outcomes = []
        for job in jobs:
            try:
                outcomes.append(job.result(timeout=300)[3])
            except Exception as error:  # gradio_client raises the page's queue-full message
                outcomes.append(f"busy: {error}")
        busy = [o for o in outcomes if o.startswith("busy")]
        assert busy and all("queue" in o.lower() and "full" in o.lower() for o in busy), outcomes
        assert "" in outcomes and all(o == "" or o in busy for o in outcomes), outcomes  # the accepted ones complete
    finally:
        app.close()
