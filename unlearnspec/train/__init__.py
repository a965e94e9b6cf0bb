"""Training: the pure weighted loss, WeightedSFTTrainer, model/tokenizer/LoRA loading."""
