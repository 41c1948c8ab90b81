"""The emulated OpenAI API, one subpackage per family: `chat` (chat and legacy completions, stored chat
completions), `responses` (the Responses API, background runs, conversations), `embeddings` (and
moderations), `files` (files, uploads, batches, fine-tuning jobs), `media` (images, audio); `models.py`
serves the catalogue."""
