"""What the tests and the benchmarks both use: a local `serve run` on loopback, and a stub OpenAI endpoint."""
