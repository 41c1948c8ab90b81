"""The Responses API and its store."""
