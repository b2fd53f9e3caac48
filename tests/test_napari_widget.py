"""The napari plugin in a real viewer: napari's ``make_napari_viewer`` fixture, pytest-qt, a virtual X display.

Qt's ``offscreen`` platform has no OpenGL in the PyQt6 wheels, and napari's canvas (vispy) needs
it: adding an image layer fails there ("QOpenGLWidget is not supported on this platform").  So the
viewer runs on Qt's ``xcb`` platform against Xvfb (started here through PyVirtualDisplay when no
display is set); Mesa draws the canvas in software.  Debian: ``apt-get install xvfb libxcb-icccm4
libxcb-keysyms1`` (.ci/run does it).  The run's screenshot is saved to ``test-output/`` (or
``$CROSSCT_TEST_OUTPUT``) for a person to look at.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import REPO, CountingPredictor

IN_CI = bool(os.environ.get("CI"))


def _require(module: str, why: str):
    """Import ``module``; in CI a missing one fails (the napari test must run there), elsewhere it skips."""
    if IN_CI:
        return __import__(module)
    return pytest.importorskip(module, reason=why)


_require("napari", "napari is in requirements-dev.txt (crossct[napari])")
_require("pytestqt", "pytest-qt is in requirements-dev.txt")

from napari.layers import Labels  # noqa: E402
from napari.utils.notifications import NotificationSeverity, notification_manager  # noqa: E402

from crossct import cli  # noqa: E402
from crossct.demo import _ihc_path, demo_image  # noqa: E402
from crossct.napari.settings import default_values  # noqa: E402
from crossct.napari.widget import SegmentCellsWidget, labels_layer_name  # noqa: E402
from crossct.pipeline import segment  # noqa: E402
from crossct.predictors import load_predictor  # noqa: E402

RUN_TIMEOUT_MS = 180_000
SCREENSHOT_DIR = Path(os.environ.get("CROSSCT_TEST_OUTPUT", REPO / "test-output"))


@pytest.fixture(scope="session", autouse=True)
def x_display():
    """A display the Qt xcb platform can draw on, before pytest-qt creates the QApplication."""
    platform = os.environ.get("QT_QPA_PLATFORM")
    os.environ["QT_QPA_PLATFORM"] = "xcb"  # even where offscreen was asked for: see the module docstring
    display = None
    try:
        if not os.environ.get("DISPLAY"):
            if shutil.which("Xvfb") is None:
                message = "no X display and no Xvfb: apt-get install xvfb libxcb-icccm4 libxcb-keysyms1"
                pytest.fail(message) if IN_CI else pytest.skip(message)
            pyvirtualdisplay = _require("pyvirtualdisplay", "PyVirtualDisplay is in requirements-dev.txt")
            display = pyvirtualdisplay.Display(visible=False, size=(1600, 1000), color_depth=24)
            display.start()  # sets DISPLAY for this process, restored by stop()
        yield os.environ["DISPLAY"]
    finally:
        if display is not None:
            display.stop()
        if platform is None:
            os.environ.pop("QT_QPA_PLATFORM", None)
        else:
            os.environ["QT_QPA_PLATFORM"] = platform


@pytest.fixture(scope="session")
def crossct_plugin():
    """The plugin's manifest registered with napari (from the entry point when crossct is installed
    with its metadata, else from the file)."""
    import npe2

    manager = npe2.PluginManager.instance()
    if "crossct" not in manager:
        manager.register(npe2.PluginManifest.from_file(REPO / "crossct" / "napari" / "napari.yaml"))
    return manager.get_manifest("crossct")


@pytest.fixture
def viewer_and_widget(make_napari_viewer, crossct_plugin):
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1500, 850)
    _, widget = viewer.window.add_plugin_dock_widget("crossct", "Segment cells")
    assert isinstance(widget, SegmentCellsWidget)
    return viewer, widget


def run_and_wait(widget, qtbot):
    worker = widget.run()
    assert worker is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=RUN_TIMEOUT_MS)


def errors_since(count: int) -> list:
    return [n for n in notification_manager.records[count:] if n.severity == NotificationSeverity.ERROR]


def test_widget_labels_equal_the_cli_labels(viewer_and_widget, qtbot, tmp_path):
    viewer, widget = viewer_and_widget
    (layer,) = viewer.open_sample("crossct", "ihc")
    assert layer.rgb and layer.data.shape == (512, 512, 3)
    assert widget.values() == default_values(load_predictor(None, device="cpu").spec)  # the weights' defaults

    run_and_wait(widget, qtbot)

    labels_layer = viewer.layers[labels_layer_name("ihc")]
    assert isinstance(labels_layer, Labels)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copyfile(_ihc_path(), inputs / "ihc.png")  # the demo's input file
    assert cli.main(["-i", str(inputs), "-o", str(tmp_path / "out"), "-q"]) == 0
    cli_labels = tifffile.imread(tmp_path / "out" / "ihc_label.tiff")
    assert cli_labels.max() > 100
    np.testing.assert_array_equal(labels_layer.data, cli_labels)
    # The bar ends full, at the tiles the network ran: with the automatic size more than the
    # image's 3 x 3 grid (a half-scale probe and an enlarged pass).
    counter = CountingPredictor(load_predictor(None, device="cpu"))
    segment(layer.data, counter)
    assert widget._progress.value == widget._progress.max == counter.tiles > 9
    assert widget._status.value.startswith(f"ihc: {cli_labels.max()} cells in ")
    assert labels_layer.metadata["crossct"]["settings"] == widget.values()

    viewer.reset_view()
    qtbot.wait(200)
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    shot = viewer.screenshot(str(SCREENSHOT_DIR / "napari-plugin.png"), canvas_only=False)
    assert (SCREENSHOT_DIR / "napari-plugin.png").is_file()
    assert shot.shape[0] > 600 and shot.shape[1] > 1200
    canvas = viewer.screenshot(canvas_only=True)[..., :3].reshape(-1, 3)
    assert len(np.unique(canvas, axis=0)) > 1000  # the image and its labels were drawn, not a blank canvas


def test_rerun_with_other_settings_updates_the_layer(viewer_and_widget, qtbot):
    viewer, widget = viewer_and_widget
    viewer.open_sample("crossct", "synthetic_nuclei")
    run_and_wait(widget, qtbot)
    name = labels_layer_name("synthetic_nuclei")
    first = viewer.layers[name].data.max()
    widget._settings["min_size"].value = 400
    run_and_wait(widget, qtbot)
    assert [layer.name for layer in viewer.layers] == ["synthetic_nuclei", name]  # updated, not added
    assert 0 < viewer.layers[name].data.max() < first


def test_method_choice_shows_its_own_thresholds(viewer_and_widget):
    _, widget = viewer_and_widget
    visible = lambda: {name for name, control in widget._settings.items() if control.visible}  # noqa: E731
    assert {"seed_threshold", "mask_threshold"} <= visible() and "interior_threshold" not in visible()
    widget._settings["method"].value = "threshold"
    assert "interior_threshold" in visible() and "seed_threshold" not in visible()


@pytest.mark.parametrize("case", ["weights", "stack"])
def test_pipeline_errors_are_notifications(viewer_and_widget, qtbot, tmp_path, case):
    viewer, widget = viewer_and_widget
    before = len(notification_manager.records)
    if case == "weights":
        viewer.add_image(demo_image("synthetic_nuclei"), name="cells")
        widget._weights.value = tmp_path  # an empty folder: no model.json
        assert "no model.json at" in errors_since(before)[-1].message
        expected = f"no model weights found at {tmp_path}"
    else:
        viewer.add_image(np.zeros((3, 64, 64), np.uint8), name="cells")
        expected = "image layer 'cells' has shape (3, 64, 64)"
    run_and_wait(widget, qtbot)
    message = errors_since(before)[-1].message
    assert message.startswith("CrossCT could not segment 'cells': ") and expected in message
    assert "Traceback" not in message
    assert labels_layer_name("cells") not in viewer.layers
    assert widget._run_button.enabled and not widget._cancel_button.enabled  # ready for another try


def test_cancel_adds_no_layer(viewer_and_widget, qtbot):
    from crossct.synthetic import synthetic_cells

    viewer, widget = viewer_and_widget
    viewer.add_image(synthetic_cells(1500, 1500, seed=1)[0], name="big")  # 8 x 8 tiles, 4 x 4 at half scale
    worker = widget.run()
    assert worker is not None and widget._cancel_button.enabled and not widget._run_button.enabled
    qtbot.waitUntil(lambda: widget._progress.value > 0, timeout=RUN_TIMEOUT_MS)
    widget._cancel_button.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=RUN_TIMEOUT_MS)
    # Cancelled in the automatic size's half-scale probe, or in the pass at the image's scale.
    assert widget._progress.value < widget._progress.max in (16, 16 + 64)
    assert "cancelled" in widget._status.value
    assert labels_layer_name("big") not in viewer.layers


def test_sample_data(make_napari_viewer, crossct_plugin):
    viewer = make_napari_viewer()
    assert viewer.open_sample("crossct", "synthetic_nuclei")[0].data.shape == (384, 512)
    assert {c.key for c in crossct_plugin.contributions.sample_data} == {"ihc", "synthetic_nuclei"}
