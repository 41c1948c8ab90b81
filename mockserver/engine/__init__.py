"""The mock's engine: what every endpoint shares. Request state and the model catalogue, deterministic
generation (text, JSON from a schema, tool calls), the virtual clock, stores, faults and pacing, scripted
rules, fixture replay, request validation, in-process dispatch (batch lines) and the `/_mock` control API."""
