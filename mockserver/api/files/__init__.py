"""Files, uploads, the Batch API and fine-tuning jobs."""
