"""From a diagnosis to a fix the runtime runs.

mechlab finds *why* a model does something: a direction in the residual stream
(``mechlab.directions``). This package turns that direction into something the operator's runtime
runs, and checks it there:

- ``ablation``: steering and directional ablation through hooks (projection, or mean ablation with
  a calibrated last constant), measured by a behaviour and by the KL on neutral text;
- ``control_vector``: the direction as a llama.cpp control vector (``--control-vector``), with
  llama.cpp's block-index convention;
- ``bake``: the direction projected out of the weights that write the residual stream (mean ablation
  as output biases), written as a new GGUF file (for Ollama, which loads no control vectors);
- ``runtime`` and ``verify``: llama.cpp on the written files, against mechlab's prediction;
- ``pronouns``: the seed's case (occupations and stereotyped pronouns), its prompt sets and text.
"""
