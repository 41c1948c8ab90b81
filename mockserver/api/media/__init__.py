"""Images (generations, edits, variations) and audio (speech, transcriptions, translations)."""
