"""Moving weights between lmforge and other libraries' formats (state-dict adapters).

| module       | what                                                                      |
|--------------|---------------------------------------------------------------------------|
| `hf_gpt2`    | GPT <-> `GPT2LMHeadModel` (learned positions, LayerNorm, GELU, biases)    |
| `hf_llama`   | GPT <-> `LlamaForCausalLM` (RoPE, RMSNorm, SwiGLU, GQA, no biases)        |
| `hf`         | whole run directories <-> Hugging Face model folders (`lmforge export hf`) |
| `llamacpp`   | a run -> one GGUF file for llama.cpp (`lmforge export gguf`)              |

The optional libraries (`transformers`, `gguf`) are imported when a function needs them,
through `lmforge.deps.require`.
"""
