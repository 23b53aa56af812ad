"""References a hooked model is verified against: transformers loading the same file
(``mechlab.models.verify``) and llama.cpp itself (``llamacpp``), the runtime operators run."""
