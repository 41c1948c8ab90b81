"""The emulated OpenAI API, one subpackage per family: chat (chat and legacy completions, stored chat
completions), responses, embeddings (and moderations), files (and batches); models at the top."""
