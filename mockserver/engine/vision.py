"""What the mock charges for an image it cannot see; the tile rule itself is `proxy.wire.vision`.

The shared tokenizer (`proxy.wire.tokens.count_chat_prompt`) counts an image part by OpenAI's tile
rule, sized from its data URL's header. The mock never fetches a remote URL (nor reads a `file_id`), so
it counts such an image as a 1024×1024 one: `count_chat_prompt(..., unknown_image=UNKNOWN_SIZE)`. (The
gateway counts it at the worst case of its detail level instead, so its reservation covers any size.)
"""

from __future__ import annotations

UNKNOWN_SIZE = (1024, 1024)
