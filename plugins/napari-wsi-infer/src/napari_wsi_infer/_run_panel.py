"""The run panel: open slides and overlays, run a model on the whole slide (progress, Cancel)
or on the field of view (latency)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import napari
from napari.layers import Image, Layer
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
)
from wsi_infer.backends import BACKENDS
from wsi_infer.errors import Cancelled, WsiInferError
from wsi_infer.models import builtin_models, resolve_model
from wsi_infer.pipeline import RunOptions, RunSummary
from wsi_infer.region import RegionPrediction
from wsi_infer.resources import Resources

from ._fov import visible_region
from ._layers import META, layers_of, overlay_layer_data, region_layer_data
from ._overlay import open_overlay
from ._qt_utils import fill_combo, report_errors, spin
from ._run import SlideRun, default_output, devices_for, predict_fov, start_slide_run

PLUGIN = "napari-wsi-infer"
SLIDE_FILTER = "Slides (*.svs *.tif *.tiff *.ndpi *.vms *.vmu *.scn *.mrxs *.svslide *.bif *.dcm)"
#: Least seconds between two refreshes of an overlay that a running job is writing.
REFRESH_INTERVAL_S = 1.0


class RunPanel(QGroupBox):
    """Choose a slide, model, backend, device and batch size; run on the whole slide or on the
    field of view.  Emits :attr:`result` with the first class layer of each finished run."""

    result = Signal(object)
    #: (done, total) tiles, emitted from the run's threads; Qt queues it to the GUI thread.
    progress = Signal(int, int)
    #: An overlay on disk changed (its source id): cached probabilities are stale.
    overlay_changed = Signal(str)

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__("Run a model")
        self.viewer = viewer
        self.run: SlideRun | None = None
        self.last_summary: RunSummary | None = None
        self.last_error: BaseException | None = None
        self.last_fov: RegionPrediction | None = None
        self._fov_worker: Any = None
        self._fov_clicked = 0.0
        self._generation = 0
        self._last_refresh = 0.0
        #: Slides, models and tissue masks of this widget's runs (closed with the widget).
        self.resources = Resources()
        self.destroyed.connect(self.resources.close)
        self.progress.connect(self._on_progress)
        self._build()

    def _build(self) -> None:
        form = QFormLayout(self)
        open_slide = QPushButton("Open slide…")
        open_slide.clicked.connect(self._ask_slide)
        open_overlay = QPushButton("Open overlay…")
        open_overlay.clicked.connect(self._ask_overlay)
        row = QHBoxLayout()
        row.addWidget(open_slide)
        row.addWidget(open_overlay)
        form.addRow(row)
        self.slide_combo = QComboBox()
        form.addRow("Slide", self.slide_combo)

        self.model_combo = QComboBox()
        self.model_combo.setEditable(True)
        self.model_combo.addItems(list(builtin_models()))
        self.model_combo.setToolTip("A built-in model name, or the path of a model card (.json)")
        browse = QPushButton("Card…")
        browse.clicked.connect(self._browse_card)
        row = QHBoxLayout()
        row.addWidget(self.model_combo, 1)
        row.addWidget(browse)
        form.addRow("Model", row)

        self.backend_combo = QComboBox()
        self.backend_combo.addItems(list(BACKENDS))
        self.device_combo = QComboBox()
        self.backend_combo.currentTextChanged.connect(self._fill_devices)
        self._fill_devices(self.backend_combo.currentText())
        form.addRow("Backend", self.backend_combo)
        form.addRow("Device", self.device_combo)

        self.batch_spin = spin(0, 512, 0)
        self.batch_spin.setSpecialValueText("device default")
        self.batch_spin.setToolTip("Tiles per model call (0: the device default: 16 on GPUs, 1-2 on CPUs)")
        form.addRow("Batch size", self.batch_spin)
        self.tile_spin = spin(0, 8192, 0)
        self.tile_spin.setSpecialValueText("model default")
        self.tile_spin.setToolTip("Output pixels per tile (0: the model card's tile size)")
        form.addRow("Tile size", self.tile_spin)
        self.chunk_spin = spin(64, 16384, RunOptions.chunk_size)
        self.chunk_spin.setToolTip("Output pixels per processing chunk (the unit of progress)")
        form.addRow("Chunk size", self.chunk_spin)
        self.output_edit = QLineEdit()
        self.output_edit.setPlaceholderText("<slide folder>/<slide>.<model>.zarr")
        form.addRow("Output", self.output_edit)

        self.run_button = QPushButton("Run on whole slide")
        self.run_button.clicked.connect(self.run_whole_slide)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        row = QHBoxLayout()
        row.addWidget(self.run_button, 1)
        row.addWidget(self.cancel_button)
        form.addRow(row)
        self.fov_button = QPushButton("Run on field of view")
        self.fov_button.clicked.connect(self.run_field_of_view)
        form.addRow(self.fov_button)
        self.progress_bar = QProgressBar()
        form.addRow(self.progress_bar)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        form.addRow(self.status_label)

    # ----------------------------------------------------------------- form
    @property
    def busy(self) -> bool:
        """Whether a whole-slide or field-of-view run is in progress."""
        return self.run is not None or self._fov_worker is not None

    def run_options(self) -> RunOptions:
        """The options chosen in the form."""
        return RunOptions(
            model=self.model_combo.currentText().strip(),
            backend=self.backend_combo.currentText(),  # type: ignore[arg-type]
            device=self.device_combo.currentText() or "cpu",
            batch_size=self.batch_spin.value() or None,
            chunk_size=self.chunk_spin.value(),
            tile_size=self.tile_spin.value() or None,
        )

    def slide_layer(self) -> Image:
        """The slide layer chosen in the form (``ValueError`` if there is none)."""
        name = self.slide_combo.currentText()
        for layer in layers_of(self.viewer.layers, "slide"):
            if layer.name == name:
                return layer
        raise ValueError("open a slide first (Open slide…, or drop it on the viewer)")

    def output_path(self) -> Path:
        """The output chosen, or ``<slide folder>/<slide>.<model>.zarr``."""
        text = self.output_edit.text().strip()
        slide = self.slide_layer().metadata[META]["path"]
        return Path(text) if text else default_output(slide, self.run_options().model)

    def refresh_slides(self) -> None:
        """List the viewer's slide layers."""
        fill_combo(self.slide_combo, [lyr.name for lyr in layers_of(self.viewer.layers, "slide")])

    def open_path(self, path: str | Path) -> list[Layer]:
        """Open a slide or an overlay with this plugin's readers (napari's own readers also
        claim ``.svs``, ``.tif`` and ``.zarr``, but read them whole and unscaled)."""
        layers = self.viewer.open(str(path), plugin=PLUGIN)
        self.refresh_slides()
        return layers

    def _fill_devices(self, backend: str) -> None:
        self.device_combo.clear()
        self.device_combo.addItems(list(devices_for(backend)))

    def _ask_slide(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open slide", "", SLIDE_FILTER)
        if path:
            report_errors(self.open_path, path)

    def _ask_overlay(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open overlay (.zarr folder)")
        if path:
            report_errors(self.open_path, path)

    def _browse_card(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Model card", "", "Model cards (*.json)")
        if path:
            self.model_combo.setCurrentText(path)

    def _set_running(self, running: bool, *, cancellable: bool = False) -> None:
        self.run_button.setEnabled(not running)
        self.fov_button.setEnabled(not running)
        self.cancel_button.setEnabled(running and cancellable)

    # ----------------------------------------------------------------- whole slide
    def run_whole_slide(self) -> None:
        """Start ``run_slide`` in a worker thread; the overlay appears and fills in as chunks
        finish."""
        if self.busy:
            return
        try:
            slide = self.slide_layer().metadata[META]["path"]
            options = self.run_options()
            output = self.output_path()
        except (ValueError, WsiInferError) as exc:
            show_warning(str(exc))
            return
        self.last_summary, self.last_error = None, None
        self.progress_bar.setRange(0, 0)
        self.status_label.setText(f"Running {options.model} on {Path(slide).name} → {output.name}…")
        self.run = start_slide_run(slide, output, options, self.progress.emit, start=False,
                                   resources=self.resources)
        self.run.worker.returned.connect(self._on_run_returned)
        self.run.worker.errored.connect(self._on_run_errored)
        self.run.worker.finished.connect(self._on_run_finished)
        self._set_running(True, cancellable=True)
        self.run.worker.start()

    def cancel(self) -> None:
        """Stop the whole-slide run between chunks (the output stays incomplete)."""
        if self.run is not None:
            self.run.cancel()
            self.status_label.setText("Cancelling: waiting for the chunks in flight…")

    def _on_progress(self, done: int, total: int) -> None:
        self.progress_bar.setRange(0, max(total, 1))
        self.progress_bar.setValue(done)
        if self.run is None:
            return
        self.status_label.setText(f"{done} of {total} tiles…")
        now = time.monotonic()
        if now - self._last_refresh >= REFRESH_INTERVAL_S or not self._overlay_layers(self.run.output):
            self._last_refresh = now
            self.show_overlay(self.run.output, allow_incomplete=True)

    def _on_run_returned(self, summary: RunSummary) -> None:
        self.last_summary = summary
        layers = self.show_overlay(Path(summary.output))
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(1)
        name = Path(summary.output).name
        if summary.status == "skipped":
            self.status_label.setText(f"{name} was already complete: opened it.")
        else:
            self.status_label.setText(
                f"Done: {summary.tiles_run} tiles in {summary.seconds:.1f} s "
                f"({summary.tiles_skipped} without tissue skipped) → {name}")
        if layers:
            self.result.emit(layers[0])

    def _on_run_errored(self, exc: BaseException) -> None:
        self.last_error = exc
        if isinstance(exc, Cancelled):
            self.status_label.setText("Cancelled: the output is incomplete; run again to resume it.")
            if self.run is not None and self._overlay_layers(self.run.output):
                self.show_overlay(self.run.output, allow_incomplete=True)
        else:
            self.status_label.setText(f"Failed: {exc}")
            show_error(f"wsi-infer: {exc}")

    def _on_run_finished(self) -> None:
        self.run = None
        self._set_running(False)

    def show_overlay(self, path: Path, *, allow_incomplete: bool = False) -> list[Layer]:
        """Add the overlay at ``path`` to the viewer, or refresh its layers with what is on
        disk now (new dask names, so napari's chunk cache does not serve stale blocks)."""
        if not (path / ".zattrs").is_file():
            return []
        info = open_overlay(path, allow_incomplete=allow_incomplete)
        self._generation += 1
        existing = {lyr.metadata[META]["class"]: lyr for lyr in self._overlay_layers(path)}
        layers = []
        for data, kwargs, layer_type in overlay_layer_data(info, self._generation):
            layer = existing.get(kwargs["metadata"][META]["class"])
            if layer is None:
                layer = self.viewer.add_layer(Layer.create(data, kwargs, layer_type))
            else:
                layer.data = data
            layers.append(layer)
        self.overlay_changed.emit(f"overlay:{info.path}")
        return layers

    def _overlay_layers(self, path: Path) -> list[Layer]:
        return [lyr for lyr in layers_of(self.viewer.layers, "overlay")
                if lyr.metadata[META]["path"] == str(path)]

    # ----------------------------------------------------------------- field of view
    def run_field_of_view(self) -> None:
        """Predict the region the canvas shows (batch size 1) and add it as a layer."""
        if self.busy:
            return
        try:
            layer = self.slide_layer()
            rect = visible_region(self.viewer, layer)
            options = self.run_options()
            model_name = resolve_model(options.model).name
        except (ValueError, WsiInferError) as exc:
            show_warning(str(exc))
            return
        slide = layer.metadata[META]["path"]
        self.last_error = None
        self.status_label.setText(f"Field of view x={rect.x0} y={rect.y0} {rect.width}×{rect.height} px…")
        self._fov_clicked = time.perf_counter()
        worker = thread_worker(predict_fov, start_thread=False, ignore_errors=True)(
            slide, rect, options, resources=self.resources)
        worker.returned.connect(lambda prediction: self._on_fov(prediction, slide, model_name))
        worker.errored.connect(self._on_fov_errored)
        worker.finished.connect(self._on_fov_finished)
        self._fov_worker = worker
        self._set_running(True)
        worker.start()

    def _on_fov(self, prediction: RegionPrediction, slide: str, model: str) -> None:
        previous = f"region:{slide}:"  # the last field of view of this slide, and its masks
        for layer in [lyr for lyr in self.viewer.layers
                      if str(lyr.metadata.get(META, {}).get("source", "")).startswith(previous)]:
            self.viewer.layers.remove(layer)
        layers = [self.viewer.add_layer(Layer.create(data, kwargs, layer_type))
                  for data, kwargs, layer_type in region_layer_data(prediction, slide, model)]
        self.last_fov = prediction
        h, w = prediction.probabilities.shape[1:]
        shown = time.perf_counter() - self._fov_clicked
        self.status_label.setText(
            f"Field of view: {w}×{h} output px, {prediction.tiles_run} tiles in "
            f"{prediction.seconds:.2f} s ({shown:.2f} s to screen)")
        self.result.emit(layers[0])

    def _on_fov_errored(self, exc: BaseException) -> None:
        self.last_error = exc
        self.status_label.setText(f"Field of view failed: {exc}")
        show_error(f"wsi-infer: {exc}")

    def _on_fov_finished(self) -> None:
        self._fov_worker = None
        self._set_running(False)
