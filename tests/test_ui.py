"""``tunelab ui`` in a real headless Chromium (Debian's package, driven by playwright; no browser is downloaded):
start a run from a recipe, watch it progress, stop it (a checkpoint is written), resume it, see it finish and open
its report; the form shows pydantic's errors at their field and keeps the command preview up to date; the page
fetches nothing from outside; the queue runs recipes one after another and survives a restart; the file route
refuses to leave the output folder.

Runs are real ``tunelab train`` processes on a 2-block BERT. The run that is stopped and resumed is bounded by
``train.max_seconds`` rather than a step count, so it lasts a few seconds of training on a fast or a loaded machine.
Screenshots go to $TUNELAB_UI_SCREENSHOTS (default tests/artifacts/ui).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.conftest import make_recipe
from tunelab.serve.server import ServerThread
from tunelab.train.checkpoint import complete_checkpoints
from tunelab.ui.app import STATIC, create_app
from tunelab.ui.workbench import Workbench

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(os.environ.get("TUNELAB_UI_SCREENSHOTS", ROOT / "tests" / "artifacts" / "ui"))
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
LONG = 150_000  # ms: a process start (torch, transformers) plus a few seconds of training, on a loaded 2-core machine


@pytest.fixture
def ui(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The app on a free port of 127.0.0.1 over an empty output folder; processes it started are killed after."""
    out = tmp_path / "runs"
    out.mkdir()
    bench = Workbench(out, ROOT / "recipes")
    try:
        with ServerThread(create_app(bench)) as running:
            yield running.url, out
    finally:
        for kind in ("train", "compare"):
            for key in bench.jobs.keys(kind):
                if bench.jobs.alive(key):
                    with contextlib.suppress(ProcessLookupError):  # it may end on its own meanwhile
                        os.killpg(bench.jobs.get(key)["pid"], signal.SIGKILL)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.fail("these tests drive Debian's Chromium: apt-get install -y chromium chromium-driver (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    yield tab
    context.close()


def shot(page: object, name: str, full_page: bool = True) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / name), full_page=full_page)


def choose_recipe(page: object, recipe: Path) -> None:
    page.select_option("#base-select", "__path")
    page.fill("#base-path", str(recipe))
    page.locator("#base-path").dispatch_event("change")


def test_start_watch_stop_resume_finish_and_open_the_report(ui: tuple[str, Path], page: object, tiny_bert_dir: Path,
                                                             toy_csv: Path, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    url, out = ui
    recipe = make_recipe(tmp_path, tiny_bert_dir, toy_csv, train={"max_steps": 5000, "max_seconds": 6, "eval_every": 40,
                                                                  "log_every": 1, "warmup_ratio": 0.0})
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(f"{url}/#/new")
    choose_recipe(page, recipe)
    page.fill("#run-name-input", "tiny-ui")
    expect(page.locator("#preview")).to_contain_text(f"tunelab train {recipe} --set output.dir={out} --name tiny-ui")
    page.click("#start")
    expect(page).to_have_url(re.compile(r"#/run/tiny-ui$"))
    status = page.locator("h1 .badge")

    page.wait_for_function("Number(document.querySelector('#progress-text').dataset.step) > 0", timeout=LONG)
    expect(status).to_have_text("running")
    restarted = Workbench(out)  # another app over the same folder (as after a restart) finds the run by its record
    assert restarted.run("tiny-ui")["status"] == "running" and restarted.run("tiny-ui")["can_stop"]
    shot(page, "run-progress.png")
    page.click("#stop")
    expect(status).to_have_text("stopped", timeout=LONG)
    folder = out / "tiny-ui"
    saved = complete_checkpoints(folder / "checkpoints")
    assert saved and not (folder / "summary.json").exists()
    stopped_at = int(saved[-1].name.split("-")[1])
    expect(page.locator("#checkpoints")).to_contain_text(saved[-1].name)
    expect(page.locator("#recipe")).to_contain_text("max_seconds: 6")  # the saved recipe.yaml, resolved
    expect(page.locator("#run-error")).to_contain_text("interrupted at step")

    page.click("#resume")
    expect(status).to_have_text("finished", timeout=LONG)
    expect(page.locator("#headline")).to_contain_text("validation accuracy")
    expect(page.locator("#charts svg polyline.series").first).to_be_visible()
    shot(page, "run-finished.png")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["steps"] > stopped_at and summary["out_of_time"]
    log = (folder / "train.log").read_text()  # the log moved into the run folder; both processes wrote to it
    assert "--name tiny-ui" in log and f"train {folder} --resume" in log

    page.click("#again")  # a new run from this run's saved config
    expect(page.locator("#preview")).to_contain_text(f"tunelab train {folder / 'recipe.yaml'} --set output.dir={out}")
    expect(page.locator('.field[data-path="train.max_seconds"] input')).to_have_value("6.0")

    page.goto(f"{url}/#/runs")
    row = page.locator('tr[data-run="tiny-ui"]')
    expect(row).to_contain_text("finished")
    expect(row).to_contain_text(str(tiny_bert_dir))
    shot(page, "runs.png")
    row.locator("a").click()
    page.click("#report")
    expect(page).to_have_url(f"{url}/files/tiny-ui/report.html")
    expect(page.locator("h1")).to_contain_text("tiny-ui")
    shot(page, "report.png")
    outside = [u for u in requested if not u.startswith(url) and not u.startswith("data:")]
    assert not outside, f"the page fetched from outside: {outside}"


def test_a_comparison_fills_its_table(ui: tuple[str, Path], page: object, tiny_bert_dir: Path, toy_csv: Path,
                                      tmp_path: Path) -> None:
    from playwright.sync_api import expect

    url, out = ui
    recipe = make_recipe(tmp_path, tiny_bert_dir, toy_csv)
    page.goto(f"{url}/#/compare")
    page.fill("#compare-recipe", str(recipe))
    page.fill("#compare-budget", "lots")
    page.click("#compare-start")
    expect(page.locator('.field[data-path="budget"] .err')).to_contain_text("expected a step count")
    page.fill("#compare-budget", "2")
    page.fill("#compare-name", "cmp-ui")
    page.click("#compare-start")  # 'full' is ticked by default
    expect(page).to_have_url(re.compile(r"#/compare/cmp-ui$"))
    row = page.locator('#compare-table tr[data-variant="full"]')
    expect(row).to_contain_text("waiting")  # the planned row is there before its run folder
    expect(row).to_contain_text("finished", timeout=LONG)
    expect(page.locator("h1 .badge")).to_have_text("finished", timeout=LONG)
    expect(row.locator("td").last).to_have_text("1")  # its rank, once results.json is written
    expect(page.locator("#compare-report")).to_be_visible()
    shot(page, "compare.png")
    results = json.loads((out / "compare" / "cmp-ui" / "results.json").read_text())
    assert [r["status"] for r in results["runs"]] == ["done"]


def test_the_form_shows_errors_at_the_field_and_previews_the_command(ui: tuple[str, Path], page: object,
                                                                   tiny_bert_dir: Path, toy_csv: Path,
                                                                   tmp_path: Path) -> None:
    from playwright.sync_api import expect

    url, out = ui
    recipe = make_recipe(tmp_path, tiny_bert_dir, toy_csv)
    page.goto(f"{url}/#/new")
    choose_recipe(page, recipe)
    preview = page.locator("#preview")
    expect(preview).to_contain_text(f"tunelab train {recipe} --set output.dir={out} --name toy-")
    lr = page.locator('.field[data-path="train.lr"]')
    expect(lr.locator("input")).to_have_value("0.001")  # the base recipe's value
    expect(lr.locator(".help")).to_contain_text("Peak learning rate")
    lr.locator("input").fill("fast")
    expect(lr.locator(".err")).to_contain_text("valid number")
    expect(preview).to_contain_text("--set train.lr=fast")
    page.locator('fieldset[data-section="train"]').scroll_into_view_if_needed()
    shot(page, "form-error.png", full_page=False)  # the page as seen: the field's error and the command below
    page.click("#start")  # refused: nothing starts, the error stays
    expect(lr.locator(".err")).to_contain_text("valid number")
    assert not (out / ".tunelab-ui" / "jobs").exists()

    lr.locator("input").fill("3e-3")
    expect(lr.locator(".err")).to_have_text("")
    expect(preview).to_contain_text("--set train.lr=3e-3")
    advanced = page.locator('.field[data-path="optim.weight_decay"]')
    expect(advanced).to_be_hidden()  # folded under "Advanced" in its section
    page.locator('fieldset[data-section="optim"] summary').click()
    expect(advanced).to_be_visible()

    page.select_option('.field[data-path="strategy.method"] select', "lora")
    rank = page.locator('.field[data-path="strategy.r"]')
    expect(rank).to_be_visible()
    expect(page.locator('.field[data-path="strategy.cache_features"]')).to_be_hidden()  # another method's key
    rank.locator("input").fill("0")
    expect(rank.locator(".err")).to_contain_text("greater than 0")
    expect(preview).to_contain_text("""--set 'strategy={"method": "lora", "r": 0}'""")
    rank.locator("input").fill("4")
    expect(rank.locator(".err")).to_have_text("")
    page.fill("#run-name-input", "../escape")
    expect(page.locator('.field[data-path="_name"] .err')).to_contain_text("not a plain folder name")


def test_served_pages_reference_no_external_url(ui: tuple[str, Path]) -> None:
    url, _ = ui
    pages = ["/", *[f"/static/{p.name}" for p in sorted(STATIC.iterdir())]]
    assert len(pages) >= 6
    found = []
    with httpx2.Client(base_url=url) as http:
        for path in pages:
            response = http.get(path)
            assert response.status_code == 200, path
            for link in re.findall(r"""(?:https?:)?//[^\s"'`<>)]+""", response.text):
                host = re.sub(r"^(?:https?:)?//", "", link).split("/")[0].split(":")[0]
                # the SVG namespace is a name, never fetched; a '//' starting a JS comment is no link
                if host not in ("127.0.0.1", "localhost", "") and link != "http://www.w3.org/2000/svg" and "." in host:
                    found.append((path, link))
    assert not found, f"external references in served files: {found}"


def test_the_file_route_serves_only_files_inside_the_output_folder(ui: tuple[str, Path], tmp_path: Path) -> None:
    url, out = ui
    (out / "run-a").mkdir()
    (out / "run-a" / "report.html").write_text("<h1>mine</h1>")
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    (out / "run-a" / "link.txt").symlink_to(secret)
    with httpx2.Client(base_url=url) as http:
        assert http.get("/files/run-a/report.html").text == "<h1>mine</h1>"
        for path in ["/files/../secret.txt", "/files/%2e%2e/secret.txt", "/files/run-a/..%2f..%2fsecret.txt",
                     f"/files/{secret}", f"/files/%2F{str(secret).lstrip('/')}", "/files/run-a/link.txt", "/files/run-a"]:
            response = http.get(path)
            assert response.status_code == 404 and "not yours" not in response.text, path
        assert http.get("/api/runs", headers={"host": "attacker.example"}).status_code == 403  # DNS rebinding
        assert http.post("/api/runs/x/stop", content="a=1",
                         headers={"content-type": "application/x-www-form-urlencoded"}).status_code == 415
        assert http.post("/api/runs/x/stop", json={}, headers={"origin": "http://attacker.example"}).status_code == 403


def test_the_queue_runs_recipes_one_after_another_and_survives_a_restart(tmp_path: Path, tiny_bert_dir: Path,
                                                                         toy_csv: Path) -> None:
    out = tmp_path / "runs"
    recipe = make_recipe(tmp_path, tiny_bert_dir, toy_csv, train={"max_steps": 2, "eval_every": 2})
    first = Workbench(out)  # no scheduler: the app is "closed" with two runs queued
    for name in ("q1", "q2"):
        assert first.start(str(recipe), {}, name=name, queue=True)["ok"]
    assert not first.start(str(recipe), {}, name="q1", queue=True)["ok"]  # a queued name is taken

    again = Workbench(out)  # the app started again: the queue was kept on disk
    assert [item["name"] for item in again.queue.items()] == ["q1", "q2"]
    again.start_scheduler(every=0.2)
    try:
        deadline = time.monotonic() + 240
        while [(again.run(n) or {}).get("status") for n in ("q1", "q2")] != ["finished", "finished"]:
            assert time.monotonic() < deadline, [again.run(n) for n in ("q1", "q2")]
            time.sleep(0.5)
    finally:
        again.stop_scheduler()
    assert again.queue.items() == []
    q2_started = again.jobs.get("train-q2")["started"]
    assert q2_started >= (out / "q1" / "summary.json").stat().st_mtime  # q2 waited for q1 to finish
    assert all((out / n / "summary.json").is_file() and (out / n / "train.log").is_file() for n in ("q1", "q2"))
