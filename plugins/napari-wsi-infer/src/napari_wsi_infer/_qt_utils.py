"""Small Qt helpers shared by the panels."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from napari.utils.notifications import show_error
from qtpy.QtWidgets import QComboBox, QSpinBox


def spin(low: int, high: int, value: int) -> QSpinBox:
    """An integer spin box."""
    box = QSpinBox()
    box.setRange(low, high)
    box.setValue(value)
    return box


def fill_combo(combo: QComboBox, items: list[str]) -> None:
    """Replace a combo box's items, keeping the current one if it is still there, silently."""
    current = combo.currentText()
    combo.blockSignals(True)
    combo.clear()
    combo.addItems(items)
    if current in items:
        combo.setCurrentText(current)
    combo.blockSignals(False)


def report_errors(action: Callable[..., Any], *args: Any) -> None:
    """Run a button's action; show any error to the user as a napari notification."""
    try:
        action(*args)
    except Exception as exc:  # noqa: BLE001 - shown to the user in full, not hidden
        cause = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
        show_error(f"{exc}{cause}")
