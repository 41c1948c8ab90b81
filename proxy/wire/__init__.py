"""Wire-format helpers shared by the gateway and the mock server.

This package is the one home for what both sides need (JSON codec, SSE framing, the OpenAI error
envelope, token counting). It imports nothing else from `proxy`, so `mockserver` may use it.
"""

SIMULATED_HEADER = "x-oaigate-mock"
"""Set on every answer of oaigate's mock server: the gateway marks such rows `simulated` in the ledger,
so mock traffic is never reported as real spend."""
