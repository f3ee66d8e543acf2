"""Explain and score: labels proposed from train windows, scored by simulation on held-out ones."""
