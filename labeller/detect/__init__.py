"""Feature detectors: code that gives every token of a window a value, like a label that needs
no LLM (`Detector`), the built-in library (`builtins`), user detectors (`--regex`, the
`labeller.detectors` entry point group) and their registry (`registry.resolve`), and scoring them
against neurons (`service`)."""
