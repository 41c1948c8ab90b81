"""The Responses API, its store, background runs and the Conversations API."""
