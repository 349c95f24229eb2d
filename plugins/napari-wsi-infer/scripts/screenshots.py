"""Take the screenshots of ``docs/napari.md`` with a real viewer, slide and model.

Run under a display (``xvfb-run -a``) from the repository root::

    xvfb-run -a .venv/bin/python plugins/napari-wsi-infer/scripts/screenshots.py \\
        [--slide ../shared/data/slides/CMU-1-Small-Region.svs] [--model tissue] [--out docs/images]

It opens the slide with the plugin's reader, runs the model on the whole slide from the widget,
runs it on a field of view, thresholds it, and saves PNGs of each step (each under 300 KB).
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import napari
import numpy as np
from PIL import Image
from qtpy.QtWidgets import QApplication

from napari_wsi_infer._fov import camera
from napari_wsi_infer._widget import WsiInferWidget

ROOT = Path(__file__).resolve().parents[3]
DEFAULT_SLIDE = ROOT.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"
MAX_BYTES = 300 * 1024


def save_png(image: np.ndarray, path: Path, max_bytes: int = MAX_BYTES) -> int:
    """Save an RGB(A) screenshot as a PNG under ``max_bytes``: full colour if it fits, else
    quantized to 256 colours, else also scaled down."""
    picture = Image.fromarray(np.asarray(image)[..., :3])
    while True:
        for candidate in (picture, picture.quantize(256, dither=Image.Dither.NONE)):
            buffer = io.BytesIO()
            candidate.save(buffer, format="PNG", optimize=True)
            if buffer.tell() <= max_bytes:
                path.write_bytes(buffer.getvalue())
                return buffer.tell()
        picture = picture.resize((picture.width * 3 // 4, picture.height * 3 // 4),
                                 Image.Resampling.LANCZOS)


def wait(widget: WsiInferWidget, timeout: float = 300.0) -> None:
    """Process Qt events until the widget's run is over."""
    deadline = time.monotonic() + timeout
    while widget.run_panel.busy:
        if time.monotonic() > deadline:
            raise TimeoutError("the run did not finish in time")
        QApplication.processEvents()
        time.sleep(0.02)
    for _ in range(20):  # let napari draw the new layers
        QApplication.processEvents()
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", type=Path, default=DEFAULT_SLIDE)
    parser.add_argument("--model", default="tissue")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="wsi-infer-shots-"))

    viewer = napari.Viewer(title="napari-wsi-infer", show=True)
    viewer.window._qt_window.resize(1400, 860)
    [slide] = viewer.open(str(args.slide), plugin="napari-wsi-infer")
    canvas = getattr(viewer, "canvas", None)  # napari >= 0.9
    (canvas.overlays.scale_bar if canvas is not None else viewer.scale_bar).visible = True
    _, widget = viewer.window.add_plugin_dock_widget("napari-wsi-infer", "Run and review")
    assert isinstance(widget, WsiInferWidget)
    widget.run_panel.model_combo.setCurrentText(args.model)
    widget.run_panel.output_edit.setText(str(work / f"{args.slide.stem}.zarr"))
    viewer.reset_view()
    wait(widget)
    print("slide:", save_png(viewer.screenshot(canvas_only=False), args.out / "napari-slide.png"))

    widget.run_panel.run_whole_slide()
    wait(widget)
    print(widget.run_panel.status_label.text())
    print("run:", save_png(viewer.screenshot(canvas_only=False), args.out / "napari-run.png"))

    height, width = slide.metadata["wsi_infer"]["size"]
    mpp_y, mpp_x = slide.scale
    camera(viewer).center = (height * mpp_y * 0.45, width * mpp_x * 0.55)
    camera(viewer).zoom = camera(viewer).zoom * 2.5
    for layer in viewer.layers:
        if layer.metadata.get("wsi_infer", {}).get("kind") in ("overlay", "mask"):
            layer.visible = False
    widget.run_panel.run_field_of_view()
    wait(widget)
    print(widget.run_panel.status_label.text())
    print("fov:", save_png(viewer.screenshot(canvas_only=False), args.out / "napari-fov.png"))

    for layer in viewer.layers:
        kind = layer.metadata.get("wsi_infer", {}).get("kind")
        layer.visible = kind in ("slide", "overlay")
    overlay = next(lyr for lyr in viewer.layers
                   if lyr.metadata.get("wsi_infer", {}).get("kind") == "overlay")
    viewer.reset_view()
    camera(viewer).zoom = camera(viewer).zoom * 1.6
    widget.review_panel.review(overlay)
    widget.review_panel.threshold_slider.setValue(50)
    widget.review_panel.update_review()  # the mask (outlined), and the areas
    wait(widget)
    print(widget.review_panel.areas_label.text())
    print("review:", save_png(viewer.screenshot(canvas_only=False), args.out / "napari-review.png"))

    thumbnail = work / "thumbnail.png"
    widget.review_panel.export_png(thumbnail)
    print("thumbnail:", save_png(np.asarray(Image.open(thumbnail)), args.out / "napari-export.png"))
    viewer.close()


if __name__ == "__main__":
    main()
