"""Running targets through vLLM for tests, benchmarks and the demo (not part of the serving
path): ``offline`` (one engine per process, JSON in and out), ``server`` (a loopback
``vllm serve`` and its OpenAI client side), ``demo`` (``sparrow demo``)."""
