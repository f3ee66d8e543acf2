"""The activation scan: corpus windows through the model into per-neuron evidence."""
