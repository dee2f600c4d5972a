"""Fine-tuning: moshi-finetune datasets, interleaving, the LoRA/full training loop, checkpoints."""
