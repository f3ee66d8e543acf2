"""The LLM client: one async client for any OpenAI-compatible chat-completions endpoint.

Built once by the command that needs it (from `LLMConfig`) and passed to the explainer and the
simulator, which never build it themselves, so tests and other backends can swap it.
"""
