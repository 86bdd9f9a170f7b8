"""The model package shared by the trainer and the inference service.

- `tinygpt.config`: `GPTConfig`, the shape of the network (no torch import, so configs validate without it).
- `tinygpt.tokenizer`: `CharTokenizer`.
- `tinygpt.model`: `GPT`, one forward for training and for cached decoding, and its `KVCache`.
- `tinygpt.generate`: sampling and single-sequence generation through the cache.
- `tinygpt.saved`: the saved-model directory and the checkpoint-root layout, read and written here only.
- `tinygpt.pyfunc`: the same saved model packaged as an MLflow `python_function` model.

Nothing is imported here, so `import tinygpt.config` stays free of torch.
"""
