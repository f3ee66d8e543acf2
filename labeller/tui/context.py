"""Typed access from any widget to the app's services (attributes down, messages up)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual.dom import DOMNode

from labeller.tui.backend import Backend

if TYPE_CHECKING:
    from labeller.tui.app import AnnotateApp


def annotate_app(node: DOMNode) -> AnnotateApp:
    return cast("AnnotateApp", node.app)


def backend_of(node: DOMNode) -> Backend:
    return annotate_app(node).backend
