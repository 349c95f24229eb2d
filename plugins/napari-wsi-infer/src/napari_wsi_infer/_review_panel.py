"""The review panel: threshold a class into a Labels layer, areas in mm², GeoJSON and PNG export."""

from __future__ import annotations

from pathlib import Path

import napari
from napari.layers import Layer
from napari.utils.notifications import show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
)

from . import _export
from ._layers import META, layers_of, mask_layer_data
from ._probmap import ProbabilityMap, class_areas_mm2, from_overlay, from_region
from ._qt_utils import fill_combo, report_errors


class ReviewPanel(QGroupBox):
    """Review the class layer chosen in *Class layer* (a whole-slide overlay or a field of
    view): mask above the threshold, areas of every class, export."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__("Review and export")
        self.viewer = viewer
        self._maps: dict[str, ProbabilityMap] = {}

        form = QFormLayout(self)
        self.source_combo = QComboBox()
        self.source_combo.currentIndexChanged.connect(lambda _: self.update_review())
        form.addRow("Class layer", self.source_combo)
        self.threshold_slider = QSlider(Qt.Orientation.Horizontal)
        self.threshold_slider.setRange(0, 100)
        self.threshold_slider.setValue(50)
        self.threshold_label = QLabel("")
        self.threshold_slider.valueChanged.connect(lambda _: self.update_review())
        row = QHBoxLayout()
        row.addWidget(self.threshold_slider, 1)
        row.addWidget(self.threshold_label)
        form.addRow("Threshold", row)
        self.areas_label = QLabel("")
        self.areas_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        form.addRow("Area above", self.areas_label)
        geojson = QPushButton("Export GeoJSON…")
        geojson.clicked.connect(self._ask_geojson)
        png = QPushButton("Export PNG…")
        png.clicked.connect(self._ask_png)
        row = QHBoxLayout()
        row.addWidget(geojson)
        row.addWidget(png)
        form.addRow(row)

    @property
    def threshold(self) -> float:
        return self.threshold_slider.value() / 100

    def refresh_sources(self) -> None:
        """List the viewer's probability layers (overlay and field-of-view classes)."""
        names = [lyr.name for lyr in layers_of(self.viewer.layers, "overlay", "region")]
        fill_combo(self.source_combo, names)

    def forget(self, source: str) -> None:
        """Drop the cached probabilities of ``source`` (its overlay changed on disk)."""
        self._maps.pop(source, None)

    def source_layer(self) -> Layer | None:
        """The probability layer chosen for review."""
        name = self.source_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None  # noqa: SIM401

    def probability_map(self, layer: Layer) -> ProbabilityMap:
        """All classes of the overlay or field of view that ``layer`` shows (cached)."""
        meta = layer.metadata[META]
        if meta["source"] not in self._maps:
            if meta["kind"] == "region":
                pmap = from_region(meta["prediction"])
            else:
                # a layer of a run in progress (or cancelled) shows what is written so far
                pmap = from_overlay(meta["path"], allow_incomplete=True)
            self._maps[meta["source"]] = pmap
        return self._maps[meta["source"]]

    def review(self, layer: Layer) -> dict[str, float] | None:
        """Choose ``layer`` as the class layer to review and show the areas above the
        threshold (the mask layer appears when the threshold is moved)."""
        self.refresh_sources()
        self.source_combo.blockSignals(True)
        self.source_combo.setCurrentText(layer.name)
        self.source_combo.blockSignals(False)
        return self.update_review(make_mask=False)

    def update_review(self, *, make_mask: bool = True) -> dict[str, float] | None:
        """Threshold the chosen class into a Labels layer (outlined; made if ``make_mask``,
        else only updated if it exists) and show the areas above the threshold; returns the
        areas in mm²."""
        self.threshold_label.setText(f"> {self.threshold:.2f}")
        layer = self.source_layer()
        if layer is None:
            self.areas_label.setText("")
            return None
        meta = layer.metadata[META]
        pmap = self.probability_map(layer)
        name = f"{layer.name} mask"
        if make_mask or name in self.viewer.layers:
            mask = pmap.mask(meta["class_index"], self.threshold)
            data, kwargs, layer_type = mask_layer_data(
                mask, pmap.colors[meta["class_index"]], name, pmap.scale, pmap.translate,
                meta["source"])
            if name in self.viewer.layers:
                labels = self.viewer.layers[name]
                labels.data, labels.scale, labels.translate = data, pmap.scale, pmap.translate
            else:
                labels = self.viewer.add_layer(Layer.create(data, kwargs, layer_type))
                labels.contour = 1  # an outline over the probabilities; 0 fills it
        areas = class_areas_mm2(pmap, self.threshold)
        self.areas_label.setText("\n".join(f"{name}: {mm2:.3f} mm²" for name, mm2 in areas.items()))
        return areas

    def export_geojson(self, path: str | Path) -> int:
        """Write the chosen source's classes above the threshold as QuPath GeoJSON."""
        count = _export.write_geojson(path, self.probability_map(self._require_source()),
                                      self.threshold)
        show_info(f"wrote {count} polygons to {path}")
        return count

    def export_png(self, path: str | Path, slide_path: str | None = None) -> tuple[int, int]:
        """Write a PNG thumbnail of the slide with the chosen source blended on."""
        layer = self._require_source()
        slide = layer.metadata[META].get("slide_path") or slide_path
        if not slide:
            raise ValueError("the overlay does not say which slide it belongs to")
        return _export.write_thumbnail(path, slide, self.probability_map(layer))

    def _require_source(self) -> Layer:
        layer = self.source_layer()
        if layer is None:
            raise ValueError("run a model or open an overlay first")
        return layer

    def _ask_geojson(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export GeoJSON", "", "GeoJSON (*.geojson)")
        if path:
            report_errors(self.export_geojson, path)

    def _ask_png(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export PNG", "", "PNG (*.png)")
        if path:
            report_errors(self.export_png, path)
