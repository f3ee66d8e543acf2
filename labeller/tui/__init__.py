"""The annotation TUI (`labeller annotate`): browse neurons, probe them live, and label them.

Textual is imported only inside this package, so the catalogue and the CLI stay UI-free.
"""
