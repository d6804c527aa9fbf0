"""How the bundled demo checkpoint chatglm-demo/ is built: corpus, tokenizer, training, evaluation, model card
(see demo/README.md)."""
