"""HTTP serving: the OpenAI-compatible API, health endpoints and auth around the Gradio UI."""
