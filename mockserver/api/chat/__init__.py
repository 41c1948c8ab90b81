"""Chat completions, legacy completions and stored chat completions."""
