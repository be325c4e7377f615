"""The OpenAI surface: what a request must be to be routed, the errors a client sees, and the API keys."""
