"""The LLM client: one async client for any OpenAI-compatible chat-completions endpoint.

Opened by `labeller.explain.resolve.Resolver` (from `LLMConfig`) when a run needs it and handed to
the LLM explainer and simulator, which never build it themselves, so tests and other backends can
swap it.
"""
