"""The dock widget: a run panel above a review panel.

The panels' buttons call plain functions (``_run``, ``_probmap``, ``_export``); the panels only
wire them to Qt and to the viewer's layers.
"""

from __future__ import annotations

from typing import Any

import napari
from qtpy.QtWidgets import QVBoxLayout, QWidget

from ._review_panel import ReviewPanel
from ._run_panel import RunPanel


class WsiInferWidget(QWidget):
    """Run wsi-infer models on the slides shown in napari and review their overlays."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.run_panel = RunPanel(napari_viewer)
        self.review_panel = ReviewPanel(napari_viewer)
        layout = QVBoxLayout(self)
        layout.addWidget(self.run_panel)
        layout.addWidget(self.review_panel)
        layout.addStretch(1)

        self.run_panel.result.connect(self.review_panel.review)
        self.run_panel.overlay_changed.connect(self.review_panel.forget)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self._refresh_layer_lists)
        self._refresh_layer_lists()

    def _refresh_layer_lists(self, *_: Any) -> None:
        self.run_panel.refresh_slides()
        self.review_panel.refresh_sources()
