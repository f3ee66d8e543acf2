"""Two models side by side on the same tokens (the seed essay's GELU vs SoLU questions): which
neuron of one matches which of the other, against a shuffled baseline; how their activation
distributions differ; how often each gets a well-scoring label, and whether matched neurons'
labels agree.

`collect` runs the models (torch); `report` turns what it gathered into the report's record,
Markdown, JSON and figures (no torch)."""
