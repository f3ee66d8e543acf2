"""The weights fingerprint recorded at scan time: stable for one model, changed by any weight."""

from __future__ import annotations

import torch


def test_fingerprint_is_stable_and_sees_a_changed_weight(tiny_model) -> None:
    record = tiny_model.record()
    assert record.weights_fingerprint is not None
    assert record.weights_fingerprint.startswith("sha256:")
    assert tiny_model.record().weights_fingerprint == record.weights_fingerprint
    name, parameter = next(iter(tiny_model.bridge.named_parameters()))
    with torch.no_grad():
        saved = parameter.detach().clone()
        parameter.add_(0.5)
        try:
            changed = tiny_model.weights_fingerprint()
        finally:
            parameter.copy_(saved)
    assert changed != record.weights_fingerprint, name
    assert tiny_model.weights_fingerprint() == record.weights_fingerprint
