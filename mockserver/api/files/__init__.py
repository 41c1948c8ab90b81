"""Files and the Batch API."""
