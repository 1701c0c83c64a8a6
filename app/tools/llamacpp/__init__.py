"""llama.cpp on this machine: `build` (a cached llama-server from a pinned source) and `model`
(the project's tiny GGUF model)."""
