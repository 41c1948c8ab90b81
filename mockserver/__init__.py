"""The deterministic mock of the OpenAI API.

Layout: `app` (the aiohttp application and its middlewares), `cli` and `__main__` (`oaigate mock`),
`settings` (the `[mock]` section), `errors` (OpenAI's error envelope); `api/` the emulated endpoints, one
subpackage per family (chat, responses, embeddings, files, media) plus `api/models.py`; `engine/` what
they share (request state, model catalogue, generation, tokens-dependent behaviours, virtual clock,
stores, faults, rules, replay, validation, dispatch and the `/_mock` control API). `mockserver` imports
only `proxy.wire` of the gateway.
"""
