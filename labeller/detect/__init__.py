"""Feature detectors: code that gives every token of a window a value, like a label that needs
no LLM (`detector`), the built-in library (`syntax`, `python_code`, `general_code`,
`text_features`), user detectors (`--regex`, the `labeller.detectors` entry point group) and
their registry (`registry.resolve`), and scoring them against neurons (`service`)."""
