"""The serving path: what runs inside vLLM when a speculative config names ``sparrow``.

- ``vllm_compat``: every touch of vLLM internals, each patch named after the upstream symbol it
  replaces and checked at start-up (registration of the method, the proposer and the draft).
- ``config``: ``{"method": "sparrow", ...}`` -> vLLM's EAGLE-3 config, validated, one-line errors.
- ``proposer``: ``SparrowProposer``, the draft's k-token chain over text positions only.
- ``text_positions``, ``window``: per-request text bookkeeping and the per-step window
  metadata (pure torch, testable without vLLM).
- ``model``: the draft model as a vLLM module (text-window attention as a custom op).
- ``defaults``: the committed default drafts of the embedded targets.
- ``cpu_env``: the CPU defaults the plugin applies inside vLLM on a CPU install.
"""
